"""A PNG grid of what models look at: one row per image, the image and then each model's heatmap.

``save_heatmap_grid(images, {"vanilla": a0, "RR-ClArC": a1}, "heatmaps.png", masks=masks)`` draws each
attribution summed over channels, red for relevance for the class, blue against, white for none, each heatmap
scaled by its own largest magnitude (so colours compare regions within a heatmap, not models); the artifact's
mask is outlined. After a good correction the artifact is lit in vanilla's column and dark in the corrected one.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

HEADER_PIXELS = 24
"""The band above the grid that holds the column titles."""
_GAP = 2  # pixels of white around each cell


def _array(name: str, value: object) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().float().cpu().numpy()
    array = np.asarray(value, dtype=np.float64)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values.")
    return array


def _displayable(images: np.ndarray) -> np.ndarray:
    """``[N, C, H, W]`` images, whatever their normalisation, as ``[N, H, W, 3]`` in [0, 1] (each image min-max)."""
    if images.shape[1] == 3:
        shown = images.transpose(0, 2, 3, 1)
    else:
        shown = np.repeat(images.mean(1)[..., None], 3, axis=-1)
    low = shown.min(axis=(1, 2, 3), keepdims=True)
    span = shown.max(axis=(1, 2, 3), keepdims=True) - low
    return np.where(span > 0, (shown - low) / np.where(span > 0, span, 1), 0.5)


def _heatmaps(name: str, attributions: object, count: int, size: tuple[int, int]) -> np.ndarray:
    array = _array(f"attributions_by_model[{name!r}]", attributions)
    if array.ndim == 4:
        array = array.sum(1)
    if array.ndim != 3 or array.shape[0] != count or array.shape[1:] != size:
        raise ValueError(f"attributions_by_model[{name!r}] must be shaped [N, C, H, W] or [N, H, W] matching the "
                         f"images' N={count}, H×W={size[0]}×{size[1]}, got {tuple(np.shape(attributions))}.")
    peak = np.abs(array).max(axis=(1, 2), keepdims=True)
    return array / np.where(peak > 0, peak, 1)


def save_heatmap_grid(images: object, attributions_by_model: Mapping[str, object], path: str | os.PathLike, *,
                      masks: object | None = None, scores: Mapping[str, Sequence[float]] | None = None,
                      cell_pixels: int = 128, title: str | None = None) -> Path:
    """Write the grid as a PNG at ``path`` (atomically: whole or not at all) and return the path.

    Args:
        images: ``[N, C, H, W]`` images (any normalisation: each is shown min-max scaled; grey unless C == 3).
        attributions_by_model: column title -> ``[N, C, H, W]`` attributions or ``[N, H, W]`` heatmaps, in order.
        masks: optional ``[N, H, W]`` (or ``[N, 1, H, W]``) artifact masks, outlined on every cell of their row.
        scores: optional column title -> one number per image (e.g. R_bias), written in the heatmap's corner.
        cell_pixels: the side of one cell; the PNG is ``columns × cell_pixels`` wide and
            ``rows × cell_pixels + HEADER_PIXELS`` high.
        title: optional text prefixed to the header.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pictures = _array("images", images)
    if pictures.ndim != 4 or pictures.shape[0] < 1:
        raise ValueError(f"images must be shaped [N, C, H, W] with N >= 1, got {pictures.shape}.")
    if not isinstance(attributions_by_model, Mapping) or not attributions_by_model:
        raise ValueError("attributions_by_model must be a non-empty mapping of column title -> attributions.")
    if isinstance(cell_pixels, bool) or not isinstance(cell_pixels, int) or cell_pixels < 16:
        raise ValueError(f"cell_pixels must be an integer >= 16, got {cell_pixels!r}.")
    count, size = pictures.shape[0], pictures.shape[2:]
    columns = {str(name): _heatmaps(str(name), value, count, size) for name, value in attributions_by_model.items()}
    outlines = None
    if masks is not None:
        outlines = _array("masks", masks)
        if outlines.ndim == 4 and outlines.shape[1] == 1:
            outlines = outlines[:, 0]
        if outlines.shape != (count, *size):
            raise ValueError(f"masks must be shaped [N, H, W] = [{count}, {size[0]}, {size[1]}], got "
                             f"{tuple(np.shape(masks))}.")
        outlines = (outlines > 0).astype(float)
    for name, values in (scores or {}).items():
        if str(name) not in columns or len(values) != count:
            raise ValueError(f"scores[{name!r}] must name a column of attributions_by_model ({', '.join(columns)}) "
                             f"and hold {count} values, one per image.")

    dpi = 100
    width, height = (len(columns) + 1) * cell_pixels, count * cell_pixels + HEADER_PIXELS
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    shown = _displayable(pictures)
    headers = ["image", *columns]
    for row in range(count):
        for column, header in enumerate(headers):
            left, bottom = column * cell_pixels, height - HEADER_PIXELS - (row + 1) * cell_pixels
            ax = fig.add_axes(((left + _GAP) / width, (bottom + _GAP) / height, (cell_pixels - 2 * _GAP) / width,
                               (cell_pixels - 2 * _GAP) / height))
            if column == 0:
                ax.imshow(shown[row], interpolation="nearest")
            else:
                ax.imshow(columns[header][row], cmap="bwr", vmin=-1, vmax=1, interpolation="nearest")
                if scores and header in scores:
                    ax.text(0.03, 0.97, f"{float(scores[header][row]):.2f}", transform=ax.transAxes, fontsize=7,
                            va="top", ha="left", bbox={"facecolor": "white", "alpha": 0.7, "pad": 1, "lw": 0})
            if outlines is not None and outlines[row].any() and not outlines[row].all():
                ax.contour(outlines[row], levels=[0.5], colors="lime", linewidths=1.0)
            ax.set_axis_off()
    for column, header in enumerate(headers):
        text = f"{title}: {header}" if title and column == 0 else header
        fig.text((column + 0.5) * cell_pixels / width, 1 - HEADER_PIXELS / 2 / height, text, ha="center",
                 va="center", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    plt.close(fig)

    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    temporary = target.with_name(f".{target.name}.tmp")
    temporary.write_bytes(buffer.getvalue())
    os.replace(temporary, target)
    return target
