"""The first-run demo: vanilla vs EnD on Colour-Digits, entirely offline, in a few minutes on a CPU.

A small CNN is trained twice on digits whose background colour gives away the class for a share ``rho`` of
the training images: once with plain cross-entropy (it learns the colour shortcut) and once with EnD. Both
are tested on digits with random colours (unbiased), with class colours (biased), and on the
bias-conflicting test samples; a table is printed and a JSON + PNG report is written.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import timm
import torch

from .data import colour_digits_arrays
from .methods import EnDConfig
from .metrics import group_accuracy
from .model import get_debias_model
from .report import format_table, write_report
from .training import FitConfig, fit, images_to_tensor, predict


@dataclass
class DemoSettings:
    """What the demo runs; the defaults take about 2.5 minutes on 2 CPU cores (see BENCHMARKS.md for the
    settings behind them)."""

    rho: float = 0.99
    epochs: float = 3.0
    alpha: float = 10.0
    beta: float = 1.0
    normalize_forward: bool = True
    n_train: int = 60_000
    n_test: int = 10_000
    image_size: int = 16
    model: str = "simple_convnet"
    seed: int = 0
    output_dir: str = "hf_debias_demo"
    progress: bool = True


def evaluate_on_splits(model: torch.nn.Module, splits: dict) -> dict[str, float]:
    """Unbiased / conflicting / worst-group figures on ``test_unbiased`` plus accuracy on ``test_biased``."""
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


def run_demo(settings: DemoSettings | None = None, log=print) -> dict[str, dict[str, float]]:
    """Train vanilla and EnD, print the comparison, write ``report.json`` / ``report.png``; return the rows."""
    settings = settings or DemoSettings()
    log(f"Building Colour-Digits (rho={settings.rho}, {settings.n_train:,} training images, offline) ...")
    arrays = colour_digits_arrays(settings.rho, n_train=settings.n_train, n_validation=10, n_test=settings.n_test,
                                  image_size=settings.image_size, seed=settings.seed)
    log(f"  {arrays['train'].num_conflicting} bias-conflicting training images "
        f"(digit not in its class colour) out of {len(arrays['train'].labels):,}.")
    splits = {name: (images_to_tensor(split.images), torch.from_numpy(split.labels),
                     torch.from_numpy(split.bias_labels)) for name, split in arrays.items()}
    fit_config = FitConfig(epochs=settings.epochs, seed=settings.seed)
    end_config = EnDConfig(alpha=settings.alpha, beta=settings.beta, normalize_forward=settings.normalize_forward)

    rows = {}
    for name in ("vanilla", "EnD"):
        torch.manual_seed(settings.seed)
        model = timm.create_model(settings.model, num_classes=10)
        if name == "EnD":
            model = get_debias_model(model, end_config)
        fit(model, *splits["train"], fit_config, progress=settings.progress, desc=f"training {name}")
        rows[name] = evaluate_on_splits(model, splits)
        log(f"  {name}: unbiased accuracy {100 * rows[name]['unbiased_accuracy']:.1f}%")

    log("\n" + format_table(rows))
    title = (f"Colour-Digits, rho={settings.rho}: vanilla vs EnD "
             f"(alpha={settings.alpha:g}, beta={settings.beta:g})")
    json_path, png_path = write_report(settings.output_dir, rows, title=title,
                                       details={"settings": asdict(settings), "end_config": end_config.to_dict(),
                                                "train_conflicting": arrays["train"].num_conflicting})
    log(f"\nReport: {json_path} and {png_path}")
    return rows


def quick_settings(output_dir: str | Path) -> DemoSettings:
    """A seconds-long version of the demo for smoke tests."""
    return DemoSettings(epochs=0.5, n_train=2000, n_test=500, output_dir=str(output_dir), progress=False)
