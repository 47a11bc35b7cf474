"""EnD on a model: a hook at the bottleneck and the Gram-matrix penalty on what it captures."""

from __future__ import annotations

import dataclasses
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ...distributed import gather, gather_with_grad, is_distributed
from ...functional.end import end_terms
from ...hooks import LayerHook
from ...layers import LayerRef, find_classifier, resolve_layer
from ...token_models import is_token_model
from ..base import DebiasMethod, Penalty
from .config import EnDConfig
from .portable import ZeroFrozenBias, head_linear, portable_form_problem


def l2_normalize_per_sample(tensor: torch.Tensor) -> torch.Tensor:
    """Scale each sample's activation (all non-batch axes together) to unit L2 norm, keeping its shape."""
    flat = F.normalize(tensor.reshape(tensor.shape[0], -1), dim=1)
    return flat.reshape(tensor.shape)


def resolve_normalize_forward(model: nn.Module, ref: LayerRef, requested: str | None) -> str:
    """The form EnD uses on ``model`` at ``ref``: ``requested``, or for ``None`` (the default) ``"train"`` where it
    is exact and ``"always"`` with a warning elsewhere.

    Raises:
        ValueError: ``"train"`` was asked for explicitly where it is not exact.
    """
    if requested in ("always", "never"):
        return requested
    problem = portable_form_problem(model, ref)
    if problem is None:
        return "train"
    if requested == "train":
        raise ValueError(f"EnD normalize_forward='train' (portable) is not exact on {type(model).__name__}: {problem}. "
                         "Use normalize_forward='always' (the normalisation stays in the forward pass; the saved "
                         "model loads with hf_debias.load_model only) or 'never' (penalty only).")
    warnings.warn(f"EnD: the portable default normalize_forward='train' is not exact here ({problem}); using "
                  "normalize_forward='always' instead: the saved model loads with hf_debias.load_model only. Pass "
                  "normalize_forward='always' or 'never' explicitly to silence this.", stacklevel=5)
    return "always"


TOKEN_MODEL_ALPHA = 1.0
"""Above this alpha EnD warns on a vision transformer (measured: alpha 10 took a ViT's class structure apart)."""


class EnD(DebiasMethod):
    """Adds ``alpha * r_ortho + beta * r_par`` computed on the bottleneck activation of the current batch.

    ``self.config`` is the given config with ``normalize_forward`` resolved (never ``None``; see ``EnDConfig``).
    """

    config_class = EnDConfig
    needs_bias_labels = True

    def __init__(self, model: nn.Module, config: EnDConfig):
        super().__init__(model, config)
        self.layer = resolve_layer(model, config.layer)
        form = resolve_normalize_forward(model, self.layer, config.normalize_forward)
        if form != config.normalize_forward:
            self.config = dataclasses.replace(config, normalize_forward=form)
        self._bias: ZeroFrozenBias | None = None
        self._head_output: LayerHook | None = None
        if form == "train":
            head_name, head = find_classifier(model)
            self._bias = ZeroFrozenBias(head_linear(head), head_name)
            # Checked on the first training step: the head's output must be the model's logits.
            self._head_output = LayerHook(LayerRef(head_name, head))
            self._explicit = config.normalize_forward == "train"
        transform = {"always": l2_normalize_per_sample, "train": self._normalize_in_training, "never": None}[form]
        self.hook = LayerHook(self.layer, transform=transform)
        if is_token_model(model) and config.alpha > TOKEN_MODEL_ALPHA:
            warnings.warn(
                f"EnD alpha={config.alpha:g} on a vision transformer: on Colour-Digits (rho 0.99) a ViT that reads "
                "shapes fell from 63.7 % to 16-19 % unbiased accuracy at alpha=10 and rose to 74.6 % at alpha=1 "
                f"(BENCHMARKS.md §1e, one seed). Start at alpha <= {TOKEN_MODEL_ALPHA:g} and choose it on a "
                "validation split (`hf-debias sweep`).", stacklevel=4)

    def _normalize_in_training(self, tensor: torch.Tensor) -> torch.Tensor:
        return l2_normalize_per_sample(tensor) if self.layer.module.training else tensor

    @property
    def alters_forward(self) -> bool:
        """``"always"`` changes the deployed network; ``"train"`` does not (the plain network with the zero head
        bias ranks the classes as the trained one does), ``"never"`` neither."""
        if self._bias is not None:
            self._bias.check()
        return self.config.normalize_forward == "always"

    def begin_forward(self) -> None:
        self.hook.reset()
        if self._head_output is not None:
            self._head_output.reset()

    def on_train(self, mode: bool) -> None:
        if not mode and self._bias is not None:
            self._bias.check()

    def _check_head_gives_the_logits(self, logits: torch.Tensor) -> None:
        """Once, on the first training step: the portable form is exact only if the head's output is the logits."""
        head_output = self._head_output.activation
        self._head_output.remove()
        self._head_output = None
        if head_output is logits or (head_output is not None and head_output.shape == logits.shape
                                     and torch.equal(head_output, logits)):
            return
        problem = (f"the output of the classifier head {self._bias.head_name!r} is not the model's logits (something "
                   "runs after the head)")
        if self._explicit:
            raise ValueError(f"EnD normalize_forward='train' (portable) is not exact on {type(self.model).__name__}: "
                             f"{problem}. Use normalize_forward='always' or 'never'.")
        warnings.warn(f"EnD: the portable default normalize_forward='train' is not exact here ({problem}); switching "
                      "to normalize_forward='always' before the first update: the saved model loads with "
                      "hf_debias.load_model only.", stacklevel=4)
        self._bias.restore()  # the bias stays 0, which the 'always' network may keep or learn from
        self._bias = None
        self.config.normalize_forward = "always"  # our own resolved copy (the default was None)
        self.hook.transform = l2_normalize_per_sample

    def penalty(self, *, logits: torch.Tensor, labels: torch.Tensor,
                bias_labels: torch.Tensor | None) -> Penalty:
        if bias_labels is None:
            raise ValueError("EnD needs bias_labels in training mode: pass bias_labels=... (one integer bias id "
                             "per sample) or call model.eval() to skip the penalty.")
        if self._head_output is not None:
            self._check_head_gives_the_logits(logits)
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
        """Take the hooks off; the head's bias gets its ``requires_grad`` flag back but stays 0 (``"train"``)."""
        self.hook.remove()
        if self._head_output is not None:
            self._head_output.remove()
        if self._bias is not None:
            self._bias.restore()
