"""EnD's two Gram-matrix regularisers as pure, vectorised functions.

Reference: Tartaglione et al., "EnD: Entangling and Disentangling deep representations for bias correction",
CVPR 2021. ``features`` are flattened and L2-normalised; ``G_ij = <f_i, f_j>`` clamped to [-1, 1]; only pairs
``i > j`` are used.

- ``r_ortho`` (disentangle): ``sum_b |sum_{i>j, b_i=b_j=b} G_ij| / #same-bias pairs``.
- ``r_par`` (entangle): mean of ``(1 - G_ij) / 2`` over same-target, different-bias pairs ``i > j``.

Both are exactly 0 when the batch has no eligible pair. Everything runs in float32 (or float64 when the input
is float64), with autocast disabled, so a bf16/fp16 forward does not degrade the penalty.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._validation import check_choice, check_features, check_label_tensor, check_non_negative

PAIRINGS = ("all", "reference")
"""``all``: every unordered same-target, different-bias pair (the paper's definition, order-independent).
``reference``: the official code's subset, pairs ``i > j`` with ``b_i < b_j`` (depends on batch order)."""


def end_terms(
    features: torch.Tensor,
    targets: torch.Tensor,
    bias_labels: torch.Tensor,
    *,
    pairing: str = "all",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return EnD's ``(r_ortho, r_par)`` for one batch as two 0-dim float tensors.

    Args:
        features: ``[B, ...]`` activations at the bottleneck; flattened and L2-normalised here.
        targets: ``[B]`` integer target labels (any integer values).
        bias_labels: ``[B]`` integer bias labels (any integer values).
        pairing: which same-target, different-bias pairs enter ``r_par``; see ``PAIRINGS``.
    """
    check_choice("pairing", pairing, PAIRINGS)
    flat = check_features("features", features)
    batch_size = flat.shape[0]
    targets = check_label_tensor("targets", targets, batch_size).to(flat.device)
    bias_labels = check_label_tensor("bias_labels", bias_labels, batch_size).to(flat.device)
    if flat.dtype != torch.float64:
        flat = flat.float()

    with torch.autocast(device_type=flat.device.type, enabled=False):
        unit = F.normalize(flat, dim=1)
        gram = (unit @ unit.T).clamp(-1.0, 1.0)

    lower = torch.ones(batch_size, batch_size, dtype=torch.bool, device=flat.device).tril(-1)
    same_bias = bias_labels[:, None] == bias_labels[None, :]

    # r_ortho: |sum| per bias group. Row i's same-bias sum over j < i, scattered to i's group.
    ortho_mask = same_bias & lower
    groups, group_of = torch.unique(bias_labels, return_inverse=True)
    row_sums = (gram * ortho_mask).sum(dim=1)
    group_sums = torch.zeros(groups.numel(), dtype=gram.dtype, device=gram.device)
    group_sums = group_sums.index_add(0, group_of, row_sums)
    r_ortho = group_sums.abs().sum() / ortho_mask.sum().clamp_min(1)

    # r_par: mean of (1 - G) / 2 over same-target pairs whose bias differs (or is smaller, for "reference").
    if pairing == "all":
        bias_rule = ~same_bias
    else:
        bias_rule = bias_labels[:, None] < bias_labels[None, :]
    par_mask = (targets[:, None] == targets[None, :]) & bias_rule & lower
    r_par = ((1.0 - gram) * 0.5 * par_mask).sum() / par_mask.sum().clamp_min(1)
    return r_ortho, r_par


def end_penalty(
    features: torch.Tensor,
    targets: torch.Tensor,
    bias_labels: torch.Tensor,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    pairing: str = "all",
) -> torch.Tensor:
    """Return ``alpha * r_ortho + beta * r_par`` (see ``end_terms``); ``alpha`` and ``beta`` must be >= 0."""
    alpha = check_non_negative("alpha", alpha)
    beta = check_non_negative("beta", beta)
    r_ortho, r_par = end_terms(features, targets, bias_labels, pairing=pairing)
    return alpha * r_ortho + beta * r_par
