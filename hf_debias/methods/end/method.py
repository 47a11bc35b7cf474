"""EnD on a model: a hook at the bottleneck and the Gram-matrix penalty on what it captures."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...distributed import gather, gather_with_grad, is_distributed
from ...functional.end import end_terms
from ...hooks import LayerHook
from ...layers import resolve_layer
from ..base import DebiasMethod, Penalty
from .config import EnDConfig


def l2_normalize_per_sample(tensor: torch.Tensor) -> torch.Tensor:
    """Scale each sample's activation (all non-batch axes together) to unit L2 norm, keeping its shape."""
    flat = F.normalize(tensor.reshape(tensor.shape[0], -1), dim=1)
    return flat.reshape(tensor.shape)


class EnD(DebiasMethod):
    """Adds ``alpha * r_ortho + beta * r_par`` computed on the bottleneck activation of the current batch."""

    config_class = EnDConfig
    needs_bias_labels = True

    def __init__(self, model: nn.Module, config: EnDConfig):
        super().__init__(model, config)
        self.layer = resolve_layer(model, config.layer)
        transform = l2_normalize_per_sample if config.normalize_forward else None
        self.hook = LayerHook(self.layer, transform=transform)

    @property
    def alters_forward(self) -> bool:
        return self.config.normalize_forward

    def begin_forward(self) -> None:
        self.hook.reset()

    def penalty(self, *, logits: torch.Tensor, labels: torch.Tensor,
                bias_labels: torch.Tensor | None) -> Penalty:
        if bias_labels is None:
            raise ValueError("EnD needs bias_labels in training mode: pass bias_labels=... (one integer bias id "
                             "per sample) or call model.eval() to skip the penalty.")
        features = self.hook.activation
        if features is None:
            raise RuntimeError(f"The bottleneck {self.layer.spec!r} did not run during the forward pass; "
                               "choose a layer that the model's forward uses.")
        if self.config.global_batch and is_distributed():  # a collective: every process calls it on every step
            features = gather_with_grad(features.reshape(features.shape[0], -1))
            labels, bias_labels = gather(labels), gather(bias_labels)
        r_ortho, r_par = end_terms(features, labels, bias_labels, pairing=self.config.pairing)
        total = self.config.alpha * r_ortho + self.config.beta * r_par
        return Penalty(total=total, terms={"end_r_ortho": r_ortho.detach(), "end_r_par": r_par.detach()})

    def remove(self) -> None:
        self.hook.remove()
