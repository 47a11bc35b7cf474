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

Both terms are one autograd node (``_EnDTerms``) with a closed-form backward: the penalty is a function of a
few per-group vector sums, so its gradient is a handful of passes over ``[B, D]``, where autograd through the
same ops records some 200 small nodes whose overhead, not arithmetic, would dominate (``benchmarks/end_speed.py``).

Both are exactly 0 when the batch has no eligible pair. Everything runs in float32 (or float64 when the input
is float64), with autocast disabled, so a bf16/fp16 forward does not degrade the penalty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .._validation import check_choice, check_features, check_label_tensor, check_non_negative

PAIRINGS = ("all", "reference")
"""``all``: every unordered same-target, different-bias pair (the paper's definition, order-independent).
``reference``: the official code's subset, pairs ``i > j`` with ``b_i < b_j`` (depends on batch order)."""

_EPS = 1e-12  # as F.normalize


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

    Raises ``ValueError`` for non-finite features on the CPU. On an accelerator the check would make the host
    wait for the device in every step, so there non-finite features give NaN terms (as PyTorch's losses do);
    ``DebiasTrainer`` raises when it logs them. ``pairing="reference"`` reads the largest target's size back
    once per call (a host wait); the default pairing never does.
    """
    check_choice("pairing", pairing, PAIRINGS)
    flat = check_features("features", features, check_finite=False)  # the result is checked instead
    batch_size = flat.shape[0]
    targets = check_label_tensor("targets", targets, batch_size).to(flat.device)
    bias_labels = check_label_tensor("bias_labels", bias_labels, batch_size).to(flat.device)
    if flat.dtype != torch.float64:
        flat = flat.float()
    groups = _Groups.of(targets, bias_labels)
    reference = _ReferencePairs.of(groups.target_ids, bias_labels) if pairing == "reference" else None
    with torch.autocast(device_type=flat.device.type, enabled=False):
        r_ortho, r_par = _EnDTerms.apply(flat, groups, reference)
    # Non-finite features make both terms non-finite, so one check on the result suffices. On an accelerator
    # reading it would make the host wait for the device in every step (measured on a GPU-bound resnet18 step:
    # +5.9 % with the wait, even deferred to the backward, +2.0 % without), so there the terms carry the NaN,
    # as PyTorch's own losses do, and DebiasTrainer raises when it logs them.
    if _host_reads_are_free(flat.device) and not torch.isfinite(r_ortho + r_par):
        raise ValueError("features contains NaN or infinite values; the penalty needs finite features.")
    return r_ortho, r_par


@dataclass
class _Groups:
    """Each sample's (target, bias) cell, and each cell's bias and target group, as dense ids.

    Samples are summed into cells once; bias and target groups are then sums of cells."""

    target_ids: torch.Tensor  # [B]
    cell_of: torch.Tensor  # [B]
    cell_bias: torch.Tensor  # [n_cells]; padding cells: group 0, empty
    cell_target: torch.Tensor  # [n_cells]
    n_cells: int
    n_bias: int
    n_targets: int

    @classmethod
    def of(cls, targets: torch.Tensor, bias_labels: torch.Tensor) -> _Groups:
        bias_ids, n_bias = _dense_ids(bias_labels)
        target_ids, n_targets = _dense_ids(targets)
        cell_of, n_cells = _dense_ids(target_ids * targets.shape[0] + bias_ids)
        empty = torch.zeros(n_cells, dtype=torch.long, device=targets.device)
        return cls(target_ids, cell_of, empty.scatter(0, cell_of, bias_ids), empty.scatter(0, cell_of, target_ids),
                   n_cells, n_bias, n_targets)


@dataclass
class _ReferencePairs:
    """The official code's pairs ``i > j`` (batch order), same target, ``b_i < b_j``, laid out for one batched
    product: such pairs only exist inside a target, so each target's samples (in batch order) fill one block,
    padded to the largest target, unless padding would make that costlier than one ``B x B`` block with a
    same-target condition."""

    slot: torch.Tensor  # [B], each sample's row in the flattened blocks
    symmetric_mask: torch.Tensor  # [n_blocks, n_max, n_max] bool, every pair in both triangles
    n_pairs: torch.Tensor

    @classmethod
    def of(cls, target_ids: torch.Tensor, bias_labels: torch.Tensor) -> _ReferencePairs:
        batch_size, device = target_ids.shape[0], target_ids.device
        counts = torch.bincount(target_ids)
        n_max = int(counts.max())
        same_block = None
        if counts.numel() * n_max * n_max >= batch_size * batch_size:
            n_blocks, n_max, slot = 1, batch_size, torch.arange(batch_size, device=device)
            same_block = (target_ids[:, None] == target_ids[None, :])[None]
        else:
            # A sample's position inside its target, in batch order: a running count per target.
            n_blocks, one_hot = counts.numel(), F.one_hot(target_ids, counts.numel())
            slot = target_ids * n_max + (one_hot.cumsum(0) * one_hot).sum(1) - 1
        # Padding slots get the largest bias value: as rows they are never smaller than a column, and as
        # columns they sit after every real row of their block (so never "earlier"), hence never paired.
        padding = torch.iinfo(bias_labels.dtype).max
        bias = bias_labels.new_full((n_blocks * n_max,), padding).scatter_(0, slot, bias_labels)
        bias = bias.view(n_blocks, n_max)
        # Row r later in the batch than column c, with a smaller bias value.
        later = torch.ones(n_max, n_max, dtype=torch.bool, device=device).tril(-1)
        mask = later & (bias[:, :, None] < bias[:, None, :])
        if same_block is not None:
            mask &= same_block
        return cls(slot, mask | mask.transpose(1, 2), mask.sum())


class _EnDTerms(torch.autograd.Function):
    """``(r_ortho, r_par)`` from the flat features, with the gradient in closed form.

    With ``u`` the unit rows and ``S_g`` the sum of ``u`` over a group ``g`` of ``n_g`` samples:
    - the sum of ``<u_i, u_j>`` over a bias group's pairs ``i > j`` is ``sigma_b = (|S_b|^2 - n_b) / 2`` (no
      B x B Gram matrix), with gradient ``S_b`` for each member;
    - the sum over same-target, different-bias pairs is ``sum_c <S_c, S_t(c) - S_c> / 2`` over the (target,
      bias) cells ``c``, with gradient ``S_t(c) - S_c`` for each member of ``c`` (exactly 0 for a target
      with one cell);
    - the reference pairing's sum is ``v^T M v / 2`` per target block, with gradient ``M v``.
    The gradient with respect to the raw rows is then ``(g - u <u, g>) / |x|``."""

    @staticmethod
    def forward(ctx, flat: torch.Tensor, groups: _Groups,
                reference: _ReferencePairs | None) -> tuple[torch.Tensor, torch.Tensor]:
        norms = torch.linalg.vector_norm(flat, dim=1, keepdim=True)
        inverse = norms.clamp_min(_EPS).reciprocal()  # a [B, 1] reciprocal: cheaper than a [B, D] division
        unit = flat * inverse
        squared_norms = (norms * inverse).square()  # 1, or less for a row under _EPS
        # Per cell: the vector sum, and [sum of squared norms, number of samples].
        cells = _sum_by(unit, groups.cell_of, groups.n_cells)
        cell_stats = _sum_by(torch.cat([squared_norms, torch.ones_like(squared_norms)], dim=1), groups.cell_of,
                             groups.n_cells)

        bias = _sum_by(cells, groups.cell_bias, groups.n_bias)
        squared_sums, counts = _sum_by(cell_stats, groups.cell_bias, groups.n_bias).unbind(1)
        pair_sums = torch.where(counts > 1, (torch.linalg.vecdot(bias, bias) - squared_sums) * 0.5, 0.0)
        n_same = (counts * (counts - 1)).sum().mul_(0.5).clamp_min_(1)
        r_ortho = pair_sums.abs().sum() / n_same
        ortho_direction = bias * (pair_sums.sign() / n_same)[:, None]  # d r_ortho / d S_b

        if reference is None:
            cell_counts = cell_stats[:, 1]
            others = _sum_by(cells, groups.cell_target, groups.n_targets)[groups.cell_target] - cells
            other_counts = (_sum_by(cell_counts, groups.cell_target, groups.n_targets)[groups.cell_target]
                            - cell_counts)
            gram_sum = torch.linalg.vecdot(cells, others).sum() * 0.5
            n_par = (cell_counts * other_counts).sum() * 0.5
            mixed = None
        else:
            n_blocks, n_max = reference.symmetric_mask.shape[:2]
            blocks = unit.new_zeros(n_blocks * n_max, unit.shape[1]).index_copy_(0, reference.slot, unit)
            blocks = blocks.view(n_blocks, n_max, -1)
            mixed = torch.bmm(reference.symmetric_mask.to(unit.dtype), blocks)
            gram_sum, n_par = torch.linalg.vecdot(blocks, mixed).sum() * 0.5, reference.n_pairs.to(unit.dtype)
            others = None
        r_par = (n_par - gram_sum) * 0.5 / n_par.clamp_min(1)

        ctx.groups, ctx.reference = groups, reference
        ctx.save_for_backward(unit, inverse, norms >= _EPS, ortho_direction, others, n_par, mixed)
        return r_ortho, r_par

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ortho: torch.Tensor, grad_par: torch.Tensor):
        unit, inverse, unclamped, ortho_direction, others, n_par, mixed = ctx.saved_tensors
        groups, reference = ctx.groups, ctx.reference
        par_scale = grad_par * -0.5 / n_par.clamp_min(1)  # r_par = (n_par - gram_sum) / (2 n_par)
        grad_cells = ortho_direction.index_select(0, groups.cell_bias) * grad_ortho
        if others is not None:
            grad_cells.addcmul_(others, par_scale)
        grad_unit = grad_cells.index_select(0, groups.cell_of)
        if mixed is not None:
            grad_unit.addcmul_(mixed.view(-1, mixed.shape[-1]).index_select(0, reference.slot), par_scale)
        radial = torch.linalg.vecdot(grad_unit, unit)[:, None] * unclamped  # a clamped row is only scaled
        return grad_unit.addcmul_(unit, radial, value=-1).mul_(inverse), None, None


def _sum_by(values: torch.Tensor, group_of: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Sums of ``values`` rows per group (``group_of`` gives each row's group)."""
    return values.new_zeros(n_groups, *values.shape[1:]).index_add_(0, group_of, values)


def _dense_ids(labels: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Integer labels of any values as dense ids ``0..K-1`` (in value order), and a size for per-group buffers.

    Unlike ``torch.unique`` this never makes a GPU wait for the host: off the CPU the size is the batch size
    (ids past ``K`` are empty groups); on the CPU, where reading ``K`` costs nothing, it is ``K``."""
    if _host_reads_are_free(labels.device):
        values, ids = torch.unique(labels, sorted=True, return_inverse=True)
        return ids, values.numel()
    sorted_labels, order = torch.sort(labels)
    starts = torch.ones_like(sorted_labels, dtype=torch.long)
    starts[1:] = (sorted_labels[1:] != sorted_labels[:-1]).long()
    sorted_ids = torch.cumsum(starts, 0) - 1
    return torch.empty_like(sorted_ids).scatter_(0, order, sorted_ids), labels.shape[0]


def _host_reads_are_free(device: torch.device) -> bool:
    """Whether reading a value back to Python costs nothing (the CPU) or makes the host wait for the device.

    Where it costs, group buffers are sized by the batch and the terms are not checked for finiteness."""
    return device.type == "cpu"


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
