"""The artifact transplant check against the ground truth of the controlled benchmark.

For the patch and the timestamp (class ``--target-class``, seeds ``--seeds``): ``simple_convnet`` vanilla (3 epochs,
as rr_clarc_artifact.py) and RR-ClArC (the paper's recipe there: a mean-pooled CAV at ``stages.3``, λ = 1000,
``freeze="conv_norm"``, one epoch). For each model:

- ground truth: accuracy on ``test_attacked`` (the artifact inserted into every test image by the builder);
- the transplant (``hf_debias.metrics.artifact_transplant_check``), which needs no attacked split: the masked
  artifact region of the training images that carry it pasted into held-out *validation* digits (never the test
  split), 3 transplants per image; its accuracy and flip rate towards the artifact's class.

The check passes when the transplanted accuracy is within 3 points of the attacked accuracy for every model.

    python benchmarks/transplant_check.py                 # patch, timestamp x vanilla, RR-ClArC x 3 seeds (~6 min)
    python benchmarks/transplant_check.py --quick         # smoke run, used by the tests
"""

from __future__ import annotations

import argparse
import copy
import sys
import warnings
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_arguments, header, write_results  # noqa: E402
from rr_clarc_artifact import artifact_spec, tensors  # noqa: E402
from hf_debias import RRClArCConfig, compute_cav, get_debias_model
from hf_debias.data import controlled_artifact_arrays, digit_arrays
from hf_debias.data.artifacts import BUILTIN_DIGITS
from hf_debias.fit_loop import FitConfig, fit, images_to_tensor
from hf_debias.metrics import artifact_transplant_check, model_artifact_accuracy

TOLERANCE = 0.03


def run(kind: str, seed: int, args) -> list[dict]:
    digits = digit_arrays(seed=seed, n_train=args.n_train, n_validation=args.n_validation, n_test=args.n_test,
                          **BUILTIN_DIGITS)
    arrays = controlled_artifact_arrays({"train": digits["train"], "test": digits["test"]}, seed=seed,
                                        artifact=artifact_spec(kind, args), target_class=args.target_class)
    splits = {name: tensors(split) for name, split in arrays.items()}
    x, y, artifact, masks = splits["train"]
    validation_images = images_to_tensor(digits["validation"][0])
    validation_labels = digits["validation"][1]
    torch.manual_seed(seed)
    vanilla = timm.create_model("simple_convnet", num_classes=10)
    fit(vanilla, x, y, y, FitConfig(epochs=args.epochs, seed=seed), progress=False)
    target = y == args.target_class
    cav = compute_cav(vanilla, "stages.3", (x[target], artifact[target]), pooling="mean", progress=False)
    corrected = get_debias_model(copy.deepcopy(vanilla), RRClArCConfig(cav=cav, lamb=1000.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fit(corrected, x, y, y, FitConfig(epochs=args.finetune_epochs, batch_size=64, seed=seed), progress=False)
    rows = []
    donors, donor_masks = x[artifact == 1], masks[artifact == 1]
    for name, model in (("vanilla", vanilla), ("RR-ClArC", corrected)):
        truth = model_artifact_accuracy(model, splits["test_clean"][0], splits["test_attacked"][0],
                                        splits["test_clean"][1])
        check = artifact_transplant_check(model, validation_images, validation_labels, donors, donor_masks,
                                          target_class=args.target_class, repeats=3, seed=seed)
        rows.append({"artifact": kind, "seed": seed, "model": name, **truth,
                     **{f"transplant_{key}" if not key.startswith("transplant") else key: value
                        for key, value in check.items()}})
        print(f"{kind} seed {seed} {name}: attacked {100 * truth['attacked_accuracy']:.1f}, transplanted "
              f"{100 * check['transplanted_accuracy']:.1f}, flip rate {100 * check['flip_rate']:.1f}", flush=True)
    return rows


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "transplant_check")
    parser.add_argument("--artifacts", nargs="+", default=["patch", "timestamp"], choices=["patch", "timestamp"])
    parser.add_argument("--target-class", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    args.patch_size = None
    args.n_train, args.n_validation, args.n_test, args.epochs, args.finetune_epochs = \
        (1000, 200, 200, 1.0, 0.3) if args.quick else (20_000, 2_000, 5_000, 3.0, 1.0)
    if args.quick:
        args.seeds, args.artifacts = [0], ["patch"]
    results = header(args)
    rows = [row for kind in args.artifacts for seed in args.seeds for row in run(kind, seed, args)]
    lines = ["| artifact | model | seeds | test_attacked acc. (ground truth) | transplanted acc. (validation) | "
             "difference | flip rate | clean acc. (test / validation) |", "|---|---|---|---|---|---|---|---|"]
    for kind in args.artifacts:
        for model in ("vanilla", "RR-ClArC"):
            selected = [row for row in rows if row["artifact"] == kind and row["model"] == model]
            attacked = 100 * np.array([row["attacked_accuracy"] for row in selected])
            moved = 100 * np.array([row["transplanted_accuracy"] for row in selected])
            flips = 100 * np.array([row["transplant_flip_rate"] for row in selected])
            clean = np.mean([row["clean_accuracy"] for row in selected]) * 100
            clean_validation = np.mean([row["transplant_clean_accuracy"] for row in selected]) * 100
            lines.append(f"| {kind} | {model} | {len(selected)} | {attacked.mean():.1f} ± {attacked.std():.1f} | "
                         f"{moved.mean():.1f} ± {moved.std():.1f} | {np.abs(moved - attacked).max():.1f} (max) | "
                         f"{flips.mean():.1f} | {clean:.1f} / {clean_validation:.1f} |")
    within = all(abs(row["transplanted_accuracy"] - row["attacked_accuracy"]) <= TOLERANCE for row in rows)
    lines.append(f"\nTransplanted accuracy within {100 * TOLERANCE:.0f} points of test_attacked for every model and "
                 f"seed: {'yes' if within else 'no'}.")
    results.update({"rows": rows, "within_tolerance": within})
    return write_results(args.output, results, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
