"""Metrics of the controlled-artifact protocol (methods.md §2): clean vs attacked accuracy, TCAV score and
sensitivity, and CAV alignment."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..cav.cav import CAV
from ..functional.rr_clarc import channels_last
from ..hooks import LayerHook
from ..layers import resolve_layer
from ..loading import model_device
from ..model import logits_of


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


def tcav(directional_derivatives) -> dict[str, float]:
    """TCAV score (share of positive directional derivatives; ≈ 0.5 after a good correction) and TCAV
    sensitivity (mean absolute directional derivative; lower is better)."""
    values = np.asarray(directional_derivatives, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("tcav needs at least one directional derivative.")
    return {"tcav_score": float((values > 0).mean()), "tcav_sensitivity": float(np.abs(values).mean())}


def directional_derivatives(model: nn.Module, layer: str | None, cav: CAV, images: torch.Tensor, target_class: int,
                            *, batch_size: int = 256) -> torch.Tensor:
    """``∇_a f̃_c · h`` per image, with the gradient averaged over positions / tokens as in RR-ClArC's loss.

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
            mean_grad = channels_last(grad).mean(dim=1)
            cav.check_channels(mean_grad.shape[-1], ref.spec)
            values.append((mean_grad.float() @ cav.vector.to(mean_grad.device)).cpu())
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
