"""Artifact relevance R_bias: the share of a heatmap's absolute relevance that falls inside the artifact's mask.

As the RR-ClArC authors compute it: the heatmap is the input attribution summed over channels, and per image
``R_bias = Σ |heatmap · M| / Σ |heatmap|``. Their masks are processed first (``process_masks=True``): binarised at
0.1 of the image's maximum, blurred with a Gaussian (kernel 41, σ = 8 at 224 px; scaled here with the mask's
smaller side), then binarised again at 0.3 of the maximum, which widens the mask by a few pixels so that
relevance on the artifact's border counts as inside. Lower is better after a correction.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch

_REFERENCE_SIDE = 224
_REFERENCE_RADIUS = 20  # kernel 41 at 224 px
_REFERENCE_SIGMA = 8.0


def _as_tensor(name: str, value: object) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a tensor or an array of numbers, got {type(value).__name__} "
                         f"({error}).") from None


def heatmaps_of(attributions: object) -> torch.Tensor:
    """``[N, H, W]`` float64 heatmaps: ``[N, C, H, W]`` attributions summed over channels, or ``[N, H, W]`` as given."""
    attributions = _as_tensor("attributions", attributions)
    if attributions.dtype == torch.bool or attributions.is_complex() or attributions.dim() not in (3, 4) \
            or attributions.shape[0] < 1:
        raise ValueError("attributions must be numbers shaped [N, C, H, W] (attributions) or [N, H, W] (heatmaps) "
                         f"with N >= 1, got shape {tuple(attributions.shape)} and dtype {attributions.dtype}.")
    attributions = attributions.double()
    if not torch.isfinite(attributions).all():
        raise ValueError("attributions contain NaN or infinite values.")
    return attributions.sum(1) if attributions.dim() == 4 else attributions


def _masks_as(masks: object, count: int, size: tuple[int, int]) -> torch.Tensor:
    masks = _as_tensor("masks", masks)
    if masks.is_complex():
        raise ValueError(f"masks must be bool, integer or floating point, got dtype {masks.dtype}.")
    masks = masks.double()
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() == 2:  # one mask for every image (a fixed artifact position)
        masks = masks.expand(count, *masks.shape)
    if masks.dim() != 3 or masks.shape[0] != count or tuple(masks.shape[1:]) != size:
        raise ValueError(f"masks must be shaped [N, H, W] (or [N, 1, H, W], or [H, W] for all images) matching the "
                         f"heatmaps' [{count}, {size[0]}, {size[1]}], got {tuple(masks.shape)}.")
    if not torch.isfinite(masks).all() or (masks < 0).any():
        raise ValueError("masks must be finite and >= 0 (1 or True marks the artifact).")
    return masks


def _gaussian_kernel(kernel_size: int, sigma: float) -> torch.Tensor:
    """torchvision's ``GaussianBlur`` kernel: the normalised density at the integer offsets of the kernel."""
    offsets = torch.linspace(-(kernel_size - 1) / 2, (kernel_size - 1) / 2, kernel_size, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    return kernel / kernel.sum()


def blur_parameters(height: int, width: int) -> tuple[int, float]:
    """The authors' blur (kernel 41, σ = 8 at 224 px) scaled to a ``height`` × ``width`` mask: ``(kernel, sigma)``."""
    scale = min(height, width) / _REFERENCE_SIDE
    return 2 * round(_REFERENCE_RADIUS * scale) + 1, _REFERENCE_SIGMA * scale


def process_artifact_masks(masks: object, *, blur_kernel_size: int | None = None,
                           blur_sigma: float | None = None) -> torch.Tensor:
    """The authors' mask processing, per image: ``M > 0.1 · max M``, Gaussian blur, ``> 0.3 · max``; ``[N, H, W]`` of
    0.0 / 1.0. An all-zero mask stays all zero. The blur defaults to ``blur_parameters`` (reflect padding, as
    torchvision's ``GaussianBlur``)."""
    masks = _as_tensor("masks", masks)
    if masks.dim() != 3:
        raise ValueError(f"masks must be shaped [N, H, W], got {tuple(masks.shape)}.")
    masks = masks.double().clamp(min=0)
    height, width = masks.shape[1:]
    default_size, default_sigma = blur_parameters(height, width)
    kernel_size = default_size if blur_kernel_size is None else blur_kernel_size
    sigma = default_sigma if blur_sigma is None else blur_sigma
    if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"blur_kernel_size must be an odd integer >= 1, got {kernel_size!r}.")
    if not isinstance(sigma, (int, float)) or isinstance(sigma, bool) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"blur_sigma must be a number > 0, got {sigma!r}.")

    binary = _binarise(masks, 0.1)
    if kernel_size > 1:
        pad = kernel_size // 2
        kernel = _gaussian_kernel(kernel_size, float(sigma))
        mode = "reflect" if pad < min(height, width) else "replicate"
        blurred = torch.nn.functional.pad(binary[:, None], (pad, pad, pad, pad), mode=mode)
        blurred = torch.nn.functional.conv2d(blurred, kernel.view(1, 1, 1, -1))
        blurred = torch.nn.functional.conv2d(blurred, kernel.view(1, 1, -1, 1))[:, 0]
    else:
        blurred = binary
    return _binarise(blurred, 0.3)


def _binarise(masks: torch.Tensor, fraction: float) -> torch.Tensor:
    peak = masks.abs().flatten(1).amax(1).view(-1, 1, 1)
    return (masks > fraction * peak).double() * (peak > 0)


def artifact_relevance(attributions: object, masks: object, *, process_masks: bool = True,
                       blur_kernel_size: int | None = None, blur_sigma: float | None = None) -> dict:
    """R_bias per image and its mean.

    Args:
        attributions: ``[N, C, H, W]`` input attributions (summed over channels here) or ``[N, H, W]`` heatmaps.
        masks: the artifact's region, ``[N, H, W]`` (or ``[N, 1, H, W]``, or one ``[H, W]`` for every image), bool,
            integer or float >= 0.
        process_masks: apply the authors' processing (``process_artifact_masks``) first; without it the masks are
            used as weights and must lie in [0, 1].
        blur_kernel_size / blur_sigma: override the processing's blur (default: ``blur_parameters``).

    Returns:
        ``{"artifact_relevance": mean, "per_image": [R_bias per image], "num_zero_heatmaps": k}``. An image whose
        heatmap is zero everywhere has no relevance to share out: its R_bias is NaN (the authors' code, which adds
        1e-10 to the denominator, would report 0 and so flatter the model), it is left out of the mean, and a
        warning counts such images; the mean is NaN only if every heatmap is zero. An image whose mask is empty
        has R_bias 0.
    """
    heatmaps = heatmaps_of(attributions)
    masks = _masks_as(masks, heatmaps.shape[0], tuple(heatmaps.shape[1:]))
    if process_masks:
        masks = process_artifact_masks(masks, blur_kernel_size=blur_kernel_size, blur_sigma=blur_sigma)
    elif (masks > 1).any():
        raise ValueError("With process_masks=False the masks are weights and must lie in [0, 1]; got values up to "
                         f"{float(masks.max())}. Pass binary masks, or process_masks=True to binarise them.")
    total = heatmaps.abs().flatten(1).sum(1)
    inside = (heatmaps * masks).abs().flatten(1).sum(1)
    zero = total == 0
    per_image = torch.where(zero, torch.full_like(total, float("nan")), inside / total.clamp(min=1e-300))
    num_zero = int(zero.sum())
    if num_zero:
        warnings.warn(f"{num_zero} of {len(total)} heatmaps are zero everywhere; their artifact relevance is NaN and "
                      "left out of the mean.", stacklevel=2)
    mean = float("nan") if num_zero == len(total) else float(per_image[~zero].mean())
    return {"artifact_relevance": mean, "per_image": per_image.tolist(), "num_zero_heatmaps": num_zero}
