"""EnD's two Gram-matrix regularisers as pure, vectorised functions.

Reference: Tartaglione et al., "EnD: Entangling and Disentangling deep representations for bias correction",
CVPR 2021. ``features`` are flattened and L2-normalised; ``G_ij = <f_i, f_j>`` clamped to [-1, 1]; only pairs
``i > j`` are used.

- ``r_ortho`` (disentangle): ``sum_b |sum_{i>j, b_i=b_j=b} G_ij| / #same-bias pairs``.
- ``r_par`` (entangle): mean of ``(1 - G_ij) / 2`` over same-target, different-bias pairs ``i > j``.

Group sums of G are computed from per-group sums of the unit features, so the default pairing never builds
the B x B Gram matrix (O(B * D)); ``pairing="reference"`` depends on batch order and needs the Gram entries
inside each target, taken per target block.
The official code clamps G to [-1, 1]; for unit vectors that only trims rounding error, so it is omitted.

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
    flat = check_features("features", features, check_finite=False)  # checked once, on the result
    batch_size = flat.shape[0]
    targets = check_label_tensor("targets", targets, batch_size).to(flat.device)
    bias_labels = check_label_tensor("bias_labels", bias_labels, batch_size).to(flat.device)
    if flat.dtype != torch.float64:
        flat = flat.float()

    with torch.autocast(device_type=flat.device.type, enabled=False):
        norms = flat.norm(dim=1, keepdim=True)
        unit = flat * norms.clamp_min(_EPS).reciprocal()  # a [B, 1] reciprocal: cheaper than a [B, D] division
        squared_norms = (norms / norms.clamp_min(_EPS)).square().squeeze(1).detach()  # 1, or 0 for a zero row

        # Sums of G_ij over the pairs i > j inside a group need no B x B Gram matrix:
        # sum_{i>j in g} <u_i, u_j> = (|sum_{i in g} u_i|^2 - sum_{i in g} |u_i|^2) / 2.
        # One pass sums the unit vectors per (target, bias) cell; bias and target groups are sums of cells.
        bias_ids, n_bias = _dense_ids(bias_labels)
        target_ids, n_targets = _dense_ids(targets)
        cell_of, n_cells = _dense_ids(target_ids * batch_size + bias_ids)
        cell_vectors = unit.new_zeros(n_cells, unit.shape[1]).index_add(0, cell_of, unit)
        cell_norms = unit.new_zeros(n_cells).index_add(0, cell_of, squared_norms)
        cell_counts = _zeros_long(n_cells, unit).index_add(0, cell_of, torch.ones_like(cell_of))
        cell_bias = _zeros_long(n_cells, unit).scatter_(0, cell_of, bias_ids)  # (padding cells: group 0, empty)
        cell_target = _zeros_long(n_cells, unit).scatter_(0, cell_of, target_ids)

        bias_sums, n_same = _pair_sums(cell_vectors, cell_norms, cell_counts, cell_bias, n_bias)
        r_ortho = bias_sums.abs().sum() / n_same.clamp_min(1)

        if pairing == "all":
            # same-target pairs minus same-(target, bias) pairs = same target, different bias.
            target_sums, n_target = _pair_sums(cell_vectors, cell_norms, cell_counts, cell_target, n_targets)
            cell_sums, n_cell = _pair_sums(cell_vectors, cell_norms, cell_counts, None, n_cells)
            gram_sum, n_par = target_sums.sum() - cell_sums.sum(), n_target - n_cell
        else:
            gram_sum, n_par = _reference_pair_sum(unit, target_ids, bias_labels)
        r_par = (n_par - gram_sum) * 0.5 / n_par.clamp_min(1)
    # One check at the end (a single wait for the device): non-finite features make both terms non-finite.
    if not torch.isfinite(r_ortho + r_par):
        raise ValueError("features contains NaN or infinite values; the penalty needs finite features.")
    return r_ortho, r_par


_EPS = 1e-12  # as F.normalize


def _reference_pair_sum(unit: torch.Tensor, target_ids: torch.Tensor,
                        bias_labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum of ``<u_i, u_j>`` and count over the official code's pairs: ``i > j`` (batch order), same target,
    ``b_i < b_j``. Such pairs only exist inside a target, so the Gram products are taken per target block
    (samples stable-sorted by target, padded), unless padding would make that costlier than one B x B product."""
    batch_size = unit.shape[0]
    counts = torch.bincount(target_ids)
    n_max = int(counts.max())
    if counts.numel() * n_max * n_max >= batch_size * batch_size:
        lower = torch.ones(batch_size, batch_size, dtype=torch.bool, device=unit.device).tril(-1)
        same_target = target_ids[:, None] == target_ids[None, :]
        mask = same_target & (bias_labels[:, None] < bias_labels[None, :]) & lower
        return (unit * (mask.to(unit.dtype) @ unit)).sum(), mask.sum()
    order = torch.argsort(target_ids, stable=True)  # keeps batch order inside each target
    block_of = target_ids[order]
    position = torch.arange(batch_size, device=unit.device) - (torch.cumsum(counts, 0) - counts)[block_of]
    index = (block_of, position)
    blocks = unit.new_zeros(counts.numel(), n_max, unit.shape[1]).index_put(index, unit[order])
    bias = bias_labels.new_zeros(counts.numel(), n_max).index_put(index, bias_labels[order])
    valid = torch.zeros(counts.numel(), n_max, dtype=torch.bool, device=unit.device).index_put(
        index, torch.ones_like(block_of, dtype=torch.bool))
    lower = torch.ones(n_max, n_max, dtype=torch.bool, device=unit.device).tril(-1)
    mask = lower & (bias[:, :, None] < bias[:, None, :]) & valid[:, :, None] & valid[:, None, :]
    gram = torch.bmm(blocks, blocks.transpose(1, 2))
    return (gram * mask).sum(), mask.sum()


def _dense_ids(labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Integer labels of any values as dense ids ``0..K-1`` (in value order), and a size for per-group buffers.

    Unlike ``torch.unique`` this never makes a GPU wait for the host: off the CPU the size is the batch size
    (ids past ``K`` are empty groups); on the CPU, where reading ``K`` costs nothing, it is ``K``."""
    sorted_labels, order = torch.sort(labels)
    starts = torch.ones_like(sorted_labels, dtype=torch.long)
    starts[1:] = (sorted_labels[1:] != sorted_labels[:-1]).long()
    sorted_ids = torch.cumsum(starts, 0) - 1
    size = labels.shape[0] if _pad_group_buffers(labels.device) else int(sorted_ids[-1]) + 1
    return torch.empty_like(sorted_ids).scatter_(0, order, sorted_ids), size


def _pad_group_buffers(device: torch.device) -> bool:
    """Size group buffers by the batch (no device wait) everywhere but on the CPU."""
    return device.type != "cpu"


def _zeros_long(size: int, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(size, dtype=torch.long, device=like.device)


def _pair_sums(cell_vectors: torch.Tensor, cell_norms: torch.Tensor, cell_counts: torch.Tensor,
               group_of_cell: torch.Tensor | None, n_groups: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per group of cells: the sum of ``<u_i, u_j>`` over the group's sample pairs ``i > j``, and the number
    of such pairs over all groups. ``None`` groups every cell on its own."""
    if group_of_cell is not None:
        cell_vectors = cell_vectors.new_zeros(n_groups, cell_vectors.shape[1]).index_add(0, group_of_cell,
                                                                                        cell_vectors)
        cell_norms = cell_norms.new_zeros(n_groups).index_add(0, group_of_cell, cell_norms)
        cell_counts = cell_counts.new_zeros(n_groups).index_add(0, group_of_cell, cell_counts)
    sums = ((cell_vectors * cell_vectors).sum(dim=1) - cell_norms) * 0.5
    sums = torch.where(cell_counts > 1, sums, torch.zeros_like(sums))  # a lone sample has no pair: exactly 0
    return sums, (cell_counts * (cell_counts - 1) // 2).sum()


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
