"""Pool a layer's activation to one value per channel, the space CAVs live in."""

from __future__ import annotations

import torch

from .._validation import check_choice

POOLINGS = ("max", "mean", "cls")
"""``max`` / ``mean``: over the spatial positions of a conv map ``[N, C, H, W]`` or the tokens of ``[N, T, C]``;
``cls``: the first token of ``[N, T, C]``. Activations that are already ``[N, C]`` are used as they are."""


def pool_activation(activation: torch.Tensor, pooling: str = "max") -> torch.Tensor:
    """``[N, C, H, W]`` (channels first), ``[N, T, C]`` (tokens) or ``[N, C]`` to ``[N, C]``."""
    check_choice("pooling", pooling, POOLINGS)
    if activation.dim() == 2:
        return activation
    if activation.dim() == 4:
        if pooling == "cls":
            raise ValueError("pooling='cls' needs a token activation [N, T, C]; this layer gives a conv map "
                             f"{tuple(activation.shape)}: use 'max' or 'mean'.")
        flat = activation.flatten(2)
        return flat.amax(dim=2) if pooling == "max" else flat.mean(dim=2)
    if activation.dim() == 3:
        if pooling == "cls":
            return activation[:, 0]
        return activation.amax(dim=1) if pooling == "max" else activation.mean(dim=1)
    raise ValueError(f"Cannot pool an activation shaped {tuple(activation.shape)}: expected [N, C, H, W], "
                     "[N, T, C] or [N, C].")


def shift_along(activation: torch.Tensor, direction: torch.Tensor, amount: torch.Tensor) -> torch.Tensor:
    """Add ``amount[n] * direction`` to every position of sample ``n`` (``direction`` is ``[C]``).

    A shift that is constant over positions moves the max- and the mean-pooled activation by exactly the same
    vector, which is what makes ClArC's projection exact for both poolings.
    """
    direction = direction.to(device=activation.device, dtype=activation.dtype)
    amount = amount.to(dtype=activation.dtype)
    if activation.dim() == 4:
        return activation + amount[:, None, None, None] * direction[None, :, None, None]
    if activation.dim() == 3:
        return activation + amount[:, None, None] * direction[None, None, :]
    if activation.dim() == 2:
        return activation + amount[:, None] * direction[None, :]
    raise ValueError(f"Cannot shift an activation shaped {tuple(activation.shape)}.")
