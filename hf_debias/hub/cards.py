"""Model cards for corrected models and CAV repos, rendered from the templates in ``model_cards/`` with
huggingface_hub's card API. Summary metrics go into the card's ``model-index`` (``EvalResult``) as well as its text.

A card tells the truth about its repo: its "How to load" snippets run as written on the saved repo (a test
executes them), it shows plain-loader and ``pipeline`` snippets only for a repo those loaders read correctly, it
names the TCAV sensitivity it shows, and when the metrics hold clean and attacked accuracy it shows both and
says in its limitations how much of the shortcut the correction leaves (``SHORTCUT_TOLERANCE``).
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from .. import __version__
from ..cav.fitting import describe_auc
from ..metrics.group import is_group_structure_key, parse_group_key
from .paths import recordable_name

if TYPE_CHECKING:
    from huggingface_hub import ModelCard

    from ..cav import CAV
    from ..config import DebiasConfig

TEMPLATES = Path(__file__).resolve().parent.parent / "model_cards"
CHART_NAME = "report.png"
HEATMAPS_NAME = "heatmaps.png"
"""The card's heatmap grid (``ModelCardInfo.heatmaps``): where the model looks before and after the correction."""
_BOOKKEEPING = {"base_model_name_or_path", "revision", "hf_debias_version", "cav"}
IMAGE_FILE = "image.jpg"
"""The image the card's snippets classify (the user's own file under that name)."""
SHORTCUT_TOLERANCE = 0.03
"""Attacked accuracy more than this (3 points) below clean accuracy: the card's limitations say the correction
leaves that much of the shortcut."""
TCAV_NOTES = {
    "tcav_score": "*tcav score*: the share of the class's samples whose logit rises along the bias CAV, on the "
                  "spatially averaged activation (about 0.5 once the model ignores the bias).",
    "tcav_pooled_sensitivity": "*tcav pooled sensitivity* (hf_debias): the mean |derivative| of the class's logit "
                               "along the CAV on the spatially averaged activation; near 0 once the model ignores "
                               "the bias.",
    "tcav_sensitivity": "*tcav sensitivity*: the older name of *tcav pooled sensitivity* (hf_debias): the mean "
                        "|derivative| along the CAV on the spatially averaged activation.",
    "tcav_position_sensitivity": "*tcav position sensitivity* (the RR-ClArC authors' `mean_tcav_sensitivity`): the "
                                 "mean over samples and positions of the |per-position derivative| along the CAV; "
                                 "several times larger than the pooled one and not comparable with it.",
}
"""What each TCAV metric on a card means; a card explains the ones it shows."""

UNPROVEN_EVIDENCE_NOTE = (
    "{evidence} measure the model's sensitivity along the bias CAV and where it looks; they do **not** show that "
    "the shortcut is gone. On a vision transformer the TCAV sensitivity fell 88 % while a patch shortcut stayed "
    "whole (hf_debias BENCHMARKS §4g). Check the model on images with the artifact: an attacked split (the same "
    "images clean and with the artifact, reported as `clean_accuracy` / `attacked_accuracy`), or the artifact "
    "pasted into clean images of other classes.")
"""The card's statement when its only evidence of a correction is TCAV and / or R_bias (no shortcut check)."""


@dataclass
class ModelCardInfo:
    """What a corrected model's card says beyond its config.

    Args:
        bias: the bias that was corrected, in words (``"background colour"``, ``"ruler in the image"``).
        dataset: the data the metrics were measured on (a Hub dataset id or a name).
        metrics: ``{split: {metric: value}}`` of this (corrected) model, e.g. from ``group_accuracy`` or
            ``model_artifact_accuracy``. Group sizes, ids and alignment flags (``group_*_count``,
            ``worst_group_label``...) are not shown as metrics; per-group accuracies (``group_{label}_{bias}_accuracy``)
            go into a table of their own; ``clean_accuracy`` and ``attacked_accuracy`` of a split (or ``accuracy``
            of a ``<name>_clean`` and a ``<name>_attacked`` split) make the card's shortcut check.
        baseline_metrics: the same for the uncorrected model (``baseline_name`` says which), for before vs after.
        baseline_name: what "before" is.
        report_chart: a PNG (e.g. the ``report.png`` of ``hf-debias demo``) copied into the repo and shown.
        heatmaps: a PNG of attribution heatmaps before and after correction (``compare_artifact_relevance``'s
            grid), copied into the repo as ``heatmaps.png`` and shown.
        artifact_relevance: ``{model: R_bias}`` of the heatmaps' models (e.g. ``{"before": 0.31, "after": 0.04}``),
            with ``artifact_relevance_note`` saying on which images; shown with the heatmaps.
        limitations: one more sentence for the limitations section.
        license: the card's license id.
        class_names / bias_names: names of the class ids and bias ids, for the per-group table (default: the class
            names saved with the model, when the card is given its folder).
    """

    bias: str | None = None
    dataset: str | None = None
    metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    baseline_metrics: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    baseline_name: str = "vanilla fine-tuning"
    report_chart: str | os.PathLike | None = None
    heatmaps: str | os.PathLike | None = None
    artifact_relevance: Mapping[str, float] = field(default_factory=dict)
    artifact_relevance_note: str | None = None
    limitations: str | None = None
    license: str | None = None
    class_names: Sequence[str] | None = None
    bias_names: Sequence[str] | None = None

    def __post_init__(self) -> None:
        for name in ("metrics", "baseline_metrics"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not all(isinstance(v, Mapping) for v in value.values()):
                raise ValueError(f"{name} must map a split name to {{metric: value}}, got {value!r}.")
        for name in ("class_names", "bias_names"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, str) or not isinstance(value, Sequence)
                                      or not all(isinstance(v, str) for v in value)):
                raise ValueError(f"{name} must be a list of names (strings), one per id, got {value!r}.")
        for name in ("report_chart", "heatmaps"):
            value = getattr(self, name)
            if value is not None and not Path(value).is_file():
                raise ValueError(f"{name} {str(value)!r} is not a file.")
        if not isinstance(self.artifact_relevance, Mapping) or not all(
                isinstance(k, str) and _is_number(v) for k, v in self.artifact_relevance.items()):
            raise ValueError(f"artifact_relevance must map a model name to its R_bias (a number), got "
                             f"{self.artifact_relevance!r}.")


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _number(metric: str, value: Any) -> str:
    """Accuracies as percentages, their gaps and drops in points, everything else (TCAV) as a plain number."""
    if isinstance(value, float) and math.isnan(value):
        return "n/a"
    if "accuracy" in metric:
        return f"{100 * value:.1f} %"
    if metric.endswith(("_gap", "_drop")):
        return f"{100 * value:+.1f} pts"
    return f"{value:.4g}"


def _group_of_accuracy(metric: str) -> tuple[int, int] | None:
    """``(label, bias)`` of a per-group accuracy key ``group_{label}_{bias}_accuracy``, else None."""
    parsed = parse_group_key(metric, prefix="")
    return parsed[:2] if parsed is not None and parsed[2] == "accuracy" else None


def _is_summary_metric(metric: str, value: Any) -> bool:
    """A number that measures the model as a whole: not a group's size, id or flag, nor one group's accuracy."""
    return _is_number(value) and not is_group_structure_key(metric) and _group_of_accuracy(metric) is None


def _summary(metrics: Mapping[str, Any]) -> dict[str, float]:
    return {metric: value for metric, value in metrics.items() if _is_summary_metric(metric, value)}


def _eval_results(info: ModelCardInfo) -> list:
    from huggingface_hub import EvalResult

    results = []
    for metrics, suffix, config in ((info.metrics, "", None),
                                    (info.baseline_metrics, f" (before: {info.baseline_name})", "before_correction")):
        for split, values in metrics.items():
            for metric, value in _summary(values).items():
                if isinstance(value, float) and math.isnan(value):
                    continue
                results.append(EvalResult(
                    task_type="image-classification", dataset_type=info.dataset or "custom",
                    dataset_name=info.dataset or "evaluation data", dataset_split=split, metric_type=metric,
                    metric_value=float(value), metric_name=metric.replace("_", " ") + suffix, metric_config=config))
    return results


def _metric_rows(info: ModelCardInfo) -> list[dict[str, str]]:
    rows = []
    for split in dict.fromkeys([*info.metrics, *info.baseline_metrics]):
        after, before = _summary(info.metrics.get(split, {})), _summary(info.baseline_metrics.get(split, {}))
        for metric in dict.fromkeys([*after, *before]):
            rows.append({"split": split, "key": metric, "metric": metric.replace("_", " "),
                         "after": _number(metric, after[metric]) if metric in after else "-",
                         "before": _number(metric, before[metric]) if metric in before else "-"})
    return rows


def _named(names: Sequence[str] | None, index: int) -> str:
    return f"{names[index]} ({index})" if names is not None and 0 <= index < len(names) else str(index)


def _group_rows(info: ModelCardInfo, class_names: Sequence[str] | None) -> list[dict[str, str]]:
    """One row per (split, class, bias) group with an accuracy before or after the correction."""
    rows = []
    for split in dict.fromkeys([*info.metrics, *info.baseline_metrics]):
        after, before = info.metrics.get(split, {}), info.baseline_metrics.get(split, {})
        groups = {}
        for metrics in (after, before):
            for key, value in metrics.items():
                group = _group_of_accuracy(key)
                if group is not None and _is_number(value):
                    groups[group] = key
        for (label, bias), key in sorted(groups.items()):
            prefix = key[:-len("accuracy")]
            count = after.get(prefix + "count", before.get(prefix + "count"))
            aligned = after.get(prefix + "aligned", before.get(prefix + "aligned"))
            rows.append({"split": split, "label": _named(class_names, label), "bias": _named(info.bias_names, bias),
                         "count": str(int(count)) if _is_number(count) else "-",
                         "aligned": {True: "aligned", False: "conflicting"}.get(aligned, "-"),
                         "after": _number(key, after[key]) if key in after else "-",
                         "before": _number(key, before[key]) if key in before else "-"})
    return rows


def _clean_and_attacked(metrics: Mapping[str, Mapping[str, Any]]) -> dict[str, tuple[float, float]]:
    """``{split: (clean accuracy, attacked accuracy)}``: a split's ``clean_accuracy`` and ``attacked_accuracy`` (or
    ``transplanted_accuracy``: ``hf_debias.metrics.artifact_transplant_check``'s result, the artifact pasted into
    the same images), or the ``accuracy`` of a ``<name>_clean`` and a ``<name>_attacked`` split (shown as
    ``<name>``; splits named just ``clean`` and ``attacked`` as ``clean / attacked``)."""
    found = {}
    for split, values in metrics.items():
        clean = values.get("clean_accuracy")
        attacked = values.get("attacked_accuracy", values.get("transplanted_accuracy"))
        if _is_number(clean) and _is_number(attacked):
            found[split] = (float(clean), float(attacked))
    for split, values in metrics.items():
        if split == "clean" or split.endswith("_clean"):
            name = split[:-len("clean")].rstrip("_")
            other = metrics.get(f"{name}_attacked" if name else "attacked", {})
            if _is_number(values.get("accuracy")) and _is_number(other.get("accuracy")):
                found.setdefault(name or "clean / attacked", (float(values["accuracy"]), float(other["accuracy"])))
    return {split: pair for split, pair in found.items() if not any(math.isnan(v) for v in pair)}


def _shortcut_checks(info: ModelCardInfo) -> list[dict[str, Any]]:
    """Clean vs attacked accuracy per split, before and after, and whether the correction leaves the shortcut."""
    before = _clean_and_attacked(info.baseline_metrics)
    checks = []
    for split, (clean, attacked) in _clean_and_attacked(info.metrics).items():
        gap = clean - attacked
        check = {"split": split, "clean": _number("accuracy", clean), "attacked": _number("accuracy", attacked),
                 "gap": f"{100 * gap:.1f}", "leaves_shortcut": gap > SHORTCUT_TOLERANCE,
                 "before": None}
        if split in before:
            b_clean, b_attacked = before[split]
            check["before"] = {"clean": _number("accuracy", b_clean), "attacked": _number("accuracy", b_attacked),
                               "gap": f"{100 * (b_clean - b_attacked):.1f}"}
        checks.append(check)
    return checks


def _repo_contents(folder: str | os.PathLike | None) -> dict[str, Any]:
    """What the saved folder holds that the card's snippets rely on: its layout (``timm``: timm's
    ``config.json`` with ``pretrained_cfg``; ``transformers``), whether it has ``preprocessor_config.json``, and the
    class names saved in ``config.json`` (``label_names`` or a real ``id2label``). Empty without a folder."""
    if folder is None:
        return {}
    from ..config import read_json_object

    folder = Path(folder)
    config = read_json_object(folder / "config.json", "model config")
    names = config.get("label_names")
    if names is None and isinstance(config.get("id2label"), dict):
        id2label = config["id2label"]
        try:
            names = [id2label[key] for key in sorted(id2label, key=int)]
        except ValueError:
            names = None
        if names is not None and names == [f"LABEL_{i}" for i in range(len(names))]:
            names = None
    if not (isinstance(names, list) and all(isinstance(name, str) for name in names)):
        names = None
    return {"layout": "timm" if "architecture" in config else "transformers", "class_names": names,
            "has_processor": (folder / "preprocessor_config.json").is_file()}


def debias_model_card(config: DebiasConfig, *, repo_id: str, library: str, plain_loading: bool,
                      info: ModelCardInfo | None = None, cav: CAV | None = None,
                      folder: str | os.PathLike | None = None,
                      method_config: DebiasConfig | None = None) -> ModelCard:
    """The card of a corrected model saved under ``repo_id`` (also used as the card's ``model_name``).

    Args:
        library: the weights' format (``native.write_native``'s answer); plain_loading: whether plain timm /
            transformers / ``pipeline`` may load the repo (the correction leaves the forward pass alone).
        folder: the saved folder (a staging folder is fine once the model and image processor are in it); the
            card reads its layout, class names and whether it has ``preprocessor_config.json``, so that its
            snippets run as written. Without it the snippets assume a complete repo.
        method_config: the config as the method resolved it (``DebiasModel.method.config``, e.g. EnD's
            ``normalize_forward``): its values are shown and its ``card_notes()`` explained.
    """
    from huggingface_hub import ModelCard, ModelCardData

    info = info or ModelCardInfo()
    shown = method_config if method_config is not None else config
    model_name = repo_id.rstrip("/").split("/")[-1]
    base = recordable_name(config.base_model_name_or_path)
    base_hub = _hub_id(base)
    contents = _repo_contents(folder)
    layout = contents.get("layout", "timm" if library == "timm" else "transformers")
    if layout == "timm" or contents.get("has_processor", True):
        processor_source = repo_id  # timm layouts: TimmWrapperImageProcessor reads pretrained_cfg
    else:
        processor_source = base_hub  # the base model's processor, if it has a Hub id
    rows = _metric_rows(info)
    shown_tcav = {row["key"] for row in rows} & set(TCAV_NOTES)
    card_data = ModelCardData(
        model_name=model_name, base_model=base_hub, library_name=library if plain_loading else "hf_debias",
        pipeline_tag="image-classification", license=info.license,
        tags=["hf_debias", "bias-correction", config.debias_method, "image-classification"],
        datasets=[info.dataset] if info.dataset and "/" in info.dataset else None,
        eval_results=_eval_results(info) or None)
    parts = _parts(config, shown)
    if parts:
        card_data.tags[3:3] = sorted({part["method"] for part in parts})
    cav_summary = _cav_summary(cav) if cav is not None else None
    shortcut_checks = _shortcut_checks(info)
    evidence_note = unproven_evidence_note(info.metrics, bool(info.artifact_relevance))
    notes = [] if parts else shown.card_notes() if callable(getattr(shown, "card_notes", None)) else []
    return ModelCard.from_template(
        card_data, template_path=str(TEMPLATES / "debias_model_card.md"),
        model_name=model_name, repo_id=repo_id,
        method_title=(config.method_title or config.debias_method) + (
            f" ({' + '.join(part['title'] for part in parts)})" if parts else ""),
        method_summary=config.method_summary, parts=parts, base_model_shown=base or "an unrecorded base model",
        base_model_url=f"https://huggingface.co/{base_hub}" if base_hub else "#",
        hyperparameters=[] if parts else _hyperparameters(shown),
        method_notes=notes, bias=info.bias, dataset=info.dataset, metric_rows=rows,
        group_rows=_group_rows(info, info.class_names or contents.get("class_names")),
        has_baseline=bool(info.baseline_metrics), baseline_name=info.baseline_name,
        tcav_notes=[text for key, text in TCAV_NOTES.items() if key in shown_tcav],
        shortcut_checks=shortcut_checks, evidence_note=evidence_note, chart=CHART_NAME if info.report_chart else None,
        heatmaps=HEATMAPS_NAME if info.heatmaps else None,
        artifact_relevance=[(name, f"{value:.3f}") for name, value in info.artifact_relevance.items()],
        artifact_relevance_note=info.artifact_relevance_note,
        plain_loading=plain_loading, library=library, layout=layout, processor_source=processor_source,
        has_processor=contents.get("has_processor"), image_file=IMAGE_FILE, limitations=info.limitations,
        cav=cav_summary, hf_debias_version=__version__, versions=_versions())


def _hyperparameters(config: DebiasConfig) -> list[tuple[str, Any]]:
    return [(key, value) for key, value in sorted(config.to_dict().items()) if key not in _BOOKKEEPING]


def unproven_evidence_note(metrics: Mapping[str, Mapping[str, Any]], has_relevance: bool = False) -> str | None:
    """What a card or a run's report must say when its only evidence of a correction is TCAV (a ``tcav_*`` metric
    in ``metrics``, ``{split: {metric: value}}``) and / or R_bias (``has_relevance``) with no shortcut check (no
    split with clean and attacked accuracy); ``None`` when there is a shortcut check or neither figure."""
    has_tcav = any(key in TCAV_NOTES for values in metrics.values() for key in values)
    if _clean_and_attacked(metrics) or not (has_tcav or has_relevance):
        return None
    evidence = " and ".join(name for name, shown in (("TCAV", has_tcav), ("R_bias", has_relevance)) if shown)
    return UNPROVEN_EVIDENCE_NOTE.format(evidence=f"The only evidence of the correction here is {evidence}: these")


def _cav_summary(cav: CAV) -> dict[str, Any]:
    return {**cav.metadata(), "auc_text": describe_auc(cav.quality), "pooling_description": cav.pooling_description,
            "base_model_name_or_path": recordable_name(cav.base_model_name_or_path)}


def _parts(config: DebiasConfig, shown: DebiasConfig) -> list[dict[str, Any]]:
    """One entry per part of a composed correction (none for a single method): its name, title, summary,
    settings as the method resolved them, notes, and its CAV with the folder it is saved in."""
    given = getattr(config, "corrections", None)
    if given is None:
        return []
    from ..methods.composed.config import CAV_FOLDER

    resolved = getattr(shown, "corrections", given)
    parts = []
    for index, (part, name) in enumerate(zip(resolved, config.part_names())):
        cav = part.load_cav() if hasattr(part, "load_cav") else None
        parts.append({
            "index": index, "name": name, "method": part.debias_method,
            "title": part.method_title or part.debias_method, "summary": part.method_summary,
            "hyperparameters": [(k, v) for k, v in _hyperparameters(part) if k != "debias_method"],
            "notes": part.card_notes() if callable(getattr(part, "card_notes", None)) else [],
            "cav": _cav_summary(cav) if cav is not None else None, "cav_folder": CAV_FOLDER.format(index=index)})
    return parts


def copy_chart(info: ModelCardInfo | None, folder: Path) -> None:
    """Put the card's chart and heatmap grid next to it."""
    for source, name in ((getattr(info, "report_chart", None), CHART_NAME), (getattr(info, "heatmaps", None),
                                                                             HEATMAPS_NAME)):
        if source is not None and Path(source).resolve() != (folder / name).resolve():
            shutil.copyfile(source, folder / name)


def cav_card(cavs: Mapping[str, CAV], *, repo_id: str) -> ModelCard:
    """The card of a repo holding ``cavs`` (``{subfolder: CAV}``; ``""`` for the repo root)."""
    from huggingface_hub import ModelCard, ModelCardData

    rows = []
    for folder, cav in cavs.items():
        rows.append({"folder": folder or ".", "concept": cav.concept or "-", "layer": cav.layer,
                     "base_model": recordable_name(cav.base_model_name_or_path) or "-",
                     "num_channels": cav.num_channels,
                     "method": cav.method, "pooling": cav.pooling_description, "num_samples": cav.num_samples,
                     "num_concept_samples": cav.num_concept_samples, "auc": describe_auc(cav.quality)})
    bases = {_hub_id(cav.base_model_name_or_path) for cav in cavs.values()} - {None}
    model_name = repo_id.rstrip("/").split("/")[-1]
    card_data = ModelCardData(model_name=model_name, library_name="hf_debias",
                              tags=["hf_debias", "cav", "concept-activation-vector"],
                              base_model=sorted(bases)[0] if len(bases) == 1 else None)
    return ModelCard.from_template(card_data, template_path=str(TEMPLATES / "cav_card.md"), model_name=model_name,
                                   repo_id=repo_id, cavs=rows, first_subfolder=next(iter(cavs)) or None,
                                   hf_debias_version=__version__)
