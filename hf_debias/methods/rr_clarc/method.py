"""RR-ClArC on a model: capture the layer's activation and penalise how the output responds along the CAV — by
the latent gradient (the paper; double backward) or by a finite difference over the concept's own magnitude (two
more forward passes with the activation moved along the CAV; the default on vision transformers)."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from ...freezing import FrozenParameters
from ...cav.pooling import pooling_from_gradient
from ...functional.rr_clarc import (channels_last, finite_difference_penalty, gradient_target_output,
                                    latent_gradient_depends_on_input, rr_clarc_penalty)
from ...hooks import LayerHook
from ...layers import LayerRef
from ...outputs import logits_of
from ...token_models import is_token_model, patch_embedding_layer
from ..base import Penalty
from ..cav_method import CAVMethod
from .config import RRClArCConfig, check_finite_difference_aggregation


LINEARITY_EVIDENCE_BATCHES = 3
"""Training batches in a row whose latent gradient must be the same for every image before the linear-head warning
fires (see ``RRClArC._warn_if_input_independent``)."""


class RRClArC(CAVMethod):
    """Adds ``lamb * rr_clarc_penalty(∇_a target, cav)`` (``penalty_form="gradient"``) or
    ``lamb * finite_difference_penalty(...)`` (``"finite_difference"``) to the training loss.

    Gradient form: while the penalty is on (training mode, gradients enabled, ``lamb > 0``) the forward pass runs
    attention on the math SDPA backend, because the fused kernels do not support double backward; evaluation keeps
    the fast kernels. The layer's activation is made differentiable even when everything before it is frozen.

    Finite-difference form: after the training forward the model runs twice more on the same inputs with the
    layer's activation replaced by the captured one moved along the CAV to the concept mean and to the clean mean
    (``CAV.shift_to``, as P-/A-ClArC move it). Those two passes keep gradients (the penalty trains the layers after
    the correction point, and those before it through the captured activation) but read BatchNorm's running
    statistics without updating them, so the shifted activations never enter the model's statistics.
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
        self.token_model = is_token_model(model)
        if config.penalty_form == "auto":  # recorded, so that the saved config and the card say what ran
            if self.token_model:
                check_finite_difference_aggregation(config.aggregation, config.penalty_form)
            config.penalty_form = "finite_difference" if self.token_model else "gradient"
        if config.penalty_form == "finite_difference":
            self._concept_distance = _concept_distance(self.cav)
        self._warn_if_token_recipe_unproven(model, config)
        self.hook = LayerHook(self.layer, transform=self._differentiable)
        self._trains_before_layer = _trains_before(model, self.layer)
        self._checked_linearity = False
        self._input_independent_batches = 0
        self._latent: torch.Tensor | None = None
        self._inputs: tuple[tuple, dict[str, Any]] | None = None
        self._replacement: torch.Tensor | None = None
        self._input_hook = model.register_forward_pre_hook(self._capture_inputs, with_kwargs=True) \
            if config.penalty_form == "finite_difference" else None

    @property
    def active(self) -> bool:
        return self.model.training and torch.is_grad_enabled() and self.config.lamb > 0

    @property
    def finite_difference(self) -> bool:
        return self.config.penalty_form == "finite_difference"

    def _capture_inputs(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> None:
        if self._replacement is None and self._inputs is None and self.active:
            self._inputs = (args, kwargs)

    def _differentiable(self, activation: torch.Tensor) -> torch.Tensor:
        if self._replacement is not None:  # a finite-difference pass: the activation moved along the CAV
            if self._replacement.shape != activation.shape:
                raise RuntimeError(f"The finite-difference pass at {self.layer.spec!r} saw an activation shaped "
                                   f"{tuple(activation.shape)}, the training pass {tuple(self._replacement.shape)}: "
                                   "the model's forward must not depend on anything but its inputs.")
            return self._replacement
        self.check_channels(activation)
        if not self.active or self._latent is not None:
            # the first activation of a forward is the one penalised; later ones (another part's finite-difference
            # passes in a composition, a checkpointed recomputation) pass through untouched
            return activation
        if not activation.requires_grad:  # frozen up to here: differentiate with respect to a fresh leaf
            activation = activation.detach().requires_grad_(True)
        self._latent = activation
        return activation.clone()  # later in-place ops (ReLU(inplace=True)) must not modify the captured tensor

    def forward_context(self):
        if self.active and not self.finite_difference:
            return sdpa_kernel(SDPBackend.MATH)
        return contextlib.nullcontext()

    def begin_forward(self) -> None:
        self.hook.reset()
        self._latent = None
        self._inputs = None

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
        if self.finite_difference:
            value = self._finite_difference_penalty(latent, labels)
        else:
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
        if not self._checked_linearity and not self.finite_difference:
            self._warn_if_input_independent(logits, latent, grad)
        return Penalty(total=config.lamb * value, terms={"rrclarc_penalty": value.detach()})

    def _finite_difference_penalty(self, latent: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Run the model on the training pass's inputs with the activation moved to the concept mean and to the
        clean mean along the CAV, and compare the two outputs (``finite_difference_penalty``)."""
        if self._inputs is None:
            raise RuntimeError("The finite-difference penalty needs the inputs of the training forward pass, which "
                               "did not go through the wrapped model.")
        args, kwargs = self._inputs
        outputs = []
        with _batch_norm_statistics_frozen(self.model):
            for target_mean in (self.cav.concept_mean, self.cav.clean_mean):
                self._replacement = self.cav.shift_to(latent, target_mean)
                try:
                    outputs.append(logits_of(self.model(*args, **kwargs)))
                finally:
                    self._replacement = None
        config: RRClArCConfig = self.config
        return finite_difference_penalty(outputs[0], outputs[1], self._concept_distance,
                                         target=config.gradient_target, labels=labels,
                                         target_class=config.target_class, aggregation=config.aggregation)

    def _warn_if_token_recipe_unproven(self, model: nn.Module, config: RRClArCConfig) -> None:
        """On a vision transformer, say so when the correction leaves the one recipe measured to remove a
        shortcut there (a spatial CAV at the patch embedding, the finite-difference penalty; BENCHMARKS §4g)."""
        if not self.token_model:
            return
        patch_embedding = patch_embedding_layer(model)
        problems = []
        if config.penalty_form == "gradient":
            problems.append("penalty_form='gradient' (the latent gradient along the CAV was driven 8.5x down while "
                            "97 % of attacked images kept the artifact's class)")
        at_patch_embedding = self.layer.name == patch_embedding and not self.layer.on_input
        if not at_patch_embedding or not self.cav.is_spatial:
            problems.append(f"a CAV at {self.layer.spec!r} with pooling {self.cav.pooling_description!r} (a "
                            "mean-pooled CAV at a ViT block captured the artifact in the token average, not in the "
                            "tokens the head reads)")
        if problems:
            warnings.warn(
                f"This is a vision transformer and RR-ClArC uses {' and '.join(problems)}: on the controlled-"
                "artifact benchmark that left a patch shortcut whole on a ViT while the TCAV sensitivity fell. The "
                f"recipe measured to remove it: a spatial CAV at the patch embedding ({patch_embedding!r}, "
                "compute_cav(model, None, ...) or `hf-debias cav` without --layer chooses it) and "
                "penalty_form='finite_difference' (the default on ViTs). Check the result with an attacked split or "
                "an artifact transplant, not with TCAV alone.", stacklevel=5)

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
        if self._input_hook is not None:
            self._input_hook.remove()
        self.frozen.restore()


def _concept_distance(cav) -> float:
    """μ⁺ − μ⁻ of a CAV, which the finite-difference penalty moves the activation by; refused when unknown or 0."""
    if cav.concept_mean is None or cav.clean_mean is None:
        raise ValueError("penalty_form='finite_difference' moves the activation to the CAV's concept and clean "
                         "means, but this CAV records neither (concept_mean / clean_mean are None): compute it "
                         "with compute_cav or CAV.fit, which record them.")
    distance = float(cav.concept_mean) - float(cav.clean_mean)
    if abs(distance) < 1e-8:
        raise ValueError(f"The CAV's concept mean and clean mean are equal ({cav.concept_mean!r}): it does not "
                         "separate images with and without the concept, so there is no finite difference to take.")
    return distance


@contextlib.contextmanager
def _batch_norm_statistics_frozen(model: nn.Module):
    """BatchNorm layers in training mode read their running statistics and leave them as they are."""
    switched = [module for module in model.modules()
                if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training]
    for module in switched:
        module.eval()
    try:
        yield
    finally:
        for module in switched:
            module.train()


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
