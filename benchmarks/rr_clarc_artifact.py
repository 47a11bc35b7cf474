"""RR-ClArC and the ClArC baselines on the controlled-artifact benchmark (RR-ClArC's protocol, methods.md §2).

For every artifact type (``--artifacts``), target class (``--classes``) and seed:
1. data: the built-in noisy digits with the artifact (``hf_debias.data.controlled_artifact_arrays`` defaults for
   that kind, e.g. a 4-pixel corner patch) in 80 % of the target class's training images; ``test_clean`` /
   ``test_attacked`` (the artifact in every image).
2. vanilla: ``simple_convnet`` trained with cross-entropy; it learns "artifact => target class". A second model
   trained on the same digits without any artifact is the *no-shortcut reference* (one per seed, shared by every
   artifact and class): what attacked accuracy the artifact itself costs (a patch covers part of the image) when
   no shortcut was learned.
3. CAVs at ``--layer`` of the vanilla model from the target class's training images with vs without the
   artifact: signal (streamed) and the filter CAVs (svm, ridge, lasso, logistic); their alignment with the true
   change ``a(x + artifact) − a(x)`` on paired clean / attacked test images. Pooling is ``mean`` by default: the
   layer is followed by global average pooling and the head, so the spatial mean is what the head reads and the
   direction the penalty must remove (``--pooling max``, the paper's choice, aligns half as well for the patch).
4. corrections of the vanilla model with the signal CAV, all fine-tuned the same way (``--freeze``, lr, epochs):
   the λ = 0 control (cross-entropy only), RR-ClArC (λ = ``--lamb``), A-ClArC, and P-ClArC (no training).
   RRR (Ross et al.: the input-gradient penalty inside the artifact's per-image masks, λ = ``--rrr-lamb``) is
   fine-tuned the same way with the training images' masks: the paper's main competitor, which needs masks where
   the ClArC methods need only a CAV.
5. clean / attacked accuracy, TCAV (the target class, at the layer, on attacked test images) and the artifact
   relevance R_bias (the share of the true class's input attribution inside the processed artifact mask, the
   authors' definition, on ``--relevance-images`` attacked test images; LRP where zennit's rules cover the model,
   input × gradient where they do not, e.g. P-ClArC's projection: the method is recorded per row) for every model.
Then, side by side in one process (on the last combination's last seed): time per fine-tuning step of RR-ClArC vs
the λ = 0 control (same freeze policy) and of RRR vs RR-ClArC, and one streaming CAV pass vs plain inference over
the same images.

Every combination's numbers are the same whichever other combinations run with it (the shared reference model
restores the random state it left), so ``--artifacts patch --classes 0`` reproduces the single-artifact results.

    python benchmarks/rr_clarc_artifact.py                                # 4 artifacts x classes 0, 3 x 3 seeds, ~1.5 h
    python benchmarks/rr_clarc_artifact.py --artifacts patch --classes 0  # the patch on class 0, ~13 min
    python benchmarks/rr_clarc_artifact.py --quick                        # smoke run (~40 s), used by the tests
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import timm
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _common import add_common_arguments, header, median_step_ms, write_results  # noqa: E402
from hf_debias import AClArCConfig, PClArCConfig, RRClArCConfig, RRRConfig, attribute, compute_cav, get_debias_model
from hf_debias.cav import pool_activation
from hf_debias.data import ARTIFACTS, ArtifactSpec, controlled_artifact_arrays, digit_arrays
from hf_debias.data.artifacts import BUILTIN_DIGITS, insert_artifact
from hf_debias.hooks import LayerHook
from hf_debias.layers import resolve_layer
from hf_debias.metrics.artifact import cav_alignment, directional_derivatives, model_artifact_accuracy, tcav
from hf_debias.metrics.artifact_relevance import artifact_relevance
from hf_debias.fit_loop import FitConfig, fit, images_to_tensor, predict

FILTER_METHODS = ("svm", "ridge", "lasso", "logistic")
CORRECTIONS = ("λ=0 control", "P-ClArC", "A-ClArC", "RR-ClArC", "RRR", "spatial λ=0 control", "RR-ClArC spatial",
               "RR-ClArC chosen")
"""The correction rows: the paper's recipe (a pooled CAV at ``--layer``, ``--freeze``) with its control and the ClArC
baselines and RRR (masks instead of a CAV); the spatial recipe (a spatial CAV, ``pooling="none"``, at ``--spatial-layer`` with
``freeze="before_layer"``) with its own λ = 0 control; and the one of the two RR-ClArC recipes that validation
digits with and without the artifact choose (the lower of clean and attacked accuracy; never the test splits)."""


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_arguments(parser, "rr_clarc_artifact")
    parser.add_argument("--artifacts", nargs="+", choices=ARTIFACTS, default=None,
                        help="artifact types to run, each with its builder defaults (default: all four; "
                             "--quick: patch)")
    parser.add_argument("--classes", type=int, nargs="+", choices=range(10), default=None, metavar="CLASS",
                        help="target classes (digits 0-9) that get the artifact (default: 0 3; --quick: 0)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="data and initialisation seeds")
    parser.add_argument("--n-train", type=int, default=20_000, help="training images")
    parser.add_argument("--n-test", type=int, default=5_000, help="images in each test split")
    parser.add_argument("--epochs", type=float, default=3.0, help="vanilla training epochs (lr 1e-3)")
    parser.add_argument("--patch-size", type=int, default=None,
                        help="side of the corner patch in pixels (default: the data's own, 20 %% of the side = 4); "
                             "only for the patch artifact")
    parser.add_argument("--layer", default="stages.3", help="where the CAV lives and the correction acts")
    parser.add_argument("--pooling", default="mean", choices=("max", "mean"),
                        help="how the CAV pools the layer's positions (and the alignment's activations)")
    parser.add_argument("--freeze", default="conv_norm", help="freeze policy of every fine-tuned correction")
    parser.add_argument("--lamb", type=float, default=1000.0, help="RR-ClArC penalty weight")
    parser.add_argument("--lamb-grid", type=float, nargs="+", default=None,
                        help="choose RR-ClArC's λ per artifact, class and seed from these values on validation "
                             "digits (the lower of clean and attacked accuracy), instead of --lamb")
    parser.add_argument("--n-validation", type=int, default=2000,
                        help="validation digits for --lamb-grid and the RR-ClArC chosen row")
    parser.add_argument("--rrr-lamb", type=float, default=1.0, help="RRR penalty weight (on the training masks)")
    parser.add_argument("--rrr-lamb-grid", type=float, nargs="+", default=None,
                        help="choose RRR's λ per artifact, class and seed from these values on validation digits "
                             "(as --lamb-grid does for RR-ClArC), instead of --rrr-lamb")
    parser.add_argument("--rrr-freeze", default=None,
                        help="RRR's freeze policy (default: --freeze, the policy of every other correction)")
    parser.add_argument("--relevance-images", type=int, default=500,
                        help="attacked test images R_bias is computed on (the first ones)")
    parser.add_argument("--spatial-layer", default="stages.1",
                        help="layer of the spatial recipe (a spatial CAV there, freeze='before_layer')")
    parser.add_argument("--spatial-lamb", type=float, default=1000.0, help="λ of the spatial recipe")
    parser.add_argument("--methods", nargs="+", choices=CORRECTIONS, default=list(CORRECTIONS),
                        help="correction rows to run (default: all; 'RR-ClArC chosen' needs both RR-ClArC recipes)")
    parser.add_argument("--no-reference", action="store_true", help="skip the no-shortcut reference model")
    parser.add_argument("--no-filter-cavs", action="store_true",
                        help="skip the filter CAVs' alignment (svm, ridge, lasso, logistic): the signal CAV only")
    parser.add_argument("--finetune-epochs", type=float, default=1.0, help="fine-tuning epochs of the corrections")
    parser.add_argument("--finetune-lr", type=float, default=1e-3, help="fine-tuning learning rate")
    parser.add_argument("--finetune-batch", type=int, default=64, help="fine-tuning batch size")
    parser.add_argument("--timing-steps", type=int, default=30, help="steps per side in the step-time comparison")
    parser.add_argument("--vanilla-only", action="store_true",
                        help="train and evaluate the vanilla models only (does each artifact fool vanilla?): no "
                             "reference, no corrections, no timing; the vanilla rows equal those of a full run")
    args = parser.parse_args(argv)
    if args.quick:
        args.seeds, args.n_train, args.n_test, args.epochs = [0], 1500, 300, 1.0
        args.finetune_epochs, args.timing_steps, args.n_validation, args.relevance_images = 0.3, 3, 200, 64
    args.artifacts = args.artifacts or (["patch"] if args.quick else list(ARTIFACTS))
    args.classes = args.classes if args.classes is not None else ([0] if args.quick else [0, 3])
    for name in ("artifacts", "classes", "seeds"):
        values = getattr(args, name)
        if len(set(values)) != len(values):
            parser.error(f"--{name} lists a value twice: {values}.")
    if args.vanilla_only and (args.lamb_grid or args.rrr_lamb_grid):
        parser.error("--lamb-grid / --rrr-lamb-grid choose a correction's λ; --vanilla-only runs no correction.")
    if args.rrr_lamb_grid and "RRR" not in args.methods:
        parser.error("--rrr-lamb-grid chooses RRR's λ; --methods does not list RRR.")
    if "RR-ClArC chosen" in args.methods and not {"RR-ClArC", "RR-ClArC spatial"} <= set(args.methods):
        parser.error("--methods 'RR-ClArC chosen' chooses between 'RR-ClArC' and 'RR-ClArC spatial': list both.")
    if args.patch_size is not None and "patch" not in args.artifacts:
        parser.error(f"--patch-size only applies to the patch artifact; --artifacts is {args.artifacts}.")
    return args


def artifact_spec(kind: str, args) -> ArtifactSpec:
    """The builder's defaults for ``kind`` (``--patch-size`` for the patch)."""
    return ArtifactSpec(kind, size=args.patch_size) if kind == "patch" else ArtifactSpec(kind)


def tensors(split) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Images, labels, artifact flags and the artifact's boolean masks ``[N, H, W]`` of one split."""
    return (images_to_tensor(split.images), torch.from_numpy(split.labels), torch.from_numpy(split.artifact),
            torch.from_numpy(split.masks))


@torch.no_grad()
def pooled(model, layer: str, images: torch.Tensor, pooling: str = "max") -> torch.Tensor:
    hook = LayerHook(resolve_layer(model, layer))
    model.eval()
    out = []
    try:
        for start in range(0, images.shape[0], 512):
            hook.reset()
            model(images[start:start + 512])
            out.append(pool_activation(hook.activation, pooling))
    finally:
        hook.remove()
    return torch.cat(out)


def evaluate(model, splits, layer: str, cav, target_class: int, relevance_images: int) -> dict[str, float]:
    x_clean, y_clean = splits["test_clean"][:2]
    x_attacked, masks = splits["test_attacked"][0], splits["test_attacked"][3]
    result = model_artifact_accuracy(model, x_clean, x_attacked, y_clean)
    result.update(tcav(directional_derivatives(model, layer, cav, x_attacked[:1000], target_class=target_class,
                                               per_position=True)))
    attributions, method = attribute(model, x_attacked[:relevance_images], labels=y_clean[:relevance_images])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a zero heatmap is counted in num_zero_heatmaps
        relevance = artifact_relevance(attributions, masks[:relevance_images])
    result.update({"artifact_relevance": relevance["artifact_relevance"], "attribution_method": method,
                   "zero_heatmaps": relevance["num_zero_heatmaps"]})
    return result


def validation_pair(seed: int, kind: str, args) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """Clean and attacked copies of validation digits (base digits held out from training and test)."""
    images, labels = digit_arrays(seed=seed, n_train=10, n_validation=args.n_validation, n_test=10,
                                  **BUILTIN_DIGITS)["validation"]
    attacked, _ = insert_artifact(images, artifact_spec(kind, args))
    return images_to_tensor(images), images_to_tensor(attacked), labels


def no_shortcut_reference(seed: int, args, cache: dict) -> torch.nn.Module:
    """The seed's model trained on the same digits without any artifact, trained once per seed. Later calls
    restore the global random state its training left, so every combination sees the same state after it."""
    if seed not in cache:
        clean_digits = digit_arrays(seed=seed, n_train=args.n_train, n_validation=10, n_test=10, **BUILTIN_DIGITS)
        torch.manual_seed(seed)
        reference = timm.create_model("simple_convnet", num_classes=10)
        fit(reference, images_to_tensor(clean_digits["train"][0]), torch.from_numpy(clean_digits["train"][1]),
            torch.from_numpy(clean_digits["train"][1]), FitConfig(epochs=args.epochs, seed=seed),
            progress=not args.quick, desc=f"seed {seed}: no-shortcut reference")
        cache[seed] = (reference, torch.get_rng_state())
    reference, state = cache[seed]
    torch.set_rng_state(state)
    return reference


def artifact_splits(seed: int, kind: str, target_class: int, args) -> dict[str, tuple]:
    """The seed's digits with the artifact ``kind`` in ``target_class``: ``train``, ``test_clean`` and
    ``test_attacked`` as ``tensors`` (images, labels, artifact flags, masks), ``args.n_train`` / ``args.n_test``.

    The builder's validation split is not used (validation_pair holds its own digits) and is left out: its 10 digits
    need not contain the target class. n_validation=10 keeps the train and test digits of earlier runs."""
    digits = digit_arrays(seed=seed, n_train=args.n_train, n_validation=10, n_test=args.n_test, **BUILTIN_DIGITS)
    arrays = controlled_artifact_arrays({"train": digits["train"], "test": digits["test"]}, seed=seed,
                                        artifact=artifact_spec(kind, args), target_class=target_class)
    return {name: tensors(split) for name, split in arrays.items()}


def run_seed(seed: int, kind: str, target_class: int, args, references: dict) -> dict:
    splits = artifact_splits(seed, kind, target_class, args)
    x, y, artifact, train_masks = splits["train"]
    tuned = FitConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, batch_size=args.finetune_batch, seed=seed)
    name = f"{kind}, class {target_class}, seed {seed}"

    torch.manual_seed(seed)
    vanilla = timm.create_model("simple_convnet", num_classes=10)
    fit(vanilla, x, y, y, FitConfig(epochs=args.epochs, seed=seed), progress=not args.quick,
        desc=f"{name}: vanilla")
    reference = None if args.vanilla_only or args.no_reference else no_shortcut_reference(seed, args, references)

    target = y == target_class
    cavs = {"signal": compute_cav(vanilla, args.layer, (x[target], artifact[target]), concept=kind,
                                  pooling=args.pooling, progress=False)}
    for method in () if args.no_filter_cavs else FILTER_METHODS:
        cavs[method] = compute_cav(vanilla, args.layer, (x[target], artifact[target]), concept=kind,
                                   method=method, pooling=args.pooling, progress=False)
    clean_acts = pooled(vanilla, args.layer, splits["test_clean"][0], args.pooling)
    attacked_acts = pooled(vanilla, args.layer, splits["test_attacked"][0], args.pooling)
    alignment = {method: {**cav_alignment(cav, clean_acts, attacked_acts), "auc": cav.quality.get("auc")}
                 for method, cav in cavs.items()}
    cav = cavs["signal"]

    rows = {"vanilla": evaluate(vanilla, splits, args.layer, cav, target_class, args.relevance_images)}
    if args.vanilla_only:
        return {"rows": rows, "cav_alignment": alignment, "lamb_selection": None,
                "train_artifact_images": int(artifact.sum())}
    if reference is not None:
        rows["no-shortcut reference"] = evaluate(reference, splits, args.layer, cav, target_class,
                                                  args.relevance_images)
    spatial_cav = compute_cav(vanilla, args.spatial_layer, (x[target], artifact[target]), concept=kind,
                              pooling="none", progress=False)
    corrections = {
        "λ=0 control": RRClArCConfig(cav=cav, lamb=0.0, freeze=args.freeze),
        "P-ClArC": PClArCConfig(cav=cav),
        "A-ClArC": AClArCConfig(cav=cav, freeze=args.freeze),
        "RR-ClArC": RRClArCConfig(cav=cav, lamb=args.lamb, freeze=args.freeze),
        "RRR": RRRConfig(lamb=args.rrr_lamb, freeze=args.rrr_freeze or args.freeze),
        "spatial λ=0 control": RRClArCConfig(cav=spatial_cav, lamb=0.0, freeze="before_layer"),
        "RR-ClArC spatial": RRClArCConfig(cav=spatial_cav, lamb=args.spatial_lamb, freeze="before_layer"),
    }
    corrections = {name: config for name, config in corrections.items() if name in args.methods}
    def fine_tuned(method, config):
        model = get_debias_model(copy.deepcopy(vanilla), config)
        if method != "P-ClArC":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                fit(model, x, y, y, tuned, masks=train_masks if method == "RRR" else None,
                    progress=not args.quick, desc=f"{name}: {method}")
        return model

    def choose_lamb(method: str, grid: list[float]) -> dict:
        """λ of ``method`` from ``grid`` on validation digits (the lower of clean and attacked accuracy), never on
        the test splits; the chosen config replaces the method's in ``corrections``."""
        validation = validation_pair(seed, kind, args)
        scores = {}
        for lamb in grid:
            config = dataclasses.replace(corrections[method], lamb=lamb)
            accuracy = model_artifact_accuracy(fine_tuned(method, config), *validation)
            scores[lamb] = min(accuracy["clean_accuracy"], accuracy["attacked_accuracy"])
        chosen = max(scores, key=scores.get)
        corrections[method] = dataclasses.replace(corrections[method], lamb=chosen)
        result = {"scores": {f"{lamb:g}": score for lamb, score in scores.items()}, "chosen_lamb": chosen}
        print(f"{name}: {method} validation min(clean, attacked) per λ {result['scores']} -> λ={chosen:g}",
              flush=True)
        return result

    selection = choose_lamb("RR-ClArC", args.lamb_grid) if args.lamb_grid and "RR-ClArC" in corrections else None
    rrr_selection = choose_lamb("RRR", args.rrr_lamb_grid) if args.rrr_lamb_grid else None
    models = {}
    for method, config in corrections.items():
        models[method] = fine_tuned(method, config)
        rows[method] = evaluate(models[method], splits, args.layer, cav, target_class, args.relevance_images)
    choice = None
    if "RR-ClArC chosen" in args.methods:  # the recipe validation digits with the artifact prefer
        validation = validation_pair(seed, kind, args)
        scores = {}
        for recipe in ("RR-ClArC", "RR-ClArC spatial"):
            accuracy = model_artifact_accuracy(models[recipe], *validation)
            scores[recipe] = min(accuracy["clean_accuracy"], accuracy["attacked_accuracy"])
        chosen = max(scores, key=scores.get)
        rows["RR-ClArC chosen"] = dict(rows[chosen])
        choice = {"scores": scores, "chosen": chosen}
        print(f"{name}: validation min(clean, attacked) {scores} -> {chosen}", flush=True)
    return {"rows": rows, "cav_alignment": alignment, "lamb_selection": selection,
            "rrr_lamb_selection": rrr_selection, "recipe_choice": choice,
            "train_artifact_images": int(artifact.sum()), "vanilla_model": vanilla, "cav": cav,
            "spatial_cav": spatial_cav, "x": x, "y": y, "masks": train_masks}


def step_times(vanilla, configs: dict, x, y, masks, args) -> dict[str, float]:
    """Median ms per fine-tuning step of each correction in ``configs`` (name -> config; two of them), alternating
    blocks in one process on the same batches, and the ratio of the second to the first. ``masks`` reach RRR."""
    models = {name: get_debias_model(copy.deepcopy(vanilla), config) for name, config in configs.items()}
    times = median_step_ms(models, x, y, steps=args.timing_steps, batch_size=args.finetune_batch, masks=masks)
    result = {f"{name}_ms": ms for name, ms in times.items()}
    first, second = configs
    result["ratio"] = result[f"{second}_ms"] / result[f"{first}_ms"]
    return result


def cav_throughput(vanilla, x, layer: str, repeats: int) -> dict[str, float]:
    """Images per second: one streaming signal-CAV pass vs plain inference over the same images."""
    labels = torch.arange(x.shape[0]) % 2
    best = {"cav": float("inf"), "inference": float("inf")}
    for _ in range(repeats):
        start = time.perf_counter()
        compute_cav(vanilla, layer, (x, labels), batch_size=256, validation_fraction=0, progress=False)
        best["cav"] = min(best["cav"], time.perf_counter() - start)
        start = time.perf_counter()
        predict(vanilla, x, batch_size=256)
        best["inference"] = min(best["inference"], time.perf_counter() - start)
    result = {f"{name}_images_per_s": x.shape[0] / seconds for name, seconds in best.items()}
    result["ratio"] = result["cav_images_per_s"] / result["inference_images_per_s"]
    return result


def summarise(per_seed: list[dict]) -> dict:
    names = per_seed[0]["rows"].keys()
    summary = {}
    for name in names:
        summary[name] = {}
        for key in per_seed[0]["rows"][name]:
            values = [seed["rows"][name][key] for seed in per_seed]
            summary[name][key] = {"values": values} if isinstance(values[0], str) else \
                {"mean": float(np.mean(values)), "std": float(np.std(values)), "values": values}
    alignment = {}
    for method in per_seed[0]["cav_alignment"]:
        alignment[method] = {key: float(np.mean([seed["cav_alignment"][method][key] for seed in per_seed]))
                             for key in ("alignment", "alignment_of_means", "auc")
                             if per_seed[0]["cav_alignment"][method][key] is not None}
    return {"accuracy": summary, "cav_alignment": alignment}


def relevance_cell(values: dict) -> str:
    """R_bias mean ± std over seeds and the attribution method(s) it was computed with."""
    if "artifact_relevance" not in values:
        return "-"
    methods = "/".join(sorted(set(values["attribution_method"]["values"])))
    entry = values["artifact_relevance"]
    return f"{entry['mean']:.3f} ± {entry['std']:.3f} ({methods})"


def markdown(combinations: list[dict], timing: dict | None, throughput: dict | None, n_seeds: int) -> str:
    def cell(entry, scale=100.0, digits=1):
        return f"{scale * entry['mean']:.{digits}f} ± {scale * entry['std']:.{digits}f}"

    lines = [f"| artifact | class | method ({n_seeds} seeds) | clean acc. | attacked acc. | gap | "
             "TCAV sensitivity (pooled) | R_bias (attribution) |", "|---|---|---|---|---|---|---|---|"]
    for combination in combinations:
        for name, values in combination["summary"]["accuracy"].items():
            lines.append(f"| {combination['artifact']} | {combination['target_class']} | {name} | "
                         f"{cell(values['clean_accuracy'])} | {cell(values['attacked_accuracy'])} | "
                         f"{cell(values['attack_drop'])} | {values['tcav_pooled_sensitivity']['mean']:.2e} | "
                         f"{relevance_cell(values)} |")
    lines += ["", "| artifact | class | CAV | alignment (per sample) | alignment (of means) | concept AUC |",
              "|---|---|---|---|---|---|"]
    for combination in combinations:
        for method, values in combination["summary"]["cav_alignment"].items():
            lines.append(f"| {combination['artifact']} | {combination['target_class']} | {method} | "
                         f"{values['alignment']:.3f} | {values['alignment_of_means']:.3f} | "
                         f"{values.get('auc', float('nan')):.3f} |")
    if timing is not None:
        lines.append("")
        for recipe, times in timing.items():
            if recipe == "rrr":
                lines.append(f"Step time: RRR {times['rrr_ms']:.1f} ms vs RR-ClArC (pooled recipe) "
                             f"{times['rrclarc_ms']:.1f} ms (ratio {times['ratio']:.2f}x).")
            else:
                lines.append(f"Step time ({recipe} recipe): RR-ClArC {times['rrclarc_ms']:.1f} ms vs its λ=0 "
                             f"control {times['control_ms']:.1f} ms (ratio {times['ratio']:.2f}x, same freeze policy).")
        lines += [f"CAV pass: {throughput['cav_images_per_s']:.0f} images/s vs inference "
                  f"{throughput['inference_images_per_s']:.0f} images/s (ratio {throughput['ratio']:.2f})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    args = parse_args(argv)
    results = header(args)
    started = time.time()
    references: dict = {}
    combinations, last = [], None
    for kind in args.artifacts:
        for target_class in args.classes:
            per_seed = []
            for seed in args.seeds:
                last = run_seed(seed, kind, target_class, args, references)
                per_seed.append(last)
                print(f"{kind}, class {target_class}, seed {seed}: " + ", ".join(
                    f"{name} {100 * r['clean_accuracy']:.1f}/{100 * r['attacked_accuracy']:.1f}"
                    for name, r in last["rows"].items()), flush=True)
            combinations.append({
                "artifact": kind, "target_class": target_class, "summary": summarise(per_seed),
                "per_seed": [{key: value for key, value in seed.items()
                              if key in ("rows", "cav_alignment", "train_artifact_images", "lamb_selection",
                                         "rrr_lamb_selection", "recipe_choice")}
                             for seed in per_seed]})
    timing = throughput = None
    if not args.vanilla_only:
        cav, spatial_cav = last["cav"], last["spatial_cav"]
        recipes = {
            "pooled": {"control": RRClArCConfig(cav=cav, lamb=0.0, freeze=args.freeze),
                       "rrclarc": RRClArCConfig(cav=cav, lamb=args.lamb, freeze=args.freeze)},
            "spatial": {"control": RRClArCConfig(cav=spatial_cav, lamb=0.0, freeze="before_layer"),
                        "rrclarc": RRClArCConfig(cav=spatial_cav, lamb=args.spatial_lamb, freeze="before_layer")},
            "rrr": {"rrclarc": RRClArCConfig(cav=cav, lamb=args.lamb, freeze=args.freeze),
                    "rrr": RRRConfig(lamb=args.rrr_lamb, freeze=args.rrr_freeze or args.freeze)}}
        timing = {recipe: step_times(last["vanilla_model"], configs, last["x"], last["y"], last["masks"], args)
                  for recipe, configs in recipes.items()}
        throughput = cav_throughput(last["vanilla_model"], last["x"][:2000 if args.quick else 10_000], args.layer,
                                    repeats=1 if args.quick else 3)
    results.update({"combinations": combinations, "step_time": timing, "cav_throughput": throughput,
                    "seconds": time.time() - started})
    table = markdown(combinations, timing, throughput, len(args.seeds))
    return write_results(args.output, results, table)


if __name__ == "__main__":
    main()
