"""Thin distributed primitives (torch.distributed) for penalties that are functions of the whole batch.

``gather_with_grad`` concatenates a tensor from every process *and carries gradients back*: its backward sums
the incoming gradients over processes and returns each process its own slice. With DDP averaging parameter
gradients, a batch-wide penalty computed on the gathered tensor then has exactly the gradient of the
single-process penalty on the concatenated batch (Accelerate's ``gather`` has no backward). Batches may differ
in size between processes; they are padded for the collective and trimmed again.
"""

from __future__ import annotations

import hashlib

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    """True when ``torch.distributed`` is initialised with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _sizes(tensor: torch.Tensor) -> list[int]:
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    return [int(s) for s in sizes]


def _gather_padded(tensor: torch.Tensor, sizes: list[int]) -> torch.Tensor:
    longest = max(sizes)
    padded = tensor
    if tensor.shape[0] < longest:
        padding = tensor.new_zeros((longest - tensor.shape[0], *tensor.shape[1:]))
        padded = torch.cat([tensor, padding])
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded.contiguous())
    return torch.cat([part[:size] for part, size in zip(parts, sizes)])


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        sizes = _sizes(tensor)
        rank = dist.get_rank()
        ctx.slice = (sum(sizes[:rank]), sum(sizes[:rank + 1]))
        return _gather_padded(tensor, sizes)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start, stop = ctx.slice
        return grad[start:stop]


def gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` from every process, concatenated along dim 0 in rank order, differentiable. Every process
    must call it (it is a collective); a no-op without distributed training."""
    if not is_distributed():
        return tensor
    return _GatherWithGrad.apply(tensor)


def gather(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` from every process, concatenated along dim 0, without gradients (labels and the like).
    Integer tensors are gathered as int64, so processes whose labels came in different integer dtypes agree
    (a collective over mismatched dtypes aborts the process group)."""
    if not tensor.is_floating_point() and not tensor.is_complex():
        tensor = tensor.long()
    if not is_distributed():
        return tensor
    return _gather_padded(tensor.detach(), _sizes(tensor))


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over processes in place (no-op without distributed training) and return it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum of ``tensor`` over processes, in place (no-op without distributed training)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def check_same_on_every_process(what: str, payload: bytes) -> None:
    """Raise ``ValueError`` on every process unless ``payload`` (e.g. a config's JSON) is identical everywhere,
    so that processes that disagree fail at start-up instead of hanging in a collective later."""
    if not is_distributed():
        return
    digest = hashlib.sha256(payload).hexdigest()
    digests: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(digests, digest)
    if len(set(digests)) > 1:
        groups: dict[str, list[int]] = {}
        for rank, value in enumerate(digests):
            groups.setdefault(value, []).append(rank)
        raise ValueError(f"The processes disagree on the {what}: ranks {list(groups.values())} hold different "
                         "values. Give every process the same debias configuration and CAV.")
