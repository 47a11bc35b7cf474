"""Before / after: where each model looks on images with the artifact, as R_bias and as a heatmap grid.

``compare_artifact_relevance({"vanilla": base, "RR-ClArC": corrected}, images, masks, labels=labels,
path="heatmaps.png")`` attributes every model's decision (``hf_debias.attribute``: LRP where zennit's rules cover
the model, else input × gradient), measures the artifact relevance R_bias of each (the authors' definition,
``hf_debias.metrics.artifact_relevance``) and draws the first ``shown`` images with each model's heatmap
(``hf_debias.save_heatmap_grid``). The demo and ``hf-debias train`` both report through it.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .attribution import attribute
from .heatmaps import save_heatmap_grid
from .metrics.artifact_relevance import artifact_relevance


@dataclass
class RelevanceComparison:
    """What ``compare_artifact_relevance`` measured.

    Attributes:
        artifact_relevance: model name -> mean R_bias over the images (lower: the model looks less at the artifact);
            empty when no masks were given.
        attribution_method: model name -> the attribution method used (``lrp`` or ``input_x_gradient``).
        per_image: model name -> R_bias of every image.
        num_images: how many images R_bias was measured on.
        heatmaps: the PNG written, or None.
    """

    artifact_relevance: dict[str, float] = field(default_factory=dict)
    attribution_method: dict[str, str] = field(default_factory=dict)
    per_image: dict[str, list[float]] = field(default_factory=dict)
    num_images: int = 0
    heatmaps: Path | None = None

    def summary(self) -> dict[str, dict[str, float | str | None]]:
        """JSON-ready ``{model: {"artifact_relevance": ..., "attribution_method": ...}}`` (R_bias None without
        masks)."""
        return {name: {"artifact_relevance": self.artifact_relevance.get(name), "attribution_method": used}
                for name, used in self.attribution_method.items()}


def compare_artifact_relevance(models: Mapping[str, nn.Module], images: torch.Tensor, masks: torch.Tensor | None,
                               *,
                               labels: torch.Tensor | None = None, target: int | torch.Tensor | None = None,
                               path: str | os.PathLike | None = None, shown: int = 6, method: str = "auto",
                               process_masks: bool = True, batch_size: int = 64) -> RelevanceComparison:
    """R_bias of every model on ``images`` and, with ``path``, the heatmap grid of the first ``shown`` images.

    Args:
        models: column title -> model, in the grid's order (e.g. the base model, then the corrected one).
        images: ``[N, C, H, W]`` preprocessed images that show the artifact.
        masks: their artifact masks, ``[N, H, W]`` (or ``[N, 1, H, W]``), as ``artifact_relevance`` takes them;
            None for images without masks (concept images): heatmaps only, no R_bias.
        labels / target: the class each image's attribution explains (``attribute``'s arguments; the true
            class by default).
        path: where to write the PNG (atomically); None draws nothing.
        shown: images in the grid (the first ones).
        method / batch_size: passed to ``attribute``.
        process_masks: the authors' mask processing before R_bias (``artifact_relevance``'s argument).
    """
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping of column title -> model.")
    if isinstance(shown, bool) or not isinstance(shown, int) or shown < 1:
        raise ValueError(f"shown must be an integer >= 1, got {shown!r}.")
    if masks is not None and len(masks) != len(images):
        raise ValueError(f"masks has {len(masks)} entries for {len(images)} images; give one mask per image.")
    result = RelevanceComparison(num_images=int(images.shape[0]))
    columns, scores = {}, {}
    for name, model in models.items():
        attributions, used = attribute(model, images, method=method, target=target, labels=labels,
                                       batch_size=batch_size)
        result.attribution_method[name] = used
        column = f"{name} ({used})"
        columns[column] = attributions[:shown]
        if masks is None:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a zero heatmap is NaN and left out of the mean, counted below
            relevance = artifact_relevance(attributions, masks, process_masks=process_masks)
        if relevance["num_zero_heatmaps"]:
            warnings.warn(f"{name}: {relevance['num_zero_heatmaps']} of {len(images)} heatmaps are zero everywhere; "
                          "their R_bias is left out of the mean.", stacklevel=2)
        result.artifact_relevance[name] = relevance["artifact_relevance"]
        result.per_image[name] = relevance["per_image"]
        scores[column] = [0.0 if value != value else value for value in relevance["per_image"][:shown]]
    if path is not None:
        result.heatmaps = save_heatmap_grid(images[:shown], columns, Path(path),
                                            masks=None if masks is None else masks[:shown], scores=scores or None)
    return result
