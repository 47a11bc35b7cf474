"""RRR's penalty as plain functions: the differentiated output, the mask checks and the aggregation of the input
gradient inside the masks.

Two forms. ``l2`` is Ross et al. (2017), eq. 1: ``mean_n Σ_{c,h,w} (M_n[h, w] · ∂/∂x Σ_k log p_k(x_n))²``.
``official_cosine`` is what the RR-ClArC authors ran as their RRR baseline (``RRR_ExpLogSum`` in
github.com/frederikpahde/rrclarc, ``model_training/correction_methods/rrr.py``): the gradient of
``Σ_n mean_k log(softmax + 1e-5)`` summed over channels, its absolute value compared with the mask by cosine
similarity, averaged over the batch (an image without mask counts 0), and no penalty at all for a batch without
any mask.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .rr_clarc import gradient_target_output

RRR_GRADIENT_TARGETS = ("log_prob_sum", "official_logprobs")
RRR_AGGREGATIONS = ("l2", "official_cosine")


def rrr_gradient_target(logits: torch.Tensor, target: str) -> torch.Tensor:
    """The scalar whose input gradient is penalised: ``Σ_n Σ_k log p_k`` (``log_prob_sum``, Ross et al.) or
    ``Σ_n mean_k log(softmax + 1e-5)`` (``official_logprobs``, the RR-ClArC code)."""
    if target == "log_prob_sum":
        return F.log_softmax(logits.float(), dim=1).sum()
    if target == "official_logprobs":
        return gradient_target_output(logits, "official_logprobs")
    raise ValueError(f"gradient_target={target!r} is not valid; choose one of: "
                     f"{', '.join(map(repr, RRR_GRADIENT_TARGETS))}.")


def check_masks(masks: object, images: torch.Tensor, *, column: str = "artifact_mask") -> torch.Tensor:
    """``masks`` (``[N, H, W]`` or ``[N, 1, H, W]``, bool or numbers) as float ``[N, 1, H, W]`` on the images'
    device, after checking that they match ``images`` ``[N, C, H, W]``. Their values (in [0, 1]) are checked by
    ``mask_range``, which waits for the device."""
    if masks is None:
        raise ValueError(f"RRR needs a mask per image in training (1 = the region that must not matter): pass "
                         f"masks=... to the model; DebiasTrainer reads them from the dataset column {column!r} "
                         "(--rrr_mask_column).")
    if not isinstance(masks, torch.Tensor) or masks.is_complex():
        kind = masks.dtype if isinstance(masks, torch.Tensor) else type(masks).__name__
        raise ValueError(f"masks (column {column!r}) must be a bool or numeric torch.Tensor shaped [N, H, W] or "
                         f"[N, 1, H, W], got {kind}.")
    if images.dim() != 4:
        raise ValueError(f"RRR needs images shaped [N, C, H, W], got pixel_values of shape {tuple(images.shape)}.")
    shape = tuple(masks.shape)
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"masks (column {column!r}) must be shaped [N, H, W] or [N, 1, H, W], got {shape}.")
    expected = (images.shape[0], *images.shape[-2:])
    if tuple(masks.shape) != expected:
        raise ValueError(f"masks (column {column!r}) of shape {shape} do not match the images "
                         f"{tuple(images.shape)}: one [H, W] = {tuple(images.shape[-2:])} mask per image is "
                         f"needed, {expected[0]} in this batch (resize the masks with the images).")
    return masks.to(device=images.device, dtype=torch.float32).unsqueeze(1)


def mask_range(masks: torch.Tensor, *, column: str = "artifact_mask") -> tuple[float, float]:
    """The smallest and largest mask value (one wait for the device); outside [0, 1] is an error."""
    low, high = torch.stack([masks.amin(), masks.amax()]).tolist()
    if not (0.0 <= low <= high <= 1.0):  # also false for NaN
        raise ValueError(f"masks (column {column!r}) must hold values in [0, 1] (bool, 0 / 1 or soft weights), got "
                         f"values in [{low:g}, {high:g}]" + (" (divide 0 / 255 masks by 255)." if high > 1 else "."))
    return low, high


def rrr_penalty(input_grad: torch.Tensor, masks: torch.Tensor, *, aggregation: str = "l2") -> torch.Tensor:
    """RRR's penalty from the input gradient ``[N, C, H, W]`` and the masks ``[N, 1, H, W]`` (or ``[N, H, W]``).

    ``l2``: ``mean_n Σ_{c,h,w} (M · g)²``; ``official_cosine``: ``mean_n cos(|Σ_c g_n|, M_n)`` (see the module)."""
    if masks.dim() == 3:
        masks = masks.unsqueeze(1)
    grad = input_grad.float()
    if aggregation == "l2":
        return (masks * grad).pow(2).flatten(1).sum(1).mean()
    if aggregation == "official_cosine":
        heatmap = grad.sum(1).abs().flatten(1)
        return F.cosine_similarity(heatmap, masks.flatten(1), dim=1).mean()
    raise ValueError(f"aggregation={aggregation!r} is not valid; choose one of: "
                     f"{', '.join(map(repr, RRR_AGGREGATIONS))}.")
