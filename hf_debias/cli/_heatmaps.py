"""``hf-debias train``'s before / after heatmaps: where the model looks, measured as R_bias and drawn as a grid.

Prepared before training (the images, their masks and a copy of the starting model) and finished after the final
evaluation, before the model is saved, so that ``heatmaps.png`` and R_bias go into ``report.json`` and the model
card. Two kinds of input:

- artifact masks, a column of the eval split(s) (``--heatmap_mask_column``; by default RRR's
  ``--rrr_mask_column`` and the built-in controlled-artifact data's ``artifact_mask``): the eval images whose
  mask is not empty, R_bias of both models (the authors' definition, ``hf_debias.metrics.artifact_relevance``);
- concept images, a folder (``--heatmap_images``, e.g. the images a CAV was computed from): heatmaps only (no
  mask, no R_bias), each explaining the class the "before" model predicts.

"before" is the baseline run's model when ``--baseline_results`` names a run folder that holds one (``hf-debias
compare`` does: its vanilla run), else the model this run started from; the report and the card say which.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("hf_debias")

HEATMAPS_PNG = "heatmaps.png"
SHOWN = 6
"""Images drawn in the grid (R_bias is measured on all of ``--heatmap_samples``)."""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
REPORT_ONLY_FIELDS = ("heatmap_mask_column", "heatmap_images", "heatmap_samples")
"""``DataArguments`` fields that change the report only, not the data a model is trained or evaluated on."""
BUILT_IN_MASKS = {"controlled-artifact": "artifact_mask"}
"""Built-in data sets that ship artifact masks, and their mask column."""


@dataclass
class HeatmapInputs:
    """What the heatmaps are drawn from, prepared before training."""

    images: torch.Tensor
    masks: torch.Tensor | None
    labels: torch.Tensor | None
    source: str
    before: torch.nn.Module
    before_name: str


def _given_mask_column(data_args) -> str | None:
    """``--heatmap_mask_column`` as given: None when not given, ``"none"`` when turned off."""
    given = data_args.heatmap_mask_column
    return None if given is None else ("none" if given.strip().lower() == "none" else given)


def heatmap_mask_column(data_args, run_mask_column: str | None) -> str | None:
    """The eval column of artifact masks the report reads: ``--heatmap_mask_column`` (``none``: no masks), else
    the run's own mask column (RRR's, ``run_mask_column``), else the built-in data's; None for none."""
    given = _given_mask_column(data_args)
    if given is not None:
        return None if given == "none" else given
    if data_args.heatmap_images is not None:
        return None
    return run_mask_column or BUILT_IN_MASKS.get(data_args.dataset)


def check_heatmap_arguments(data_args) -> None:
    """Refuse what cannot be drawn, before any data is read."""
    samples = data_args.heatmap_samples
    if isinstance(samples, bool) or not isinstance(samples, int) or samples < 1:
        raise ValueError(f"--heatmap_samples must be an integer >= 1, got {samples!r}.")
    if data_args.heatmap_images is not None:
        if _given_mask_column(data_args) not in (None, "none"):
            raise ValueError(f"--heatmap_images {data_args.heatmap_images} and --heatmap_mask_column "
                             f"{data_args.heatmap_mask_column}: give one (masks measure R_bias on the eval images; "
                             "concept images are drawn without masks).")
        if not Path(data_args.heatmap_images).is_dir():
            raise ValueError(f"--heatmap_images {data_args.heatmap_images!r} is not a folder of images.")


def prepare_heatmaps(data_args, training_args, data, model, eval_transform,
                     run_mask_column: str | None = None) -> HeatmapInputs | None:
    """The heatmap inputs of a run (None when it has no masks and no concept images): up to
    ``--heatmap_samples`` eval images with a non-empty mask (or the concept images) through the evaluation
    transform, and the "before" model (a copy of ``model`` unless the baseline run holds one)."""
    column = heatmap_mask_column(data_args, run_mask_column)
    if column is None and data_args.heatmap_images is None:
        return None
    limit = data_args.heatmap_samples
    if column is not None:
        images, masks, labels, source = _masked_eval_images(
            data, column, eval_transform, limit, seed=training_args.seed,
            explicit=data_args.heatmap_mask_column is not None)
        if images is None:
            return None
    else:
        images, source = _concept_images(Path(data_args.heatmap_images), eval_transform, limit)
        masks = labels = None
    before, before_name = _before_model(training_args, model)
    logger.info("Heatmaps: %d images (%s); 'before' is %s.", len(images), source, before_name)
    return HeatmapInputs(images, masks, labels, source, before, before_name)


def _masked_eval_images(data, column: str, eval_transform, limit: int, *, seed: int, explicit: bool):
    from ..data.transforms import mask_transform_for

    having = {name: split for name, split in data.evaluation.items() if column in split.column_names}
    if not having and not explicit:
        logger.info("No eval split has a %s column, so the report has no heatmaps (--heatmap_mask_column names "
                    "the column of artifact masks).", column)
        return None, None, None, None
    if not having:
        raise ValueError(f"--heatmap_mask_column {column!r}: no eval split has that column (eval splits "
                         f"{ {name: split.column_names for name, split in data.evaluation.items()} }); pass the "
                         "column that holds the artifact masks, or --heatmap_mask_column none.")
    to_masks = mask_transform_for(eval_transform)
    chosen_images, chosen_masks, chosen_labels, names = [], [], [], []
    for name, split in having.items():
        split = split.shuffle(seed=seed)  # a random N of the masked images, as --max_eval_samples draws them
        for start in range(0, len(split), 256):
            rows = split[start:start + 256]
            masks = to_masks(rows[column])
            keep = masks.flatten(1).amax(1) > 0
            if not keep.any():
                continue
            index = keep.nonzero().flatten().tolist()[:limit - len(chosen_labels)]
            chosen_images.append(eval_transform([rows["image"][i] for i in index]))
            chosen_masks.append(masks[index])
            chosen_labels += [int(rows["labels"][i]) for i in index]
            names.append(name)
            if len(chosen_labels) >= limit:
                break
        if len(chosen_labels) >= limit:
            break
    if not chosen_labels:
        logger.warning("--heatmap_mask_column %s: every mask of the eval split(s) %s is empty, so there is "
                       "nothing to measure R_bias on; no heatmaps.", column, ", ".join(having))
        return None, None, None, None
    source = f"eval images with a non-empty {column!r} mask, from {', '.join(dict.fromkeys(names))}"
    return torch.cat(chosen_images), torch.cat(chosen_masks), torch.tensor(chosen_labels), source


def _concept_images(folder: Path, eval_transform, limit: int):
    from PIL import Image

    files = sorted(path for path in folder.rglob("*") if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()
                   and not path.is_symlink())
    if not files:
        raise ValueError(f"--heatmap_images {str(folder)!r} holds no images ({', '.join(IMAGE_SUFFIXES)}).")
    pictures = []
    for path in files[:limit]:
        try:
            with Image.open(path) as image:
                pictures.append(image.convert("RGB"))
        except OSError as error:
            raise ValueError(f"--heatmap_images: {str(path)!r} is not a readable image: {error}") from error
    return eval_transform(pictures), f"{len(pictures)} concept images from {folder}"


def _before_model(training_args, model):
    baseline = getattr(training_args, "baseline_results", None)
    if baseline:
        folder = Path(baseline) if Path(baseline).is_dir() else Path(baseline).parent
        if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
            from ..hub import load_model

            return load_model(folder), f"the baseline run's model ({folder})"
    return copy.deepcopy(model).eval(), "the model this run started from (before fine-tuning)"


def finish_heatmaps(inputs: HeatmapInputs, trained, output_dir: str | Path, method: str) -> dict[str, Any]:
    """Attribute both models, write ``heatmaps.png`` into ``output_dir`` and return what the report and the
    card record: ``{"heatmaps": path, "artifact_relevance": {...}, "details": {...}}``."""
    from ..fit_loop import predict
    from ..relevance_report import compare_artifact_relevance

    device = next(trained.parameters()).device
    before = inputs.before.to(device)
    # concept images have no labels: both models explain the class the "before" model predicts
    target = None if inputs.labels is not None else torch.from_numpy(predict(before, inputs.images, batch_size=64))
    comparison = compare_artifact_relevance({"before": before, f"after: {method}": trained}, inputs.images,
                                            inputs.masks, labels=inputs.labels, target=target, shown=SHOWN,
                                            path=Path(output_dir) / HEATMAPS_PNG)
    inputs.before.to("cpu")
    relevance = dict(comparison.artifact_relevance)
    details = {"heatmaps": HEATMAPS_PNG, "images": inputs.source, "num_images": comparison.num_images,
               "before": inputs.before_name, "attribution_method": comparison.attribution_method,
               "artifact_relevance": relevance or None}
    note = (f"on {comparison.num_images} {inputs.source}; before = {inputs.before_name}, attributions by "
            f"{', '.join(sorted(set(comparison.attribution_method.values())))}")
    return {"heatmaps": comparison.heatmaps, "artifact_relevance": relevance, "note": note, "details": details}

