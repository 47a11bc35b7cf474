"""Why the ClArC corrections failed on a ViT, and what fixed it: one artifact, one class, one seed, every candidate.

The model and protocol are ``rr_clarc_vit.py``'s (a small timm ViT trained from scratch on the controlled-artifact
digits; fine-tuning one epoch, batch 64, lr 1e-3). Each row varies one thing — where the CAV lives (a block vs the
patch embedding), how it is pooled (mean vs spatial), the penalty's form (gradient vs finite difference), λ, and what
trains — so that the table separates the representation from the penalty. Each CAV's residual AUC (the concept's
readability once the CAV is projected out, ``cav.quality``) is printed with it: the instrument that tells the
representations apart before any training.

    python benchmarks/rr_clarc_vit_probes.py --artifact patch --target-class 0      # ~25 min on 2 cores
    python benchmarks/rr_clarc_vit_probes.py --quick                                # smoke run
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_arguments, header, write_results  # noqa: E402
from rr_clarc_artifact import artifact_splits  # noqa: E402
from rr_clarc_vit import vit  # noqa: E402
from hf_debias import AClArCConfig, PClArCConfig, RRClArCConfig, compute_cav, get_debias_model
from hf_debias.data import ARTIFACTS
from hf_debias.fit_loop import FitConfig, fit
from hf_debias.metrics.artifact import model_artifact_accuracy

QUICK_PROBES = 4
"""``--quick`` runs the first probes only (one of each kind: gradient at both layers, P-ClArC)."""

CAVS = {"blocks.2 mean": ("blocks.2", "mean"), "blocks.2 spatial": ("blocks.2", "none"),
        "patch_embed spatial": ("patch_embed", "none")}
PROBES = [
    # name, CAV, method, config keywords
    ("RR-ClArC gradient λ=1000 (issue 23's row)", "blocks.2 mean", "rr", dict(lamb=1000.0, penalty_form="gradient")),
    ("RR-ClArC gradient λ=1000", "patch_embed spatial", "rr",
     dict(lamb=1000.0, penalty_form="gradient", freeze="before_layer")),
    ("RR-ClArC gradient λ=1", "patch_embed spatial", "rr", dict(lamb=1.0, penalty_form="gradient")),
    ("P-ClArC", "patch_embed spatial", "pclarc", {}),
    ("A-ClArC", "patch_embed spatial", "aclarc", {}),
    ("RR-ClArC finite difference λ=100", "blocks.2 mean", "rr", dict(lamb=100.0)),
    ("RR-ClArC finite difference λ=100", "blocks.2 spatial", "rr", dict(lamb=100.0)),
    ("RR-ClArC finite difference λ=1", "patch_embed spatial", "rr", dict(lamb=1.0)),
    ("RR-ClArC finite difference λ=1, before_layer", "patch_embed spatial", "rr", dict(lamb=1.0, freeze="before_layer")),
    ("RR-ClArC finite difference λ=100", "patch_embed spatial", "rr", dict(lamb=100.0)),
]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "rr_clarc_vit_probes")
    parser.add_argument("--artifact", choices=ARTIFACTS, default="patch")
    parser.add_argument("--target-class", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    args.patch_size = None
    results = header(args)
    args.n_train, args.n_test, epochs, tune_epochs = (600, 100, 0.5, 0.2) if args.quick else (20_000, 5_000, 4.0, 1.0)
    splits = artifact_splits(args.seed, args.artifact, args.target_class, args)
    x, y, artifact, _ = splits["train"]
    torch.manual_seed(args.seed)
    vanilla = vit()
    fit(vanilla, x, y, y, FitConfig(epochs=epochs, batch_size=128, seed=args.seed), progress=False)

    def accuracy(model) -> dict:
        return model_artifact_accuracy(model, splits["test_clean"][0], splits["test_attacked"][0],
                                       splits["test_clean"][1])

    target = y == args.target_class
    cavs = {}
    for name, (layer, pooling) in CAVS.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cavs[name] = compute_cav(vanilla, layer, (x[target], artifact[target]), pooling=pooling, progress=False,
                                     validation_fraction=0.3)
    rows = [{"probe": "vanilla", **accuracy(vanilla)}]
    for probe, cav_name, method, keywords in PROBES[:QUICK_PROBES] if args.quick else PROBES:
        cav = cavs[cav_name]
        config = {"rr": RRClArCConfig, "pclarc": PClArCConfig, "aclarc": AClArCConfig}[method](cav=cav, **keywords)
        started = time.time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = get_debias_model(copy.deepcopy(vanilla), config)
            if method != "pclarc":
                fit(model, x, y, y, FitConfig(epochs=tune_epochs, batch_size=64, seed=args.seed), progress=False)
        rows.append({"probe": probe, "cav": cav_name, **accuracy(model), "seconds": time.time() - started})
        print(f"{probe} [{cav_name}]: {100 * rows[-1]['clean_accuracy']:.1f} / "
              f"{100 * rows[-1]['attacked_accuracy']:.1f}", flush=True)
    lines = ["| probe | CAV | clean | attacked |", "|---|---|---|---|"]
    lines += [f"| {row['probe']} | {row.get('cav', '-')} | {100 * row['clean_accuracy']:.1f} | "
              f"{100 * row['attacked_accuracy']:.1f} |" for row in rows]
    lines += ["", "| CAV | concept AUC | residual AUC | residual measured over |", "|---|---|---|---|"]
    lines += [f"| {name} | {cav.quality.get('auc', float('nan')):.3f} | "
              f"{cav.quality.get('residual_auc') or float('nan'):.3f} | {cav.fit_params.get('residual_space')} |"
              for name, cav in cavs.items()]
    results.update({"rows": rows, "cavs": {name: dict(cav.quality) for name, cav in cavs.items()}})
    return write_results(args.output, results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
