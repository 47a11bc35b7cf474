"""Boundary checks shared by the functional API, the configs and the model wrapper.

Every check raises ``ValueError`` naming the bad value and what was expected, so that a wrong input fails
at the call that received it instead of deep inside torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch


def check_choice(name: str, value: object, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``; raise a ``ValueError`` listing them otherwise."""
    if value not in choices:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(map(repr, choices))}.")
    return value  # type: ignore[return-value]


def check_non_negative(name: str, value: object) -> float:
    """Return ``value`` as a float if it is a finite number >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number >= 0, got {value!r} ({type(value).__name__}).")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")
    return float(value)


def check_label_tensor(name: str, labels: object, batch_size: int) -> torch.Tensor:
    """Return ``labels`` if it is a 1-D integer tensor with ``batch_size`` entries."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of integer class ids, got {type(labels).__name__}.")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise ValueError(
            f"{name} must hold integer class ids (torch.long or another integer dtype), got dtype {labels.dtype}."
        )
    if labels.dim() != 1:
        raise ValueError(f"{name} must be 1-D with one id per sample, got shape {tuple(labels.shape)}.")
    if labels.shape[0] != batch_size:
        raise ValueError(
            f"{name} has {labels.shape[0]} entries but the batch has {batch_size} samples; they must agree."
        )
    return labels


def as_class_ids(name: str, labels: object, batch_size: int) -> torch.Tensor:
    """``check_label_tensor``, then the ids as ``torch.long`` (a no-op for int64), so that every loss, gather
    and process sees one dtype whatever integer dtype the data had (int8 ... int64, uint8)."""
    return check_label_tensor(name, labels, batch_size).long()


def check_batch_size(name: str, batch_size: int) -> int:
    """Return ``batch_size`` if it is at least 1; an empty batch has no loss and no penalty."""
    if batch_size < 1:
        raise ValueError(f"The batch is empty: {name} has 0 samples. Every batch needs at least one sample "
                         "(check the dataset split, the sampler and dataloader_drop_last).")
    return batch_size


def check_features(name: str, features: object, *, check_finite: bool = True) -> torch.Tensor:
    """Return ``features`` flattened to ``[B, D]`` if it is a finite floating tensor with a batch dimension.

    ``check_finite=False`` skips the finiteness test (it waits for the device), for callers that check their
    result instead."""
    if not isinstance(features, torch.Tensor) or not features.is_floating_point():
        kind = features.dtype if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"{name} must be a floating-point torch.Tensor shaped [B, ...], got {kind}.")
    if features.dim() < 2 or features.shape[0] < 1:
        raise ValueError(f"{name} must be shaped [B, ...] with B >= 1 and a feature axis, got {tuple(features.shape)}.")
    # One reduction first: a finite sum proves every entry finite; only otherwise look element by element.
    if check_finite and not torch.isfinite(features.sum()) and not torch.isfinite(features).all():
        raise ValueError(f"{name} contains NaN or infinite values; the penalty needs finite features.")
    return features.reshape(features.shape[0], -1)
