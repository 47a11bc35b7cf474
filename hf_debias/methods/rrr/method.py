"""RRR on a model: make the input differentiable, differentiate the log-probabilities with respect to it (double
backward) and penalise the gradient inside each image's mask."""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ...freezing import FrozenParameters
from ...hooks import LayerHook
from ...layers import LayerRef, resolve_layer
from ..base import DebiasMethod, Penalty
from .config import RRRConfig
from ...functional.rrr import check_masks, mask_range, rrr_gradient_target, rrr_penalty


class RRR(DebiasMethod):
    """Adds ``lamb * rrr_penalty(∂ target / ∂ pixel_values, masks)`` to the training loss.

    The wrapped model's input is captured by a pre-hook on the model itself and made a differentiable leaf while
    the penalty is on (training mode, gradients enabled, ``lamb > 0``), so the penalty works whatever is frozen.
    Attention then runs on the math SDPA backend (the fused kernels have no double backward). A batch without any
    mask pixel skips the double backward (its penalty is 0), as the RR-ClArC code does. The forward pass is
    never changed: the saved model is the plain network.
    """

    config_class = RRRConfig
    compile_safe = False  # torch.autograd.grad with respect to the input: training steps run eagerly
    needs_masks = True
    """``DebiasModel`` passes ``masks`` to ``penalty``; ``DebiasTrainer`` keeps the config's ``mask_column``."""

    def __init__(self, model: nn.Module, config: RRRConfig):
        super().__init__(model, config)
        # The penalty acts at the input; a layer only bounds what freeze="before_layer" freezes.
        self.input = LayerRef("", model, on_input=True)
        self.layer: LayerRef = resolve_layer(model, config.layer) if config.freeze == "before_layer" else self.input
        self.frozen = FrozenParameters(model, config.freeze, self.layer)
        if not any(parameter.requires_grad for parameter in model.parameters()):
            self.frozen.restore()
            raise ValueError(f"freeze={config.freeze!r} leaves no trainable parameter in {type(model).__name__}; "
                             "choose freeze='none' or 'before_layer' with an earlier layer.")
        self.hook = LayerHook(self.input, transform=self._differentiable)

    @property
    def active(self) -> bool:
        return self.model.training and torch.is_grad_enabled() and self.config.lamb > 0

    def _differentiable(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self.active or pixel_values.requires_grad:
            return pixel_values
        if not pixel_values.is_floating_point():
            raise ValueError(f"RRR differentiates with respect to the images: pixel_values must be floating point, "
                             f"got dtype {pixel_values.dtype}.")
        return pixel_values.detach().requires_grad_(True)

    def forward_context(self):
        return sdpa_kernel(SDPBackend.MATH) if self.active else contextlib.nullcontext()

    def begin_forward(self) -> None:
        self.hook.reset()

    def on_train(self, mode: bool) -> None:
        self.frozen.keep_eval_modes()

    def penalty(self, *, logits: torch.Tensor, labels: torch.Tensor, bias_labels: torch.Tensor | None,
                masks: torch.Tensor | None = None) -> Penalty:
        config: RRRConfig = self.config
        zero = logits.new_zeros((), dtype=torch.float32)
        if not self.active:
            return Penalty(total=zero, terms={"rrr_penalty": zero})
        images = self.hook.activation
        if images is None:
            raise RuntimeError("The wrapped model's forward did not run on the images; RRR needs it.")
        masks = check_masks(masks, images, column=config.mask_column)
        _, high = mask_range(masks, column=config.mask_column)
        if high == 0:  # no mask pixel in the batch: the penalty is 0, no double backward
            return Penalty(total=zero, terms={"rrr_penalty": zero})
        output = rrr_gradient_target(logits, config.gradient_target)
        (grad,) = torch.autograd.grad(output, images, create_graph=True, allow_unused=True)
        if grad is None:
            raise ValueError("The logits do not depend on pixel_values; RRR needs a model whose output is computed "
                             "from its input by autograd.")
        value = rrr_penalty(grad, masks, aggregation=config.aggregation)
        return Penalty(total=config.lamb * value, terms={"rrr_penalty": value.detach()})

    def remove(self) -> None:
        self.hook.remove()
        self.frozen.restore()
