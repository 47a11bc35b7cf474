"""EnD vs vanilla on Colour-Digits (the Biased-MNIST protocol, EnD paper Table 1), for both forward modes.

For every rho:
1. selection: each (alpha, beta) of the grid is trained once with a selection seed that is not among the
   reported seeds, for each ``normalize_forward`` setting, and scored on the *validation* split, which is drawn
   from the training distribution (same rho). The score is the validation unbiased accuracy (mean accuracy
   over the (digit, colour) groups present). The unbiased test split is never used for selection.
2. report: vanilla and the two selected EnD settings are trained with every reported seed (data and init
   seeds both vary) and evaluated on the unbiased and biased test splits.

Results go to a JSON file and a Markdown table (pasted into BENCHMARKS.md).

    python benchmarks/end_colour_digits.py                 # full run (~40 min on 2 CPU cores)
    python benchmarks/end_colour_digits.py --quick         # smoke run (~30 s), used by the tests

Runs for different rho / methods are independent (selection happens per rho and method), so they can run as
separate processes (e.g. one per rho and method on one GPU) and be combined afterwards:

    python benchmarks/end_colour_digits.py --merge part1.json part2.json ... --output all.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import timm

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_arguments, header, write_json  # noqa: E402
from hf_debias import EnDConfig, get_debias_model
from hf_debias.data import colour_digits_arrays
from hf_debias.metrics import group_accuracy
from hf_debias.fit_loop import FitConfig, fit, images_to_tensor, predict

PAPER_END = {0.999: 52.3, 0.997: 83.7, 0.995: 93.9, 0.99: 96.0}
PAPER_VANILLA = {0.999: 10.4, 0.997: 33.4, 0.995: 72.1, 0.99: 89.1}


METHODS = ("vanilla", "end_nf_false", "end_nf_true")


def parse_grid(text: str) -> list[tuple[float, float]]:
    """``"1,1;5,1"`` -> ``[(1.0, 1.0), (5.0, 1.0)]``."""
    try:
        return [tuple(float(v) for v in pair.split(",")) for pair in text.split(";") if pair]  # type: ignore
    except ValueError:
        raise SystemExit(f"--grid must look like 'alpha,beta;alpha,beta', got {text!r}") from None


def load_split_tensors(rho: float, seed: int, args) -> dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    arrays = colour_digits_arrays(rho, n_train=args.n_train, n_validation=args.n_validation, n_test=args.n_test,
                                  image_size=args.image_size, seed=seed)
    return {name: (images_to_tensor(split.images), torch.from_numpy(split.labels),
                   torch.from_numpy(split.bias_labels)) for name, split in arrays.items()}


def train_and_score(data, seed: int, args, end: EnDConfig | None, splits: tuple[str, ...]) -> dict[str, dict]:
    torch.manual_seed(seed)
    model = timm.create_model(args.model, num_classes=10)
    if end is not None:
        model = get_debias_model(model, end)
    images, labels, bias_labels = data["train"]
    fit_config = FitConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, device=args.device)
    fit(model, images, labels, bias_labels, fit_config, progress=args.progress,
        desc=f"{'EnD' if end else 'vanilla'} seed {seed}")
    scores = {}
    for split in splits:
        x, y, b = data[split]
        scores[split] = group_accuracy(predict(model, x), y.numpy(), b.numpy(), aligned_bias="identity")
    return scores


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def run(args) -> dict:
    grid = parse_grid(args.grid)
    results = {**header(args), "rhos": {}}
    started = time.time()
    for rho in args.rhos:
        entry: dict = {"selection": {}, "report": {}}
        selection_data = load_split_tensors(rho, args.selection_seed, args)
        entry["train_conflicting"] = int((selection_data["train"][1] != selection_data["train"][2]).sum())
        chosen = {}
        for normalize_forward in (False, True):
            if f"end_nf_{str(normalize_forward).lower()}" not in args.methods:
                continue
            scores = []
            for alpha, beta in grid:
                config = EnDConfig(alpha=alpha, beta=beta, normalize_forward=normalize_forward)
                score = train_and_score(selection_data, args.selection_seed, args, config, ("validation",))
                scores.append({"alpha": alpha, "beta": beta,
                               "val_unbiased": score["validation"]["unbiased_accuracy"]})
                print(f"[select] rho={rho} nf={normalize_forward} alpha={alpha} beta={beta} "
                      f"val_unbiased={scores[-1]['val_unbiased']:.4f}", flush=True)
            best = max(scores, key=lambda s: s["val_unbiased"])
            chosen[normalize_forward] = best
            entry["selection"][f"normalize_forward={normalize_forward}"] = {"grid": scores, "chosen": best}

        configs = {"vanilla": None, **{f"end_nf_{str(nf).lower()}": EnDConfig(
            alpha=best["alpha"], beta=best["beta"], normalize_forward=nf) for nf, best in chosen.items()}}
        runs = {name: [] for name in args.methods}
        for seed in args.seeds:
            data = load_split_tensors(rho, seed, args)
            for name in args.methods:
                config = configs[name]
                scores = train_and_score(data, seed, args, config, ("test_unbiased", "test_biased"))
                runs[name].append({"seed": seed,
                                   "unbiased": scores["test_unbiased"]["accuracy"],
                                   "conflicting": scores["test_unbiased"]["bias_conflicting_accuracy"],
                                   "biased": scores["test_biased"]["accuracy"]})
                print(f"[report] rho={rho} {name} seed={seed} unbiased={runs[name][-1]['unbiased']:.4f} "
                      f"biased={runs[name][-1]['biased']:.4f}", flush=True)
        for name, rows in runs.items():
            entry["report"][name] = {metric: summary([row[metric] for row in rows])
                                     for metric in ("unbiased", "conflicting", "biased")}
        results["rhos"][str(rho)] = entry
    results["minutes"] = (time.time() - started) / 60
    return results


def markdown(results: dict) -> str:
    lines = ["| rho | conflicting train images | vanilla | EnD, normalize_forward=False | EnD, normalize_forward=True "
             "| paper vanilla | paper EnD |",
             "|---|---|---|---|---|---|---|"]
    for rho, entry in results["rhos"].items():
        cells = []
        for name, key in (("vanilla", None), ("end_nf_false", "normalize_forward=False"),
                          ("end_nf_true", "normalize_forward=True")):
            if name not in entry["report"]:
                cells.append("-")
                continue
            stats = entry["report"][name]["unbiased"]
            cell = f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"
            if key:
                chosen = entry["selection"][key]["chosen"]
                cell += f" (α={chosen['alpha']:g}, β={chosen['beta']:g})"
            cells.append(cell)
        rho_f = float(rho)
        lines.append(f"| {rho} | {entry['train_conflicting']} | " + " | ".join(cells)
                     + f" | {PAPER_VANILLA.get(rho_f, '-')} | {PAPER_END.get(rho_f, '-')} |")
    return "\n".join(lines)


def merge(paths: list[Path]) -> dict:
    """Combine result files of separate runs (different rho and/or methods) into one result."""
    merged: dict = {"merged_from": [], "rhos": {}}
    for path in paths:
        part = json.loads(path.read_text())
        merged["merged_from"].append({"file": path.name, "command": part["command"], "torch": part["torch"],
                                      "gpu": part.get("gpu"), "minutes": part.get("minutes")})
        for rho, entry in part["rhos"].items():
            into = merged["rhos"].setdefault(rho, {"selection": {}, "report": {},
                                                   "train_conflicting": entry["train_conflicting"]})
            for key in ("selection", "report"):
                clash = set(into[key]) & set(entry[key])
                if clash:
                    raise SystemExit(f"{path}: rho={rho} {key} {sorted(clash)} is already in another file.")
                into[key].update(entry[key])
    merged["rhos"] = dict(sorted(merged["rhos"].items(), key=lambda item: float(item[0])))
    return merged


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rhos", type=float, nargs="+", default=[0.99, 0.995, 0.997, 0.999],
                        help="bias levels (share of each class in its class colour)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="reported seeds (data + init)")
    parser.add_argument("--selection-seed", type=int, default=100, help="seed of the hyper-parameter selection runs")
    parser.add_argument("--grid", default="1,1;5,1;10,1", help="(alpha,beta) pairs tried, 'a,b;a,b;...'")
    parser.add_argument("--epochs", type=float, default=2.0, help="training epochs per run")
    parser.add_argument("--batch-size", type=int, default=256, help="training batch size")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    parser.add_argument("--model", default="simple_convnet", help="timm model name (pretrained=False)")
    parser.add_argument("--n-train", type=int, default=60_000, help="training images")
    parser.add_argument("--n-validation", type=int, default=10_000, help="validation images")
    parser.add_argument("--n-test", type=int, default=10_000, help="images in each test split")
    parser.add_argument("--image-size", type=int, default=16, help="image side in pixels")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS,
                        help="what to train: vanilla and EnD with normalize_forward False / True")
    parser.add_argument("--progress", action="store_true", help="show a progress bar per run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to train (default: cuda when available)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="train nothing: combine these result files (separate rho / method runs) into --output")
    add_common_arguments(parser, "end_colour_digits")  # --quick: one rho, seed and grid point, 2,000 images
    args = parser.parse_args(argv)
    if args.merge:
        results = {**header(args), **merge(args.merge)}
        table = markdown(results)
        print(table)
        write_json(args.output, results)
        args.output.with_suffix(".md").write_text(table + "\n")
        return results
    if args.quick:
        args.rhos, args.seeds, args.grid, args.epochs = [0.99], [0], "1,1", 0.5
        args.n_train, args.n_validation, args.n_test = 2000, 500, 500
    results = run(args)
    table = markdown(results)
    print(table)
    write_json(args.output, results)
    args.output.with_suffix(".md").write_text(table + "\n")
    return results


if __name__ == "__main__":
    main()
