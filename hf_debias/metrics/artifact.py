"""Metrics of the controlled-artifact protocol (methods.md §2): clean vs attacked accuracy, TCAV score and
sensitivity, and CAV alignment."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from torch import nn

from ..cav.cav import CAV
from ..functional.rr_clarc import channels_last
from ..hooks import LayerHook
from ..layers import resolve_layer
from ..loading import model_device
from ..outputs import logits_of


def artifact_accuracy(predictions, references, attacked) -> dict[str, float]:
    """Accuracy on clean (``attacked == 0``) and attacked (``== 1``) samples and the drop between them."""
    predictions, references, attacked = (np.asarray(values).reshape(-1) for values in (predictions, references,
                                                                                     attacked))
    if not predictions.shape == references.shape == attacked.shape:
        raise ValueError(f"predictions, references and attacked must have one entry per sample; got "
                         f"{predictions.shape}, {references.shape}, {attacked.shape}.")
    correct = predictions == references
    result = {}
    for name, flag in (("clean_accuracy", 0), ("attacked_accuracy", 1)):
        selected = attacked == flag
        result[name] = float(correct[selected].mean()) if selected.any() else float("nan")
    result["attack_drop"] = result["clean_accuracy"] - result["attacked_accuracy"]
    return result


def model_artifact_accuracy(model: nn.Module, clean_images: torch.Tensor, attacked_images: torch.Tensor,
                            labels, *, batch_size: int = 1024) -> dict[str, float]:
    """``artifact_accuracy`` of ``model`` on paired clean / attacked images (the same images, same labels)."""
    from ..fit_loop import predict

    labels = np.asarray(labels).reshape(-1)
    predictions = np.concatenate([predict(model, clean_images, batch_size), predict(model, attacked_images,
                                                                                    batch_size)])
    flags = np.repeat([0, 1], len(labels))
    return artifact_accuracy(predictions, np.concatenate([labels, labels]), flags)


DEPRECATED_TCAV_KEYS = {"tcav_sensitivity": "tcav_pooled_sensitivity"}
"""Result keys of ``tcav`` that were renamed: reading the old one still works, with a FutureWarning."""


class TCAVResult(dict):
    """``tcav``'s result: a plain ``dict`` of the current keys; a renamed key (``DEPRECATED_TCAV_KEYS``) is still
    readable with ``[]`` / ``get`` and warns, but is not stored, so that reports and cards show each value once."""

    def __missing__(self, key: str) -> float:
        if key in DEPRECATED_TCAV_KEYS:
            new = DEPRECATED_TCAV_KEYS[key]
            warnings.warn(f"tcav()[{key!r}] is now {new!r} (the mean |derivative| of the spatially averaged "
                          "activation); the authors' per-position sensitivity is 'tcav_position_sensitivity'. The old "
                          "name will be removed.", FutureWarning, stacklevel=2)
            return self[new]
        raise KeyError(key)

    def get(self, key, default=None):
        return self[key] if key in self or key in DEPRECATED_TCAV_KEYS else default


def tcav(directional_derivatives) -> TCAVResult:
    """TCAV score and sensitivities of a class to a concept, from ``directional_derivatives`` of its logit along the
    CAV on samples that show the concept.

    Args:
        directional_derivatives: ``[N]``, one derivative per sample along the spatially averaged activation
            (``directional_derivatives(...)``), or ``[N, P]``, one per sample and position
            (``directional_derivatives(..., per_position=True)``); a sample's pooled derivative is its row mean.

    Returns:
        ``tcav_score``: the share of samples whose pooled derivative is positive (≈ 0.5 after a good correction;
        the authors' ``mean_tcav_quotient``). ``tcav_pooled_sensitivity``: the mean |pooled derivative|, i.e. the
        sensitivity of the logit to moving every position along the CAV at once (ours; formerly
        ``tcav_sensitivity``). ``tcav_position_sensitivity`` (``[N, P]`` input only): the mean over samples *and
        positions* of |g_p · h| (the authors' ``mean_tcav_sensitivity``; on conv maps it is usually several times
        larger, because per-position derivatives of opposite signs do not cancel). Lower sensitivities are
        better. Compare a number only with one of the same name.
    """
    values = np.asarray(directional_derivatives, dtype=np.float64)
    if values.ndim == 0 or values.ndim > 2:
        raise ValueError(f"tcav needs directional derivatives shaped [N] or [N, positions], got {values.shape}.")
    if values.size == 0:
        raise ValueError("tcav needs at least one directional derivative.")
    pooled = values.mean(axis=1) if values.ndim == 2 else values
    result = TCAVResult(tcav_score=float((pooled > 0).mean()), tcav_pooled_sensitivity=float(np.abs(pooled).mean()))
    if values.ndim == 2:
        result["tcav_position_sensitivity"] = float(np.abs(values).mean())
    return result


def directional_derivatives(model: nn.Module, layer: str | None, cav: CAV, images: torch.Tensor, target_class: int,
                            *, batch_size: int = 256, per_position: bool = False) -> torch.Tensor:
    """``∇_a f̃_c · h`` on ``images``: ``g = ∇_a f̃_c`` is the gradient of class ``target_class``'s logit with
    respect to the layer's activation ``a`` and ``h`` the CAV.

    Returns ``[N]``, the derivative along the spatially (token-) averaged gradient, ``(mean_p g_p) · h`` as in
    RR-ClArC's loss; with ``per_position`` ``[N, P]``, ``g_p · h`` at every position / token ``p`` (the authors'
    TCAV sensitivity averages its absolute value; the row means are the ``[N]`` values). Feed either to ``tcav``.

    ``a`` is the layer's own output, before any correction hooked there, so a P-ClArC projection counts as part
    of ``f̃``."""
    ref = resolve_layer(model, layer)
    captured: dict[str, torch.Tensor] = {}

    def differentiable(activation: torch.Tensor) -> torch.Tensor:
        captured["a"] = activation.detach().requires_grad_(True)
        return captured["a"]

    hook = LayerHook(ref, transform=differentiable, prepend=True)  # before a correction's own hook (P-ClArC)
    was_training = model.training
    model.eval()
    values = []
    try:
        for start in range(0, images.shape[0], batch_size):
            hook.reset()
            with torch.enable_grad():
                logits = logits_of(model(images[start:start + batch_size].to(model_device(model))))
                (grad,) = torch.autograd.grad(logits[:, target_class].sum(), captured["a"])
            per_position_grad = channels_last(grad).float()  # [N, P, C]
            cav.check_activation(grad, ref.spec)
            if cav.is_spatial:  # one derivative per image, along the whole map
                if per_position:
                    raise ValueError("A spatial CAV (pooling='none') gives one derivative per image; call "
                                     "directional_derivatives without per_position.")
                spatial = per_position_grad.flatten(1) @ cav.vector.to(per_position_grad.device)
                values.append(spatial.cpu())
                continue
            derivatives = per_position_grad @ cav.vector.to(per_position_grad.device)  # [N, P]
            values.append((derivatives if per_position else derivatives.mean(dim=1)).cpu())
    finally:
        hook.remove()
        model.train(was_training)
    return torch.cat(values)


def cav_alignment(cav: CAV | torch.Tensor, clean_activations: torch.Tensor,
                  artifact_activations: torch.Tensor) -> dict[str, float]:
    """How well ``cav`` points along the change the artifact causes, ``a(φ(x)) − a(x)`` (pooled, paired rows).

    Returns ``alignment`` (mean per-sample cosine) and ``alignment_of_means`` (cosine of the mean change).
    """
    vector = cav.vector if isinstance(cav, CAV) else torch.as_tensor(cav)
    change = torch.as_tensor(artifact_activations).double() - torch.as_tensor(clean_activations).double()
    if change.dim() != 2 or change.shape[1] != vector.numel():
        raise ValueError(f"Activations must be pooled [N, {vector.numel()}] pairs, got {tuple(change.shape)}.")
    direction = vector.double() / vector.double().norm()
    norms = change.norm(dim=1)
    moved = norms > 0
    per_sample = (change[moved] @ direction) / norms[moved]
    mean_change = change.mean(dim=0)
    return {"alignment": float(per_sample.mean()) if moved.any() else float("nan"),
            "alignment_of_means": float(mean_change @ direction / mean_change.norm().clamp_min(1e-30))}
