"""RR-ClArC on a model: capture the layer's activation, differentiate the gradient target with respect to it
(double backward) and penalise the gradient's component along the CAV."""

from __future__ import annotations

import contextlib
import warnings

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ...freezing import FrozenParameters
from ...cav.pooling import pooling_from_gradient
from ...functional.rr_clarc import (channels_last, gradient_target_output, latent_gradient_depends_on_input,
                                    rr_clarc_penalty)
from ...hooks import LayerHook
from ...layers import LayerRef
from ..base import Penalty
from ..cav_method import CAVMethod
from .config import RRClArCConfig


LINEARITY_EVIDENCE_BATCHES = 3
"""Training batches in a row whose latent gradient must be the same for every image before the linear-head warning
fires (see ``RRClArC._warn_if_input_independent``)."""


class RRClArC(CAVMethod):
    """Adds ``lamb * rr_clarc_penalty(∇_a target, cav)`` to the training loss.

    While the penalty is on (training mode, gradients enabled, ``lamb > 0``) the forward pass runs attention on
    the math SDPA backend, because the fused kernels do not support double backward; evaluation keeps the fast
    kernels. The layer's activation is made differentiable even when everything before it is frozen.
    """

    config_class = RRClArCConfig
    compile_safe = False  # torch.autograd.grad through hooked activations: training steps run eagerly

    def __init__(self, model: nn.Module, config: RRClArCConfig):
        super().__init__(model, config)
        self.frozen = FrozenParameters(model, config.freeze, self.layer)
        if not any(parameter.requires_grad for parameter in model.parameters()):
            self.frozen.restore()
            raise ValueError(f"freeze={config.freeze!r} leaves no trainable parameter in "
                             f"{type(model).__name__}; choose freeze='none' or 'before_layer' with an earlier layer.")
        self.hook = LayerHook(self.layer, transform=self._differentiable)
        self._trains_before_layer = _trains_before(model, self.layer)
        self._checked_linearity = False
        self._input_independent_batches = 0
        self._latent: torch.Tensor | None = None

    @property
    def active(self) -> bool:
        return self.model.training and torch.is_grad_enabled() and self.config.lamb > 0

    def _differentiable(self, activation: torch.Tensor) -> torch.Tensor:
        self.check_channels(activation)
        if not self.active:
            return activation
        if not activation.requires_grad:  # frozen up to here: differentiate with respect to a fresh leaf
            activation = activation.detach().requires_grad_(True)
        self._latent = activation
        return activation.clone()  # later in-place ops (ReLU(inplace=True)) must not modify the captured tensor

    def forward_context(self):
        return sdpa_kernel(SDPBackend.MATH) if self.active else contextlib.nullcontext()

    def begin_forward(self) -> None:
        self.hook.reset()
        self._latent = None

    def on_train(self, mode: bool) -> None:
        self.frozen.keep_eval_modes()

    def penalty(self, *, logits: torch.Tensor, labels: torch.Tensor,
                bias_labels: torch.Tensor | None) -> Penalty:
        config: RRClArCConfig = self.config
        if not self.active:
            zero = logits.new_zeros((), dtype=torch.float32)
            return Penalty(total=zero, terms={"rrclarc_penalty": zero})
        latent = self._latent
        if latent is None:
            raise RuntimeError(f"The layer {self.layer.spec!r} did not run during the forward pass; choose a layer "
                               "that the model's forward uses.")
        output = gradient_target_output(logits, config.gradient_target, labels=labels,
                                        target_class=config.target_class)
        (grad,) = torch.autograd.grad(output, latent, create_graph=True, allow_unused=True)
        if grad is None:
            raise ValueError(f"The logits do not depend on layer {self.layer.spec!r}; choose a layer on the path "
                             "to the classifier.")
        value = rr_clarc_penalty(grad, self.cav.direction(), aggregation=config.aggregation)
        if not value.requires_grad:
            raise ValueError(f"The RR-ClArC penalty at {self.layer.spec!r} does not depend on any trainable "
                             f"parameter (freeze={config.freeze!r}); unfreeze the layers after it.")
        if not self._checked_linearity:
            self._warn_if_input_independent(logits, latent, grad)
        return Penalty(total=config.lamb * value, terms={"rrclarc_penalty": value.detach()})

    def _warn_if_input_independent(self, logits: torch.Tensor, latent: torch.Tensor, grad: torch.Tensor) -> None:
        """When only affine operations (pooling, the linear head) follow the layer, the logits' gradient there is
        the same for every image (methods.md §2): the penalty can then only turn the head away from the CAV. This
        is measured on the batch (``latent_gradient_depends_on_input``); say so, once, with advice that fits the
        freeze policy. A batch that cannot tell (one image, identical images) defers the check to the next one.

        One batch showing an input-independent gradient is not proof: in an untrained ReLU network, similar images
        can share every activation pattern after the layer. The warning therefore waits until
        ``LINEARITY_EVIDENCE_BATCHES`` batches in a row have shown it; one batch whose gradient differs between its
        images ends the check without a warning."""
        depends = latent_gradient_depends_on_input(logits, latent)
        if depends is None:
            return
        if depends:
            self._checked_linearity = True
            return
        self._input_independent_batches += 1
        if self._input_independent_batches < LINEARITY_EVIDENCE_BATCHES:
            return
        self._checked_linearity = True
        layer, freeze = self.layer.spec, self.config.freeze
        hint = ""
        read_as = pooling_from_gradient(grad, repr(layer))
        if not self.cav.is_spatial and read_as.pooling != self.cav.pooling and channels_last(grad).shape[1] > 1:
            hint = (f" The model reads this layer through pooling={read_as.pooling!r} ({read_as.reason}), so a CAV "
                    f"computed with pooling={read_as.pooling!r} is the direction it sees; this one was computed with "
                    f"pooling={self.cav.pooling!r}")
            hint += (" (on the controlled-artifact benchmark mean pooling took the attacked-vs-clean gap from 4.4 to "
                     "1.5 points)." if read_as.pooling == "mean" and self.cav.pooling == "max" else ".")
        if freeze != "before_layer" and not self._trains_before_layer:
            advice = (f"Under freeze={freeze!r} nothing before {layer!r} trains here, so an earlier layer alone would "
                      "still correct only the head: for a per-image correction of the features choose an earlier "
                      "layer (see `hf-debias layers MODEL`) with a CAV computed there and freeze='before_layer' "
                      "(trains the layers in between; about 1.5x a vanilla step) or freeze='none', or accept this "
                      "head-only correction.")
        else:
            advice = ("For a per-image correction choose an earlier layer (see `hf-debias layers MODEL`) with a CAV "
                      f"computed there; freeze={freeze!r} then trains the layers in between"
                      + (" (about 1.5x a vanilla step)." if freeze == "before_layer" else "."))
        warnings.warn(
            f"Only linear operations (pooling, the linear head) follow {layer!r}: the latent gradient does not "
            f"depend on the image (measured: it was the same for every image of {LINEARITY_EVIDENCE_BATCHES} "
            "batches), so RR-ClArC only turns "
            f"the head away from the CAV and a larger lamb changes nothing once that is done. {advice}{hint}",
            stacklevel=7,  # the user call: model(...) -> _call_impl -> forward -> _forward -> penalty
        )

    def remove(self) -> None:
        self.hook.remove()
        self.frozen.restore()


def _trains_before(model: nn.Module, layer: LayerRef) -> bool:
    """Whether any parameter used before ``layer``'s activation (module registration order, the layer's own
    included when its output is meant) is trainable: then a CAV at an earlier layer has trainable layers after it."""
    for _, module in model.named_modules():
        if module is layer.module and layer.on_input:
            return False
        if any(parameter.requires_grad for parameter in module.parameters(recurse=False)):
            return True
        if module is layer.module:
            return any(parameter.requires_grad for parameter in module.parameters())
    return False
