"""Pool a layer's activation to one value per channel, the space CAVs live in, and find out which pooling the
model itself applies to a layer (``auto_pooling``)."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from .._validation import check_choice
from ..functional.rr_clarc import channels_last
from ..outputs import logits_of

POOLINGS = ("max", "mean", "cls", "none")
"""``max`` / ``mean``: over the spatial positions of a conv map ``[N, C, H, W]`` or the tokens of ``[N, T, C]``;
``cls``: the first token of ``[N, T, C]``; ``none``: no pooling, every position keeps its own channels (a *spatial*
CAV, ``[N, P * C]`` with ``P`` positions, channels last: a direction that also says *where*, for an artifact at a
fixed place such as a timestamp in a corner). Activations that are already ``[N, C]`` are used as they are."""

SPATIAL = "none"
"""The pooling of a spatial CAV."""

AUTO = "auto"
POOLING_CHOICES = (AUTO, *POOLINGS)
"""What ``compute_cav`` and ``hf-debias cav`` accept: a pooling, or ``auto`` (``auto_pooling`` chooses)."""

def spatial_shape_of(activation: torch.Tensor) -> list[int]:
    """The positions of one sample's activation: ``[H, W]`` of ``[N, C, H, W]``, ``[T]`` of ``[N, T, C]``,
    ``[]`` for ``[N, C]``."""
    return list(activation.shape[2:]) if activation.dim() == 4 else list(activation.shape[1:-1])


PROBE_IMAGES = 8
"""How many images of the first batch ``auto_pooling`` runs through the whole model."""


class PoolingChoice(NamedTuple):
    """The pooling ``auto_pooling`` chose and why, in one line."""

    pooling: str
    reason: str


def pool_activation(activation: torch.Tensor, pooling: str = "max") -> torch.Tensor:
    """``[N, C, H, W]`` (channels first), ``[N, T, C]`` (tokens) or ``[N, C]`` to ``[N, C]`` (``[N, P * C]``,
    positions in order and channels last, for ``pooling="none"``)."""
    check_choice("pooling", pooling, POOLINGS)
    if activation.dim() == 2:
        return activation
    if pooling == SPATIAL:
        return channels_last(activation, "activation").flatten(1)
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
    """Add ``amount[n] * direction`` to every position of sample ``n`` (``direction`` is ``[C]``), or to the whole
    map for a spatial direction ``[P, C]`` (positions in order, channels last, as ``pool_activation(..., "none")``).

    A shift that is constant over positions moves the max- and the mean-pooled activation by exactly the same
    vector, which is what makes ClArC's projection exact for both poolings; a spatial shift moves the unpooled
    activation, so its projection on the (unit) spatial direction changes by exactly ``amount``.
    """
    direction = direction.to(device=activation.device, dtype=activation.dtype)
    amount = amount.to(dtype=activation.dtype)
    if direction.dim() == 2:
        layout = channels_last(activation, "activation")
        if tuple(layout.shape[1:]) != tuple(direction.shape):
            raise ValueError(f"A spatial direction {tuple(direction.shape)} does not fit an activation with "
                             f"{tuple(layout.shape[1:])} (positions, channels).")
        if activation.dim() == 4:  # [P, C] -> [C, H, W]
            direction = direction.T.reshape(activation.shape[1:])
        elif activation.dim() == 2:
            direction = direction[0]
        return activation + amount.view(-1, *([1] * (activation.dim() - 1))) * direction[None]
    if activation.dim() == 4:
        return activation + amount[:, None, None, None] * direction[None, :, None, None]
    if activation.dim() == 3:
        return activation + amount[:, None, None] * direction[None, None, :]
    if activation.dim() == 2:
        return activation + amount[:, None] * direction[None, :]
    raise ValueError(f"Cannot shift an activation shaped {tuple(activation.shape)}.")


def pooling_from_gradient(grad: torch.Tensor, layer: str = "the layer") -> PoolingChoice:
    """Which pooling the rest of the model applies to a layer, read from the gradient of (a combination of) the
    logits with respect to its activation, ``[N, C, H, W]``, ``[N, T, C]`` or ``[N, C]``:

    - ``mean`` when the gradient is the same at every position: only per-channel affine operations (eval-mode
      BatchNorm, identity) lie between the layer and a global average pool, so the model reads its mean;
    - ``cls`` when only the first token has a gradient: the head reads the class token;
    - ``max`` otherwise (the paper's choice): the later layers read the layer position by position.
    """
    if grad.dim() == 2:
        return PoolingChoice("mean", f"{layer} is already one vector per image ([N, C]): pooling does not apply")
    grad = grad.detach().double()
    positions = (2, 3) if grad.dim() == 4 else (1,)
    if all(grad.shape[dim] == 1 for dim in positions):
        return PoolingChoice("mean", f"{layer} has one position per image at this input size, where mean and max "
                                     "pooling agree")
    scale = float(grad.abs().amax())
    if not scale > 0:  # zero or NaN
        return PoolingChoice("max", f"the logits do not respond to {layer} on the probe images, so how the model "
                                    "reads it could not be measured; max is the paper's choice")
    if bool(((grad - grad.mean(dim=positions, keepdim=True)).abs() <= 1e-4 * scale).all()):
        return PoolingChoice("mean", f"the logits' gradient is the same at every position of {layer}, so the model "
                                     "reads it through global average pooling")
    if grad.dim() == 3 and bool((grad[:, 1:].abs() <= 1e-6 * scale).all()):
        return PoolingChoice("cls", f"only the first token of {layer} reaches the logits: the head reads the class "
                                    "token")
    return PoolingChoice("max", f"the later layers read {layer} position by position (the logits' gradient differs "
                                "between positions); max is the paper's choice there")


def auto_pooling(model: nn.Module, layer: str | None, pixel_values: torch.Tensor) -> PoolingChoice:
    """The pooling that ``model`` itself applies to ``layer``, measured on a few images (see
    ``pooling_from_gradient``): one forward and one backward pass on at most ``PROBE_IMAGES`` of
    ``pixel_values``, in eval mode, with the model's parameters left as they are."""
    from ..hooks import LayerHook
    from ..layers import resolve_layer
    from ..loading import model_device

    ref = resolve_layer(model, layer)
    captured: dict[str, torch.Tensor] = {}

    def differentiable(activation: torch.Tensor) -> torch.Tensor:
        captured["a"] = activation if activation.requires_grad else activation.detach().requires_grad_(True)
        return captured["a"].clone()  # later in-place operations must not modify the captured tensor

    images = pixel_values[:PROBE_IMAGES].to(model_device(model))
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            hook = LayerHook(ref, transform=differentiable)
            try:
                logits = logits_of(model(images))
            except ValueError:  # the layer returns a tuple: read its first tensor (needs trainable parameters)
                hook.remove()
                hook = LayerHook(ref)
                logits = logits_of(model(images))
                captured["a"] = hook.activation
            finally:
                hook.remove()
            latent = captured.get("a")
            if latent is None or not latent.requires_grad:
                return PoolingChoice("max", f"the gradient at {ref.spec!r} could not be taken, so how the model "
                                            "reads it was not measured; max is the paper's choice")
            weights = torch.randn(logits.shape[1], generator=torch.Generator().manual_seed(0))
            (grad,) = torch.autograd.grad((logits.float() @ weights.to(logits.device)).sum(), latent,
                                          allow_unused=True)
    finally:
        model.train(was_training)
    if grad is None:
        return PoolingChoice("max", f"the logits do not depend on {ref.spec!r}; max is the paper's choice")
    return pooling_from_gradient(grad, repr(ref.spec))
