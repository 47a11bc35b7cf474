"""EnD vs vanilla on Colour-Digits (the Biased-MNIST protocol, EnD paper Table 1), for each forward form.

The forms of ``EnDConfig.normalize_forward`` are methods ``end_nf_true`` (``"always"``: normalised in every
forward, guarded repo), ``end_nf_false`` (``"never"``: penalty only) and ``end_nf_train`` (``"train"``: normalised
training forward, zero head bias, plain deployed network); ``--forms train,always,never`` picks them by name.

For every rho:
1. selection: each (alpha, beta) of the grid is trained once with a selection seed that is not among the
   reported seeds, for each form, and scored on the *validation* split, which is drawn
   from the training distribution (same rho). The score is the validation unbiased accuracy (mean accuracy
   over the (digit, colour) groups present). The unbiased test split is never used for selection.
   ``--selection-from RESULTS.json`` skips this step and takes each form's (alpha, beta) from an earlier run's
   validation selection (``train`` takes ``always``'s when the file has none of its own: same training network).
2. report: vanilla and the two selected EnD settings are trained with every reported seed (data and init
   seeds both vary) and evaluated on the unbiased and biased test splits. For ``train`` the deployed (eval-mode,
   plain) network is scored, and its predictions are compared with those of the training-time normalised network
   (``train_eval_agreement``, expected 1.0).

Results go to a JSON file and a Markdown table (pasted into BENCHMARKS.md).

EnD without bias labels: method ``end_pseudo`` trains EnD (form ``--pseudo-form``, default ``train``, the
``EnDConfig`` default for this model) on pseudo bias labels from ``hf_debias.pseudo_bias_labels``: a copy of the
same initialised network trained briefly with GCE (``--pseudo-*`` options), its classifier-input features clustered.
Each seed records the pseudo labels' adjusted Rand index against the true colours (``ari``, and of every
assignment on the same auxiliary model: ``assignment_ari``) and the auxiliary training time. ``--fixed ALPHA,BETA``
skips the selection and uses that pair for every EnD row (the pseudo-label benchmark: ``--fixed 10,1``).

    python benchmarks/end_colour_digits.py                 # full run (~40 min on 2 CPU cores)
    python benchmarks/end_colour_digits.py --quick         # smoke run (~30 s), used by the tests
    python benchmarks/end_colour_digits.py --epochs 3 --forms always,train --selection-from
        benchmarks/results/end_colour_digits.json          # the forms compared with section 1's alpha (BENCHMARKS 1c)

Runs for different rho / methods are independent (selection happens per rho and method), so they can run as
separate processes (e.g. one per rho and method on one GPU) and be combined afterwards:

    python benchmarks/end_colour_digits.py --merge part1.json part2.json ... --output all.json
    python benchmarks/end_colour_digits.py --epochs 3 --threads 1 --fixed 10,1 --methods vanilla end_nf_train \
        end_pseudo --rhos 0.99 0.995 --output benchmarks/results/end_colour_digits_pseudo_a.json   # + the other rhos
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
from hf_debias import EnDConfig, PseudoLabelConfig, get_debias_model, pseudo_bias_labels
from hf_debias.pseudo_labels import all_assignments
from hf_debias.data import colour_digits_arrays
from hf_debias.metrics import group_accuracy
from hf_debias.fit_loop import FitConfig, fit, images_to_tensor, predict

PAPER_END = {0.999: 52.3, 0.997: 83.7, 0.995: 93.9, 0.99: 96.0}
PAPER_VANILLA = {0.999: 10.4, 0.997: 33.4, 0.995: 72.1, 0.99: 89.1}


METHODS = ("vanilla", "end_nf_false", "end_nf_true", "end_nf_train", "end_pseudo")
FORM_OF = {"end_nf_false": "never", "end_nf_true": "always", "end_nf_train": "train"}
METHOD_OF = {form: method for method, form in FORM_OF.items()}
PSEUDO = "end_pseudo"
SELECTION_KEY = {"never": "normalize_forward=False", "always": "normalize_forward=True",
                 "train": "normalize_forward=train"}
COLUMN_TITLE = {"vanilla": "vanilla", "end_nf_false": "EnD, never (normalize_forward=False)",
                "end_nf_true": "EnD, always (normalize_forward=True, guarded)",
                "end_nf_train": "EnD, train (portable)", PSEUDO: "EnD, pseudo bias labels"}


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


@torch.no_grad()
def training_forward_agreement(model, images: torch.Tensor) -> float:
    """Share of images whose prediction by the eval-mode (deployed) network equals that of the same network with
    the head in training mode, i.e. with EnD's ``"train"`` normalisation applied (BatchNorm stays in eval mode)."""
    deployed = predict(model, images)
    head = model.method.layer.module
    try:
        head.train()
        normalised = predict_keeping_head_mode(model, images)
    finally:
        head.eval()
    return float((deployed == normalised).mean())


def predict_keeping_head_mode(model, images: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """``predict`` without its ``model.eval()`` (which would also put the head back in eval mode)."""
    from hf_debias.model import logits_of

    parameter = next(model.parameters())
    outputs = [logits_of(model(images[start:start + batch_size].to(parameter.device))).argmax(dim=1)
               for start in range(0, images.shape[0], batch_size)]
    return torch.cat(outputs).cpu().numpy()


_GREY_PRETRAINED: dict[int, dict] = {}


def grey_pretrained_state(model, seed: int, args) -> dict:
    """The weights of ``model`` after ``--pretrain-grey-epochs`` on the seed's plain grey digits (the training base
    digits of Colour-Digits with that seed: the same disjoint split, so no test digit is seen), standing in for a
    backbone pretrained on other data that already reads shapes. Trained once per seed and reused."""
    if seed not in _GREY_PRETRAINED:
        from hf_debias.data import digit_arrays

        grey, grey_labels = digit_arrays(seed=seed, n_train=args.n_train, n_validation=10, n_test=10,
                                         image_size=args.image_size)["train"]
        labels = torch.from_numpy(grey_labels)
        fit(model, images_to_tensor(grey), labels, labels,
            FitConfig(epochs=args.pretrain_grey_epochs, batch_size=args.batch_size, lr=args.lr, seed=seed,
                      device=args.device), progress=args.progress, desc=f"grey pretraining seed {seed}")
        _GREY_PRETRAINED[seed] = {key: value.detach().clone() for key, value in model.state_dict().items()}
    return _GREY_PRETRAINED[seed]


def pseudo_config(args, seed: int) -> PseudoLabelConfig:
    return PseudoLabelConfig(loss=args.pseudo_loss, q=args.pseudo_q, epochs=args.pseudo_epochs,
                             batch_size=args.batch_size, lr=args.lr, n_clusters=args.pseudo_clusters,
                             assignment=args.pseudo_assignment, seed=seed, device=args.device)


def train_and_score(data, seed: int, args, end: EnDConfig | None, splits: tuple[str, ...],
                    pseudo: bool = False) -> dict[str, dict]:
    torch.manual_seed(seed)
    model = timm.create_model(args.model, num_classes=10, **args.model_kwargs)
    if args.pretrain_grey_epochs:
        model.load_state_dict(grey_pretrained_state(model, seed, args))
    images, labels, bias_labels = data["train"]
    pseudo_record = None
    if pseudo:  # the auxiliary model is a copy of this very initialisation; the true colours only score it
        result = pseudo_bias_labels(model, images, labels, pseudo_config(args, seed), bias_labels=bias_labels,
                                    progress=args.progress)
        pseudo_record = {"ari": result.ari, "aux_train_seconds": result.train_seconds,
                         "n_clusters": int(result.centres.shape[0])}
        if args.pseudo_compare_assignments:  # k-means per class on 60,000 images: minutes on 2 cores
            pseudo_record["assignment_ari"] = all_assignments(result, images, labels.numpy(), bias_labels.numpy())
        bias_labels = result.tensor
    if end is not None:
        model = get_debias_model(model, end)
        if end.normalize_forward != model.method.config.normalize_forward:
            raise SystemExit(f"EnD resolved normalize_forward={end.normalize_forward!r} to "
                             f"{model.method.config.normalize_forward!r}: the benchmark asks for explicit forms.")
    fit_config = FitConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, seed=seed, device=args.device)
    fit(model, images, labels, bias_labels, fit_config, progress=args.progress,
        desc=f"{'EnD' if end else 'vanilla'} seed {seed}")
    scores = {}
    for split in splits:
        x, y, b = data[split]
        scores[split] = group_accuracy(predict(model, x), y.numpy(), b.numpy(), aligned_bias="identity")
    if end is not None and end.normalize_forward == "train":
        scores["train_eval_agreement"] = training_forward_agreement(model, data[splits[0]][0])
    if pseudo_record is not None:
        scores["pseudo"] = pseudo_record
    return scores


def summary(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}


def selection_from_file(path: Path, rho: float, form: str) -> dict:
    """The (alpha, beta) an earlier run chose on validation for ``form`` at ``rho`` (``train``: else ``always``'s)."""
    entry = json.loads(path.read_text())["rhos"].get(str(rho))
    if entry is None:
        raise SystemExit(f"{path}: no rho={rho} (has {sorted(json.loads(path.read_text())['rhos'])}).")
    for key in (SELECTION_KEY[form], SELECTION_KEY["always"]) if form == "train" else (SELECTION_KEY[form],):
        if key in entry["selection"]:
            chosen = entry["selection"][key]["chosen"]
            return {"from": f"{path.name}: {key}", "chosen": chosen}
    raise SystemExit(f"{path}: rho={rho} has no selection for {form!r} (has {sorted(entry['selection'])}).")


def run(args) -> dict:
    grid = parse_grid(args.grid)
    results = {**header(args), "rhos": {}}
    started = time.time()
    forms = list(dict.fromkeys([FORM_OF[name] for name in args.methods if name in FORM_OF]
                               + ([args.pseudo_form] if PSEUDO in args.methods else [])))
    for rho in args.rhos:
        entry: dict = {"selection": {}, "report": {}, "runs": {}}
        results["rhos"][str(rho)] = entry
        # The selection split is built only when it is used; the conflicting count is the same for every seed.
        selection_data = load_split_tensors(rho, args.selection_seed if args.selection_from is None
                                            else args.seeds[0], args)
        entry["train_conflicting"] = int((selection_data["train"][1] != selection_data["train"][2]).sum())
        chosen = {}
        for form in forms:
            if args.fixed is not None:
                alpha, beta = parse_grid(args.fixed)[0]
                chosen[form] = {"alpha": alpha, "beta": beta}
                entry["selection"][SELECTION_KEY[form]] = {"fixed": True, "chosen": chosen[form]}
                continue
            if args.selection_from is not None:
                entry["selection"][SELECTION_KEY[form]] = selection_from_file(args.selection_from, rho, form)
                chosen[form] = entry["selection"][SELECTION_KEY[form]]["chosen"]
                continue
            scores = []
            for alpha, beta in grid:
                config = EnDConfig(alpha=alpha, beta=beta, normalize_forward=form, layer=args.layer)
                score = train_and_score(selection_data, args.selection_seed, args, config, ("validation",))
                scores.append({"alpha": alpha, "beta": beta,
                               "val_unbiased": score["validation"]["unbiased_accuracy"]})
                print(f"[select] rho={rho} nf={form} alpha={alpha} beta={beta} "
                      f"val_unbiased={scores[-1]['val_unbiased']:.4f}", flush=True)
            best = max(scores, key=lambda s: s["val_unbiased"])
            chosen[form] = best
            entry["selection"][SELECTION_KEY[form]] = {"grid": scores, "chosen": best}

        configs = {"vanilla": None, **{METHOD_OF[form]: EnDConfig(
            alpha=best["alpha"], beta=best["beta"], normalize_forward=form, layer=args.layer)
            for form, best in chosen.items()}}
        if PSEUDO in args.methods:
            entry["pseudo_form"] = args.pseudo_form
            configs[PSEUDO] = EnDConfig(alpha=chosen[args.pseudo_form]["alpha"], beta=chosen[args.pseudo_form]["beta"],
                                        normalize_forward=args.pseudo_form, layer=args.layer)
        runs = entry["runs"] = {name: [] for name in args.methods}
        for seed in args.seeds:
            data = selection_data if args.selection_from is not None and seed == args.seeds[0] else \
                load_split_tensors(rho, seed, args)
            for name in args.methods:
                config = configs[name]
                run_started = time.time()
                scores = train_and_score(data, seed, args, config, ("test_unbiased", "test_biased"),
                                         pseudo=name == PSEUDO)
                runs[name].append({"seed": seed,
                                   "unbiased": scores["test_unbiased"]["accuracy"],
                                   "conflicting": scores["test_unbiased"]["bias_conflicting_accuracy"],
                                   "biased": scores["test_biased"]["accuracy"],
                                   "seconds": time.time() - run_started})
                if "train_eval_agreement" in scores:
                    runs[name][-1]["train_eval_agreement"] = scores["train_eval_agreement"]
                if "pseudo" in scores:
                    runs[name][-1].update(scores["pseudo"])
                print(f"[report] rho={rho} {name} seed={seed} unbiased={runs[name][-1]['unbiased']:.4f} "
                      f"biased={runs[name][-1]['biased']:.4f} ({runs[name][-1]['seconds']:.0f} s)"
                      + (f" train_eval_agreement={scores['train_eval_agreement']:.4f}"
                         if "train_eval_agreement" in scores else "")
                      + (f" ari={scores['pseudo']['ari']:.4f} aux={scores['pseudo']['aux_train_seconds']:.0f} s "
                         f"assignments={scores['pseudo'].get('assignment_ari')}" if "pseudo" in scores else ""),
                      flush=True)
                summarise(entry)
                if args.save_partial:  # a long run leaves usable results behind at every step
                    results["minutes"] = (time.time() - started) / 60
                    write_json(args.output, results)
    results["minutes"] = (time.time() - started) / 60
    return results


def summarise(entry: dict) -> None:
    """Fill ``entry["report"]`` (mean / std per method and metric) from ``entry["runs"]``."""
    for name, rows in entry["runs"].items():
        if not rows:
            continue
        metrics = ["unbiased", "conflicting", "biased"] + [
            key for key in ("train_eval_agreement", "ari", "aux_train_seconds") if key in rows[0]]
        entry["report"][name] = {metric: summary([row[metric] for row in rows]) for metric in metrics}
        entry["report"][name]["seeds"] = [row["seed"] for row in rows]


def paired_difference(entry: dict, name: str, reference: str) -> dict | None:
    """Mean / std over the shared seeds of ``name``'s unbiased accuracy minus ``reference``'s (same data, init)."""
    runs = entry.get("runs", {})
    if name not in runs or reference not in runs:
        return None
    by_seed = {row["seed"]: row["unbiased"] for row in runs[reference]}
    differences = [row["unbiased"] - by_seed[row["seed"]] for row in runs[name] if row["seed"] in by_seed]
    return summary(differences) if differences else None


def gain_kept(entry: dict) -> str:
    """EnD-with-pseudo-labels' gain over vanilla against true-label EnD's (same form), paired by seed."""
    form = entry.get("pseudo_form")
    true_name = METHOD_OF.get(form)
    pseudo, true = paired_difference(entry, PSEUDO, "vanilla"), paired_difference(entry, true_name, "vanilla")
    if pseudo is None or true is None:
        return "-"
    share = f" ({pseudo['mean'] / true['mean']:.0%})" if true["mean"] > 0 else ""
    return f"{100 * pseudo['mean']:+.1f} / {100 * true['mean']:+.1f}{share}"


def markdown(results: dict) -> str:
    names = [name for name in METHODS if any(name in entry["report"] for entry in results["rhos"].values())]
    paired = any(paired_difference(entry, "end_nf_train", "end_nf_true") for entry in results["rhos"].values())
    kept = any(PSEUDO in entry["report"] for entry in results["rhos"].values())
    titles = [COLUMN_TITLE[name] for name in names] + (["train − always (paired by seed)"] if paired else []) + (
        ["pseudo − vanilla / true − vanilla (share of the gain kept)"] if kept else [])
    lines = ["| rho | conflicting train images | " + " | ".join(titles) + " | paper vanilla | paper EnD |",
             "|---|---|" + "---|" * len(titles) + "---|---|"]
    for rho, entry in results["rhos"].items():
        cells = []
        for name in names:
            if name not in entry["report"]:
                cells.append("-")
                continue
            stats = entry["report"][name]["unbiased"]
            cell = f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"
            form = FORM_OF.get(name, entry.get("pseudo_form") if name == PSEUDO else None)
            if form is not None:
                chosen = entry["selection"][SELECTION_KEY[form]]["chosen"]
                cell += f" (α={chosen['alpha']:g}, β={chosen['beta']:g})"
            if name == PSEUDO:
                ari = entry["report"][name]["ari"]
                cell += f", ARI {ari['mean']:.3f} ± {ari['std']:.3f}"
            cells.append(cell)
        if paired:
            difference = paired_difference(entry, "end_nf_train", "end_nf_true")
            cells.append(f"{100 * difference['mean']:+.1f} ± {100 * difference['std']:.1f} "
                         f"({len(difference['values'])} seeds)" if difference else "-")
        if kept:
            cells.append(gain_kept(entry))
        rho_f = float(rho)
        lines.append(f"| {rho} | {entry['train_conflicting']} | " + " | ".join(cells)
                     + f" | {PAPER_VANILLA.get(rho_f, '-')} | {PAPER_END.get(rho_f, '-')} |")
    fixed = {json.dumps(selection["chosen"]) for entry in results["rhos"].values()
             for selection in entry["selection"].values() if selection.get("fixed")}
    if fixed:
        lines.append(f"\n(α, β) fixed (no validation selection): {', '.join(sorted(fixed))}.")
    forms = sorted({entry["pseudo_form"] for entry in results["rhos"].values() if "pseudo_form" in entry})
    if forms:
        lines.append(f"EnD on pseudo bias labels: normalize_forward={', '.join(forms)}, compared with the true-label "
                     "row of the same form, paired by seed; ARI: adjusted Rand index of the pseudo labels against the "
                     "true colours (mean ± std over seeds).")
    return "\n".join(lines)


def merge(paths: list[Path]) -> dict:
    """Combine result files of separate runs (different rho and/or methods) into one result."""
    merged: dict = {"merged_from": [], "rhos": {}}
    for path in paths:
        part = json.loads(path.read_text())
        merged["merged_from"].append({"file": path.name, "command": part["command"], "torch": part["torch"],
                                      "gpu": part.get("gpu"), "minutes": part.get("minutes")})
        for rho, entry in part["rhos"].items():
            into = merged["rhos"].setdefault(rho, {"selection": {}, "report": {}, "runs": {},
                                                   "train_conflicting": entry["train_conflicting"]})
            if "pseudo_form" in entry:
                into["pseudo_form"] = entry["pseudo_form"]
            for key in ("selection", "report", "runs"):
                if key not in entry:  # result files written before per-run rows were kept
                    continue
                clash = set(into[key]) & set(entry[key])
                if key == "selection":  # the same fixed / selected pair in several files (seeds split up)
                    clash = {name for name in clash if into[key][name] != entry[key][name]}
                elif key == "runs" and clash:  # other seeds of the same method: appended when disjoint
                    clash = {name for name in clash if {row["seed"] for row in into[key][name]}
                             & {row["seed"] for row in entry[key][name]}}
                    if not clash:
                        for name, rows in entry[key].items():
                            into[key][name] = sorted(into[key].get(name, []) + rows, key=lambda row: row["seed"])
                        summarise(into)
                        continue
                elif key == "report" and "runs" in entry:  # recomputed from the runs
                    clash = set()
                if clash:
                    raise SystemExit(f"{path}: rho={rho} {key} {sorted(clash)} is already in another file.")
                into[key].update({name: value for name, value in entry[key].items() if name not in into[key]})
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
    parser.add_argument("--model-kwargs", type=json.loads, default={}, metavar="JSON",
                        help='timm.create_model keyword arguments, e.g. \'{"img_size": 16, "patch_size": 4}\' for a ViT')
    parser.add_argument("--layer", default=None, help="EnD's bottleneck (default: the classifier's input)")
    parser.add_argument("--pretrain-grey-epochs", type=float, default=0.0,
                        help="first train every model this long on plain grey digits (a backbone that reads shapes, "
                             "as a pretrained Hub model does), then on Colour-Digits")
    parser.add_argument("--n-train", type=int, default=60_000, help="training images")
    parser.add_argument("--n-validation", type=int, default=10_000, help="validation images")
    parser.add_argument("--n-test", type=int, default=10_000, help="images in each test split")
    parser.add_argument("--image-size", type=int, default=16, help="image side in pixels")
    parser.add_argument("--methods", nargs="+", choices=METHODS,
                        help="what to train: vanilla and EnD with normalize_forward never (end_nf_false) / always "
                             "(end_nf_true) / train (end_nf_train), EnD on pseudo bias labels (end_pseudo); default: "
                             "all "
                             "but end_pseudo")
    parser.add_argument("--forms", help="comma-separated EnD forms to train instead of --methods' EnD entries "
                                        "(train,always,never); vanilla only if --methods names it")
    parser.add_argument("--selection-from", type=Path, metavar="JSON",
                        help="skip the selection runs: take each form's (alpha, beta) from this earlier result file")
    parser.add_argument("--fixed", metavar="ALPHA,BETA",
                        help="skip the selection: every EnD row uses this (alpha, beta)")
    parser.add_argument("--pseudo-form", default="train", choices=sorted(METHOD_OF),
                        help="normalize_forward of end_pseudo (default train: EnDConfig's default for this model); "
                             "its gain is compared with the true-label row of the same form")
    parser.add_argument("--pseudo-loss", default="gce", choices=["gce", "ce"], help="auxiliary model's loss")
    parser.add_argument("--pseudo-q", type=float, default=0.7, help="GCE exponent q")
    parser.add_argument("--pseudo-epochs", type=float, default=1.0, help="auxiliary training epochs")
    parser.add_argument("--pseudo-clusters", type=int, help="number of bias ids (default: number of classes)")
    parser.add_argument("--pseudo-assignment", default="global", choices=["global", "prediction", "aligned"],
                        help="how features become bias ids comparable across classes (hf_debias.pseudo_labels)")
    parser.add_argument("--pseudo-compare-assignments", action="store_true",
                        help="also record the ARI of every assignment on each auxiliary model (slow: per-class "
                             "k-means)")
    parser.add_argument("--save-partial", action="store_true",
                        help="rewrite --output after every report run (long runs)")
    parser.add_argument("--progress", action="store_true", help="show a progress bar per run")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where to train (default: cuda when available)")
    parser.add_argument("--merge", type=Path, nargs="+", metavar="JSON",
                        help="train nothing: combine these result files (separate rho / method runs) into --output")
    add_common_arguments(parser, "end_colour_digits")  # --quick: one rho, seed and grid point, 2,000 images
    args = parser.parse_args(argv)
    if args.pretrain_grey_epochs < 0:
        parser.error(f"--pretrain-grey-epochs must be >= 0, got {args.pretrain_grey_epochs}.")
    if args.forms:
        forms = [form.strip() for form in args.forms.split(",") if form.strip()]
        unknown = sorted(set(forms) - set(METHOD_OF))
        if unknown:
            raise SystemExit(f"--forms: unknown {unknown}; choose from {sorted(METHOD_OF)}.")
        args.methods = [name for name in args.methods or [] if name == "vanilla"] + [METHOD_OF[form] for form in forms]
    elif args.methods is None:  # end_pseudo only when named (section 1's command stays as it was)
        args.methods = [name for name in METHODS if name != PSEUDO]
    if args.layer is not None and set(args.methods) == {"vanilla"}:
        parser.error("--layer is EnD's bottleneck; --methods vanilla trains no EnD.")
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
