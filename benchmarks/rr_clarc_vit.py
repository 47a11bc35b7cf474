"""The ClArC corrections and RRR on a vision transformer: the controlled-artifact benchmark (rr_clarc_artifact.py's
protocol) with a small timm ViT in place of ``simple_convnet``.

Model: ``vit_tiny_patch16_224`` with ``img_size=20, patch_size=4, depth=4, embed_dim=96, num_heads=3`` (25 patch
tokens and a class token), trained from scratch with Adam, lr 1e-3, batch 128, 4 epochs. For every artifact type,
target class and seed (the builder's defaults: the artifact in 80 % of the target class's training images):

- vanilla, and the no-shortcut reference (the same digits without any artifact, one per seed);
- the token-model recipe, which the library chooses by itself for a ViT: the CAV at the patch embedding, spatial
  (``compute_cav(model, None, ...)``: layer and pooling chosen automatically), and RR-ClArC with
  ``penalty_form="auto"`` (finite difference on a ViT), λ = ``--lamb``; its λ = 0 control; P-ClArC and A-ClArC with
  the same CAV; RRR with the training masks;
- for contrast, the paper's recipe as a user would carry it over from a CNN: a mean-pooled CAV at ``blocks.2`` with
  the gradient penalty, λ = 1000 (issue 23's failing row), and the same CAV with the finite-difference penalty;
- every fine-tuning: one epoch, batch 64, lr 1e-3, ``freeze="conv_norm"``.

Reported: clean / attacked accuracy (the artifact in every test image), the pooled TCAV sensitivity at the
correction's layer, and the CAVs' detection AUC and residual AUC (how readable the artifact stays after the CAV
is projected out, ``cav.quality``). Then, side by side in one process: the step time of the ViT recipe vs its
λ = 0 control, and of the gradient form at the same point.

    python benchmarks/rr_clarc_vit.py                                   # 4 artifacts x classes 0, 3 x 3 seeds
    python benchmarks/rr_clarc_vit.py --artifacts patch --classes 0 --seeds 0   # ~6 min on 2 cores
    python benchmarks/rr_clarc_vit.py --quick                           # smoke run (~20 s), used by the tests

Runs for different seeds / classes are independent and can run as separate processes, then be merged into one table
(seeds of the same artifact and class side by side; the step time of the first file that has one):

    python benchmarks/rr_clarc_vit.py --merge part1.json part2.json ... --output all.json
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_arguments, header, median_step_ms, write_json, write_results  # noqa: E402
from rr_clarc_artifact import artifact_splits  # noqa: E402
from hf_debias import AClArCConfig, PClArCConfig, RRClArCConfig, RRRConfig, compute_cav, get_debias_model
from hf_debias.data import ARTIFACTS, digit_arrays
from hf_debias.data.artifacts import BUILTIN_DIGITS
from hf_debias.fit_loop import FitConfig, fit
from hf_debias.metrics.artifact import directional_derivatives, model_artifact_accuracy, tcav

VIT = dict(img_size=20, patch_size=4, depth=4, embed_dim=96, num_heads=3)
PAPER_LAYER = "blocks.2"
ROWS = ("λ=0 control", "P-ClArC", "A-ClArC", "RR-ClArC", "RRR", "paper recipe (blocks.2 mean, gradient)",
        "blocks.2 mean, finite difference")


def vit() -> torch.nn.Module:
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, **VIT)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "rr_clarc_vit")
    parser.add_argument("--artifacts", nargs="+", choices=ARTIFACTS, default=None, help="default: all four")
    parser.add_argument("--classes", type=int, nargs="+", choices=range(10), default=None, metavar="CLASS",
                        help="target classes (default: 0 3)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n-train", type=int, default=20_000)
    parser.add_argument("--n-test", type=int, default=5_000)
    parser.add_argument("--epochs", type=float, default=4.0, help="vanilla / reference training epochs")
    parser.add_argument("--lamb", type=float, default=1.0, help="λ of the token-model recipe")
    parser.add_argument("--rrr-lamb", type=float, default=1.0)
    parser.add_argument("--methods", nargs="+", choices=ROWS, default=list(ROWS))
    parser.add_argument("--finetune-epochs", type=float, default=1.0)
    parser.add_argument("--timing-steps", type=int, default=30)
    parser.add_argument("--patch-size", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON", help="merge earlier runs' results and exit")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.n_train, args.n_test, args.epochs = [0], 600, 100, 0.5
        args.finetune_epochs, args.timing_steps = 0.2, 3
    args.artifacts = args.artifacts or (["patch"] if args.quick else list(ARTIFACTS))
    args.classes = args.classes if args.classes is not None else ([0] if args.quick else [0, 3])
    return args


def evaluate(model, splits, layer: str, cav, target_class: int) -> dict:
    x_clean, y_clean = splits["test_clean"][:2]
    x_attacked = splits["test_attacked"][0]
    result = model_artifact_accuracy(model, x_clean, x_attacked, y_clean)
    result.update(tcav(directional_derivatives(model, layer, cav, x_attacked[:1000], target_class=target_class)))
    return result


def cav_summary(cav) -> dict:
    return {"layer": cav.layer, "pooling": cav.pooling_description, **{
        key: cav.quality.get(key) for key in ("auc", "residual_auc")}}


def run_seed(seed: int, kind: str, target_class: int, args, references: dict) -> dict:
    splits = artifact_splits(seed, kind, target_class, args)
    x, y, artifact, masks = splits["train"]
    trained = FitConfig(epochs=args.epochs, batch_size=128, seed=seed)
    tuned = FitConfig(epochs=args.finetune_epochs, lr=1e-3, batch_size=64, seed=seed)
    name = f"{kind}, class {target_class}, seed {seed}"
    torch.manual_seed(seed)
    vanilla = vit()
    fit(vanilla, x, y, y, trained, progress=not args.quick, desc=f"{name}: vanilla")
    if seed not in references:
        clean = digit_arrays(seed=seed, n_train=args.n_train, n_validation=10, n_test=10, **BUILTIN_DIGITS)
        torch.manual_seed(seed)
        reference = vit()
        fit(reference, *tensors_of(clean["train"]), trained, progress=not args.quick, desc=f"seed {seed}: reference")
        references[seed] = reference
    target = y == target_class
    concept = (x[target], artifact[target])
    cav = compute_cav(vanilla, None, concept, concept=kind, progress=False)  # the library's choice for a ViT
    paper_cav = compute_cav(vanilla, PAPER_LAYER, concept, concept=kind, pooling="mean", progress=False)
    configs = {
        "λ=0 control": RRClArCConfig(cav=cav, lamb=0.0),
        "P-ClArC": PClArCConfig(cav=cav),
        "A-ClArC": AClArCConfig(cav=cav),
        "RR-ClArC": RRClArCConfig(cav=cav, lamb=args.lamb),
        "RRR": RRRConfig(lamb=args.rrr_lamb),
        "paper recipe (blocks.2 mean, gradient)": RRClArCConfig(cav=paper_cav, lamb=1000.0, penalty_form="gradient"),
        "blocks.2 mean, finite difference": RRClArCConfig(cav=paper_cav, lamb=args.lamb),
    }
    rows = {"vanilla": evaluate(vanilla, splits, cav.layer, cav, target_class),
            "no-shortcut reference": evaluate(references[seed], splits, cav.layer, cav, target_class)}
    for method, config in configs.items():
        if method not in args.methods:
            continue
        model = get_debias_model(copy.deepcopy(vanilla), config)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if method != "P-ClArC":
                fit(model, x, y, y, tuned, masks=masks if method == "RRR" else None, progress=not args.quick,
                    desc=f"{name}: {method}")
        rows[method] = evaluate(model, splits, cav.layer, cav, target_class)
        rows[method]["penalty_form"] = getattr(config, "penalty_form", None)
    print(f"{name}: " + ", ".join(f"{method} {100 * r['clean_accuracy']:.1f}/{100 * r['attacked_accuracy']:.1f}"
                                  for method, r in rows.items()), flush=True)
    return {"rows": rows, "cavs": {"token recipe": cav_summary(cav), "paper recipe": cav_summary(paper_cav)},
            "vanilla_model": vanilla, "cav": cav, "paper_cav": paper_cav, "x": x, "y": y}


def tensors_of(split) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from hf_debias.fit_loop import images_to_tensor

    images, labels = images_to_tensor(split[0]), torch.from_numpy(split[1])
    return images, labels, labels


def markdown(combinations: list[dict], timing: dict | None) -> str:
    lines = ["| artifact | class | method | seeds | clean acc. | attacked acc. | attacked − reference | "
             "TCAV sensitivity |", "|---|---|---|---|---|---|---|---|"]
    for combination in combinations:
        reference = [r["rows"]["no-shortcut reference"]["attacked_accuracy"] for r in combination["per_seed"]]
        for method in combination["per_seed"][0]["rows"]:
            rows = [seed["rows"][method] for seed in combination["per_seed"]]
            clean = 100 * np.array([r["clean_accuracy"] for r in rows])
            attacked = 100 * np.array([r["attacked_accuracy"] for r in rows])
            margin = attacked - 100 * np.array(reference)
            sensitivity = np.mean([r["tcav_pooled_sensitivity"] for r in rows])
            lines.append(f"| {combination['artifact']} | {combination['target_class']} | {method} | {len(rows)} | "
                         f"{clean.mean():.1f} ± {clean.std():.1f} | {attacked.mean():.1f} ± {attacked.std():.1f} | "
                         f"{margin.mean():+.1f} | {sensitivity:.2e} |")
    lines += ["", "| artifact | class | CAV | concept AUC | residual AUC (after projecting it out) |",
              "|---|---|---|---|---|"]
    for combination in combinations:
        for recipe in combination["per_seed"][0]["cavs"]:
            values = [seed["cavs"][recipe] for seed in combination["per_seed"]]
            auc = np.mean([v["auc"] for v in values if v["auc"] is not None] or [np.nan])
            residual = np.mean([v["residual_auc"] for v in values if v.get("residual_auc") is not None] or [np.nan])
            lines.append(f"| {combination['artifact']} | {combination['target_class']} | {recipe}: "
                         f"{values[0]['layer']}, {values[0]['pooling']} | {auc:.3f} | {residual:.3f} |")
    if timing:
        lines += ["", f"Step time (batch 64, same batches, alternating): the ViT recipe (finite difference) "
                      f"{timing['RR-ClArC_ms']:.1f} ms vs its λ=0 control {timing['λ=0 control_ms']:.1f} ms "
                      f"({timing['RR-ClArC_ms'] / timing['λ=0 control_ms']:.2f}x); the gradient form at the same "
                      f"point {timing['gradient form_ms']:.1f} ms "
                      f"({timing['gradient form_ms'] / timing['λ=0 control_ms']:.2f}x)."]
    return "\n".join(lines) + "\n"


def merge(paths: list[Path]) -> tuple[list[dict], dict | None]:
    """The combinations of several result files, seeds of one (artifact, class) joined, in first-seen order."""
    import json

    combinations: dict[tuple[str, int], dict] = {}
    timing = None
    for path in paths:
        data = json.loads(path.read_text())
        timing = timing or data.get("step_time")
        for combination in data["combinations"]:
            key = (combination["artifact"], combination["target_class"])
            entry = combinations.setdefault(key, {"artifact": key[0], "target_class": key[1], "per_seed": []})
            entry["per_seed"] += combination["per_seed"]
    return list(combinations.values()), timing


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = header(args)
    if args.merge:
        combinations, timing = merge(args.merge)
        results.update({"combinations": combinations, "step_time": timing,
                        "merged_from": [str(path) for path in args.merge]})
        return write_results(args.output, results, markdown(combinations, timing))
    started = time.time()
    references: dict = {}
    combinations, last = [], None
    for kind in args.artifacts:
        for target_class in args.classes:
            per_seed = [run_seed(seed, kind, target_class, args, references) for seed in args.seeds]
            last = per_seed[-1]
            combinations.append({"artifact": kind, "target_class": target_class,
                                 "per_seed": [{"rows": s["rows"], "cavs": s["cavs"]} for s in per_seed]})
            write_json(args.output, {**results, "combinations": combinations, "partial": True})
    models = {name: get_debias_model(copy.deepcopy(last["vanilla_model"]), config) for name, config in {
        "λ=0 control": RRClArCConfig(cav=last["cav"], lamb=0.0),
        "RR-ClArC": RRClArCConfig(cav=last["cav"], lamb=args.lamb),
        "gradient form": RRClArCConfig(cav=last["cav"], lamb=args.lamb, penalty_form="gradient")}.items()}
    timing = {f"{name}_ms": ms for name, ms in median_step_ms(models, last["x"], last["y"], steps=args.timing_steps,
                                                             batch_size=64).items()}
    results.update({"combinations": combinations, "step_time": timing, "seconds": time.time() - started})
    table = markdown(combinations, timing)
    return write_results(args.output, results, table)


if __name__ == "__main__":
    main()
