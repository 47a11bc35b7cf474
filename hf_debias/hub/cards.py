"""Model cards for corrected models and CAV repos, rendered from the templates in ``model_cards/`` with
huggingface_hub's card API. Metrics go into the card's ``model-index`` (``EvalResult``) as well as its text."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from .. import __version__
from .paths import recordable_name

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

    from ..cav import CAV
    from ..config import DebiasConfig

TEMPLATES = Path(__file__).resolve().parent.parent / "model_cards"
CHART_NAME = "report.png"
_BOOKKEEPING = {"base_model_name_or_path", "revision", "hf_debias_version", "cav"}


@dataclass
class ModelCardInfo:
    """What a corrected model's card says beyond its config.

    Args:
        bias: the bias that was corrected, in words (``"background colour"``, ``"ruler in the image"``).
        dataset: the data the metrics were measured on (a Hub dataset id or a name).
        metrics: ``{split: {metric: value}}`` of this (corrected) model, e.g. from ``group_accuracy``.
        baseline_metrics: the same for the uncorrected model (``baseline_name`` says which), for before vs after.
        baseline_name: what "before" is.
        report_chart: a PNG (e.g. the ``report.png`` of ``hf-debias demo``) copied into the repo and shown.
        limitations: one more sentence for the limitations section.
        license: the card's license id.
    """

    bias: str | None = None
    dataset: str | None = None
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    baseline_metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    baseline_name: str = "vanilla fine-tuning"
    report_chart: str | os.PathLike | None = None
    limitations: str | None = None
    license: str | None = None

    def __post_init__(self) -> None:
        for name in ("metrics", "baseline_metrics"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
                raise ValueError(f"{name} must map a split name to {{metric: value}}, got {value!r}.")
        if self.report_chart is not None and not Path(self.report_chart).is_file():
            raise ValueError(f"report_chart {str(self.report_chart)!r} is not a file.")


def _versions() -> list[tuple[str, str]]:
    versions = []
    for name in ("torch", "timm", "transformers", "huggingface_hub"):
        try:
            versions.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            pass
    return versions


def _hub_id(name: str | None) -> str | None:
    """A Hub model id the card's ``base_model`` may point at, or None (timm names without an org, folders)."""
    if not name:
        return None
    name = name.removeprefix("hf-hub:")
    if name.count("/") == 1 and not Path(name).exists():
        return name
    return None


def _number(metric: str, value: Any) -> str:
    """Accuracies as percentages, their gaps and drops in points, everything else (TCAV) as a plain number."""
    if "accuracy" in metric:
        return f"{100 * value:.1f} %"
    if metric.endswith(("_gap", "_drop")):
        return f"{100 * value:+.1f} pts"
    return f"{value:.4g}"


def _eval_results(info: ModelCardInfo) -> list:
    from huggingface_hub import EvalResult

    results = []
    for metrics, suffix, config in ((info.metrics, "", None),
                                    (info.baseline_metrics, f" (before: {info.baseline_name})", "before_correction")):
        for split, values in metrics.items():
            for metric, value in values.items():
                if not isinstance(value, (int, float)):
                    continue
                results.append(EvalResult(
                    task_type="image-classification", dataset_type=info.dataset or "custom",
                    dataset_name=info.dataset or "evaluation data", dataset_split=split, metric_type=metric,
                    metric_value=float(value), metric_name=metric.replace("_", " ") + suffix, metric_config=config))
    return results


def debias_model_card(config: DebiasConfig, *, repo_id: str, library: str, plain_loading: bool,
                      info: ModelCardInfo | None = None, cav: CAV | None = None) -> ModelCard:
    """The card of a corrected model saved under ``repo_id`` (also used as the card's ``model_name``)."""
    from huggingface_hub import ModelCard, ModelCardData

    info = info or ModelCardInfo()
    model_name = repo_id.rstrip("/").split("/")[-1]
    base = recordable_name(config.base_model_name_or_path)
    base_hub = _hub_id(base)
    splits = list(dict.fromkeys([*info.metrics, *info.baseline_metrics]))
    rows = []
    for split in splits:
        after, before = info.metrics.get(split, {}), info.baseline_metrics.get(split, {})
        for metric in dict.fromkeys([*after, *before]):
            rows.append({"split": split, "metric": metric.replace("_", " "),
                         "after": _number(metric, after[metric]) if metric in after else "-",
                         "before": _number(metric, before[metric]) if metric in before else "-"})
    card_data = ModelCardData(
        model_name=model_name, base_model=base_hub, library_name=library if plain_loading else "hf_debias",
        pipeline_tag="image-classification", license=info.license,
        tags=["hf_debias", "bias-correction", config.debias_method, "image-classification"],
        datasets=[info.dataset] if info.dataset and "/" in info.dataset else None,
        eval_results=_eval_results(info) or None)
    cav_summary = None
    if cav is not None:
        cav_summary = {**cav.metadata(), "auc": cav.quality.get("auc"),
                       "base_model_name_or_path": recordable_name(cav.base_model_name_or_path)}
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATES / "debias_model_card.md"),
        model_name=model_name, repo_id=repo_id, method_title=config.method_title or config.debias_method,
        method_summary=config.method_summary, base_model_shown=base or "an unrecorded base model",
        base_model_url=f"https://huggingface.co/{base_hub}" if base_hub else "#",
        hyperparameters=[(key, value) for key, value in sorted(config.to_dict().items()) if key not in _BOOKKEEPING],
        bias=info.bias, dataset=info.dataset, metric_rows=rows, has_baseline=bool(info.baseline_metrics),
        baseline_name=info.baseline_name, has_tcav=any(row["metric"].startswith("tcav") for row in rows),
        chart=CHART_NAME if info.report_chart else None, plain_loading=plain_loading, library=library,
        limitations=info.limitations, cav=cav_summary, hf_debias_version=__version__, versions=_versions())


def copy_chart(info: ModelCardInfo | None, folder: Path) -> None:
    """Put the card's chart next to it."""
    if info is not None and info.report_chart is not None:
        shutil.copyfile(info.report_chart, folder / CHART_NAME)


def cav_card(cavs: Mapping[str, CAV], *, repo_id: str) -> ModelCard:
    """The card of a repo holding ``cavs`` (``{subfolder: CAV}``; ``""`` for the repo root)."""
    from huggingface_hub import ModelCard, ModelCardData

    rows = []
    for folder, cav in cavs.items():
        auc = cav.quality.get("auc")
        rows.append({"folder": folder or ".", "concept": cav.concept or "-", "layer": cav.layer,
                     "base_model": recordable_name(cav.base_model_name_or_path) or "-",
                     "num_channels": cav.num_channels,
                     "method": cav.method, "pooling": cav.pooling, "num_samples": cav.num_samples,
                     "num_concept_samples": cav.num_concept_samples, "auc": f"{auc:.3f}" if auc is not None else "-"})
    bases = {_hub_id(cav.base_model_name_or_path) for cav in cavs.values()} - {None}
    model_name = repo_id.rstrip("/").split("/")[-1]
    card_data = ModelCardData(model_name=model_name, library_name="hf_debias", tags=["hf_debias", "cav", "concept-activation-vector"],
                              base_model=sorted(bases)[0] if len(bases) == 1 else None)
    return ModelCard.from_template(card_data, template_path=str(TEMPLATES / "cav_card.md"), model_name=model_name,
                                   repo_id=repo_id, cavs=rows, first_subfolder=next(iter(cavs)) or None,
                                   hf_debias_version=__version__)
