"""The first-run demo, entirely offline, in a few minutes on a CPU, in two parts.

1. EnD (bias labels known): a small CNN is trained twice on digits whose background colour gives away the class
   for a share ``rho`` of the training images: once with plain cross-entropy (it learns the colour shortcut) and
   once with EnD. Both are tested on digits with random colours (unbiased), with class colours (biased), and on
   the bias-conflicting test samples.
2. RR-ClArC (only examples of the artifact known): a CNN trained on noisy digits where a corner patch marks
   most images of class 0 learns "patch => 0". A CAV of the patch is computed from class-0 images with and
   without it, and the model is fine-tuned with RR-ClArC, next to a lambda = 0 control fine-tuned the same way.
   All are tested on clean digits and on digits that all carry the patch (attacked); attributions of class-0
   images with the patch show where vanilla and RR-ClArC look (``rrclarc_heatmaps.png``), and the artifact
   relevance R_bias measures the share of the attribution inside the patch.

Each part prints a table and writes a JSON + PNG report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # DemoSettings is read by `hf-debias demo --help`, which must not wait for torch
    import torch


@dataclass
class DemoSettings:
    """What the demo runs; the defaults take about 4 minutes on 2 CPU cores (see BENCHMARKS.md for the
    settings behind them). ``parts`` picks ``"end"``, ``"rrclarc"`` or both."""

    rho: float = 0.99
    epochs: float = 3.0
    alpha: float = 10.0
    beta: float = 1.0
    normalize_forward: str | None = None  # EnDConfig's default: 'train' (portable) where exact
    n_train: int = 60_000
    n_test: int = 10_000
    image_size: int = 16
    model: str = "simple_convnet"
    seed: int = 0
    output_dir: str = "hf_debias_demo"
    progress: bool = True
    parts: tuple[str, ...] = ("end", "rrclarc")
    artifact_n_train: int = 20_000
    rrclarc_layer: str = "stages.3"
    rrclarc_lamb: float = 1000.0
    rrclarc_freeze: str = "conv_norm"
    finetune_epochs: float = 1.0


def evaluate_on_splits(model: torch.nn.Module, splits: dict) -> dict[str, float]:
    """Unbiased / conflicting / worst-group figures on ``test_unbiased`` plus accuracy on ``test_biased``."""
    from .fit_loop import predict
    from .metrics import group_accuracy

    x, y, b = splits["test_unbiased"]
    unbiased = group_accuracy(predict(model, x), y, b, aligned_bias="identity")
    x, y, b = splits["test_biased"]
    biased = group_accuracy(predict(model, x), y, b, aligned_bias="identity")
    return {
        "unbiased_accuracy": unbiased["accuracy"],
        "bias_conflicting_accuracy": unbiased["bias_conflicting_accuracy"],
        "biased_accuracy": biased["accuracy"],
        "worst_group_accuracy": unbiased["worst_group_accuracy"],
    }


def run_demo(settings: DemoSettings | None = None, log=print) -> dict[str, dict[str, dict[str, float]]]:
    """Run the chosen parts; return their rows (``{"end": {...}, "rrclarc": {...}}``)."""
    settings = settings or DemoSettings()
    unknown = sorted(set(settings.parts) - {"end", "rrclarc"})
    if unknown or not settings.parts:
        raise ValueError(f"parts must be a non-empty selection of 'end' and 'rrclarc', got {settings.parts!r}.")
    results = {}
    if "end" in settings.parts:
        results["end"] = run_end_demo(settings, log)
    if "rrclarc" in settings.parts:
        results["rrclarc"] = run_rrclarc_demo(settings, log)
    return results


def run_end_demo(settings: DemoSettings, log=print) -> dict[str, dict[str, float]]:
    """Train vanilla and EnD, print the comparison, write ``report.json`` / ``report.png``; return the rows."""
    import timm
    import torch

    from .data import colour_digits_arrays
    from .fit_loop import FitConfig, fit, images_to_tensor
    from .methods import EnDConfig
    from .model import get_debias_model
    from .report import format_table, write_report

    log(f"Part 1, EnD. Building Colour-Digits (rho={settings.rho}, {settings.n_train:,} training images, "
        "offline) ...")
    arrays = colour_digits_arrays(settings.rho, n_train=settings.n_train, n_validation=10, n_test=settings.n_test,
                                  image_size=settings.image_size, seed=settings.seed)
    log(f"  {arrays['train'].num_conflicting} bias-conflicting training images "
        f"(digit not in its class colour) out of {len(arrays['train'].labels):,}.")
    splits = {name: (images_to_tensor(split.images), torch.from_numpy(split.labels),
                     torch.from_numpy(split.bias_labels)) for name, split in arrays.items()}
    fit_config = FitConfig(epochs=settings.epochs, seed=settings.seed)
    end_config = EnDConfig(alpha=settings.alpha, beta=settings.beta, normalize_forward=settings.normalize_forward)

    rows, models = {}, {}
    for name in ("vanilla", "EnD"):
        torch.manual_seed(settings.seed)
        model = timm.create_model(settings.model, num_classes=10)
        if name == "EnD":
            model = get_debias_model(model, end_config)
        fit(model, *splits["train"], fit_config, progress=settings.progress, desc=f"training {name}")
        rows[name] = evaluate_on_splits(model, splits)
        models[name] = model
        log(f"  {name}: unbiased accuracy {100 * rows[name]['unbiased_accuracy']:.1f}%")

    log("\n" + format_table(rows))
    title = (f"Colour-Digits, rho={settings.rho}: vanilla vs EnD "
             f"(alpha={settings.alpha:g}, beta={settings.beta:g})")
    json_path, png_path = write_report(settings.output_dir, rows, title=title,
                                       details={"settings": asdict(settings), "end_config": end_config.to_dict(),
                                                "train_conflicting": arrays["train"].num_conflicting})
    log(f"\nReport: {json_path} and {png_path}")
    _save_corrected(models["EnD"], Path(settings.output_dir) / "end_model", png_path, log,
                    bias="the digit's colour", dataset=f"Colour-Digits (rho={settings.rho}, built in)",
                    metrics={"test": rows["EnD"]}, baseline_metrics={"test": rows["vanilla"]})
    return rows


ARTIFACT_METRICS = (("clean_accuracy", "clean"), ("attacked_accuracy", "attacked (patch everywhere)"))
HEATMAP_IMAGES = 6
"""Class-0 test images with the patch shown in the demo's heatmap grid (R_bias is measured on 200)."""


def run_rrclarc_demo(settings: DemoSettings, log=print) -> dict[str, dict[str, float]]:
    """Vanilla learns the patch shortcut; RR-ClArC, fine-tuned along the patch CAV, removes it. Writes
    ``rrclarc_report.json`` / ``rrclarc_report.png``; returns the rows."""
    import copy
    import warnings

    import timm
    import torch

    from .cav import compute_cav
    from .data import controlled_artifact_arrays
    from .fit_loop import FitConfig, fit, images_to_tensor
    from .methods import RRClArCConfig
    from .metrics import directional_derivatives, model_artifact_accuracy, tcav
    from .model import get_debias_model
    from .relevance_report import compare_artifact_relevance
    from .report import format_table, write_report

    log(f"\nPart 2, RR-ClArC. Building the controlled-artifact digits ({settings.artifact_n_train:,} training "
        "images; a corner patch in 80% of class 0) ...")
    arrays = controlled_artifact_arrays(n_train=settings.artifact_n_train, n_validation=10, n_test=settings.n_test,
                                        seed=settings.seed)
    splits = {name: (images_to_tensor(split.images), torch.from_numpy(split.labels),
                     torch.from_numpy(split.artifact)) for name, split in arrays.items()}
    x, y, artifact = splits["train"]
    torch.manual_seed(settings.seed)
    vanilla = timm.create_model(settings.model, num_classes=10)
    fit(vanilla, x, y, y, FitConfig(epochs=settings.epochs, seed=settings.seed), progress=settings.progress,
        desc="training vanilla")
    in_class = y == 0
    # Mean pooling: only global average pooling and the head follow the layer, so the mean is what the head reads.
    cav = compute_cav(vanilla, settings.rrclarc_layer, (x[in_class], artifact[in_class]), concept="corner patch",
                      pooling="mean", progress=False)
    log(f"  {cav}")
    tuned = FitConfig(epochs=settings.finetune_epochs, lr=1e-3, batch_size=64, seed=settings.seed)
    models = {"vanilla": vanilla}
    for name, lamb in (("lambda=0 control", 0.0), ("RR-ClArC", settings.rrclarc_lamb)):
        model = get_debias_model(copy.deepcopy(vanilla), RRClArCConfig(cav=cav, lamb=lamb,
                                                                      freeze=settings.rrclarc_freeze))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the lambda = 0 control trains exactly like vanilla fine-tuning
            fit(model, x, y, y, tuned, progress=settings.progress, desc=f"fine-tuning {name}")
        models[name] = model
    rows = {}
    attacked_zeros = splits["test_attacked"][0][splits["test_attacked"][1] == 0]
    for name, model in models.items():
        rows[name] = model_artifact_accuracy(model, splits["test_clean"][0], splits["test_attacked"][0],
                                             splits["test_clean"][1])
        rows[name].update(tcav(directional_derivatives(model, settings.rrclarc_layer, cav, attacked_zeros, 0)))
        log(f"  {name}: clean {100 * rows[name]['clean_accuracy']:.1f}%, attacked "
            f"{100 * rows[name]['attacked_accuracy']:.1f}%")
    log("\n" + format_table(rows, ARTIFACT_METRICS))
    # Where the models look: attributions of class-0 images with the patch (the authors' R_bias samples)
    patched = (splits["test_attacked"][1] == 0).nonzero().flatten()[:200]
    images, masks = splits["test_attacked"][0][patched], torch.from_numpy(arrays["test_attacked"].masks)[patched]
    relevance = compare_artifact_relevance({name: models[name] for name in ("vanilla", "RR-ClArC")}, images, masks,
                                           labels=torch.zeros(len(patched), dtype=torch.long), shown=HEATMAP_IMAGES,
                                           path=Path(settings.output_dir) / "rrclarc_heatmaps.png")
    for name, value in relevance.artifact_relevance.items():
        rows[name]["artifact_relevance"] = value
    log(f"  artifact relevance R_bias (share of |attribution| inside the patch, {len(patched)} images): vanilla "
        f"{relevance.artifact_relevance['vanilla']:.3f}, RR-ClArC {relevance.artifact_relevance['RR-ClArC']:.3f}"
        f"; heatmaps: {relevance.heatmaps}")
    title = f"Corner-patch shortcut on class 0: vanilla vs RR-ClArC (lambda={settings.rrclarc_lamb:g})"
    json_path, png_path = write_report(settings.output_dir, rows, title=title, metrics=ARTIFACT_METRICS,
                                       name="rrclarc_report",
                                       details={"settings": asdict(settings), "cav": cav.metadata()})
    log(f"\nReport: {json_path} and {png_path}")
    _save_corrected(models["RR-ClArC"], Path(settings.output_dir) / "rrclarc_model", png_path, log,
                    bias="a corner patch on class 0", dataset="controlled-artifact digits (built in)",
                    metrics={"test": rows["RR-ClArC"]}, baseline_metrics={"test": rows["vanilla"]})
    return rows


def _save_corrected(model, folder: Path, chart: Path, log, **card) -> None:
    """Save the corrected model as it would go to the Hub (model card included), ready for ``push_folder``."""
    from .hub import ModelCardInfo

    model.save_pretrained(folder, card=ModelCardInfo(report_chart=chart, baseline_name="vanilla, same recipe",
                                                     **card))
    log(f"Corrected model with its model card: {folder} (hf_debias.load_model('{folder}'); push it with "
        f"hf_debias.push_folder('{folder}', 'your-name/model'))")


def quick_settings(output_dir: str | Path) -> DemoSettings:
    """A seconds-long version of the demo for smoke tests."""
    return DemoSettings(epochs=0.5, n_train=2000, n_test=500, output_dir=str(output_dir), progress=False,
                        artifact_n_train=2000, finetune_epochs=0.3)
