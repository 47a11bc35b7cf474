"""``get_debias_model``: wrap any image classifier so that its loss carries a bias-correction penalty.

The wrapper's ``forward(pixel_values, labels=None, bias_labels=None, masks=None)`` has an explicit signature (no
``**kwargs``), so ``transformers.Trainer`` keeps the ``bias_labels`` column and treats it as a label, and a
plain PyTorch loop can call it directly. ``masks`` (per-image masks of the artifact) reach the methods that
declare ``needs_masks`` (RRR); the others ignore them, as methods without bias labels ignore ``bias_labels``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers.utils import ModelOutput

from ._validation import as_class_ids, check_batch_size
from .config import DebiasConfig
from .distributed import check_same_on_every_process
from .methods.base import method_class_for
from .outputs import logits_of  # noqa: F401  (re-exported: hf_debias.model.logits_of)


@dataclass
class DebiasOutput(ModelOutput):
    """What the wrapper returns.

    Attributes:
        loss: ``ce_loss + penalty`` in training mode with labels; plain ``ce_loss`` in eval mode.
        logits: the wrapped model's logits, ``[B, num_classes]``.
        ce_loss: the cross-entropy part.
        penalty: the weighted penalty (training mode only), differentiable: a loss of your own can replace the
            cross-entropy as ``my_loss + output.penalty``.
        penalty_terms: the penalty's named, unweighted parts, detached, for logging (training mode only).
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    ce_loss: torch.Tensor | None = None
    penalty: torch.Tensor | None = None
    penalty_terms: dict[str, torch.Tensor] | None = None


class DebiasModel(nn.Module):
    """A classifier plus one correction method (which may be a ``ComposedConfig`` of several). Build it with
    ``get_debias_model``.

    Attributes other than the wrapper's own are looked up on the wrapped model, so timm helpers such as
    ``get_classifier()`` or ``pretrained_cfg`` keep working.
    """

    def __init__(self, model: nn.Module, config: DebiasConfig | Sequence[DebiasConfig]):
        super().__init__()
        config = as_config(config)
        self.model = model
        self.debias_config = config
        self.method = method_class_for(config)(model, config)
        check_same_on_every_process("debias configuration", self.method.fingerprint())

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                bias_labels: torch.Tensor | None = None, masks: torch.Tensor | None = None) -> DebiasOutput:
        if self.method is None:
            raise RuntimeError("This DebiasModel was unloaded; use the model that unload() returned.")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() < 2:
            raise ValueError(f"pixel_values must be a tensor shaped [B, ...], got {type(pixel_values).__name__}"
                             f"{tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else ''}.")
        batch_size = check_batch_size("pixel_values", pixel_values.shape[0])
        # int64 once, here: the loss, the penalty and any gather across processes then see one dtype
        if labels is not None:
            labels = as_class_ids("labels", labels, batch_size)
        if bias_labels is not None:
            bias_labels = as_class_ids("bias_labels", bias_labels, batch_size)

        if self.training and not self.method.compile_safe and torch.compiler.is_compiling():
            # The penalty differentiates through hooked activations (double backward), which a compiled graph
            # does not expose: this step runs eagerly; evaluation stays compiled.
            return torch.compiler.disable(self._forward)(pixel_values, labels, bias_labels, masks)
        return self._forward(pixel_values, labels, bias_labels, masks)

    def _forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None,
                 bias_labels: torch.Tensor | None, masks: torch.Tensor | None = None) -> DebiasOutput:
        self.method.begin_forward()
        with self.method.forward_context():
            logits = logits_of(self.model(pixel_values))
        if labels is None:
            return DebiasOutput(logits=logits)
        ce_loss = F.cross_entropy(logits.float(), labels)
        if not self.training:
            return DebiasOutput(loss=ce_loss, logits=logits, ce_loss=ce_loss)
        mask_inputs = {"masks": masks} if self.method.needs_masks else {}
        penalty = self.method.penalty(logits=logits, labels=labels, bias_labels=bias_labels, **mask_inputs)
        return DebiasOutput(loss=ce_loss + penalty.total, logits=logits, ce_loss=ce_loss,
                            penalty=penalty.total, penalty_terms=penalty.terms)

    def train(self, mode: bool = True) -> DebiasModel:
        super().train(mode)
        if self.method is not None:
            self.method.on_train(mode)
        return self

    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict | None = None,
                                        **kwargs) -> None:
        """Turn on activation (gradient) checkpointing in the wrapped model: transformers' own switch, or timm's
        ``set_grad_checkpointing``. Called by ``Trainer`` for ``--activation_checkpointing``. The bottleneck hook
        keeps the first activation of a step, so the recomputation during backward does not replace it."""
        inner = self.model
        if hasattr(inner, "activation_checkpointing_enable"):
            inner.activation_checkpointing_enable(activation_checkpointing_kwargs=activation_checkpointing_kwargs,
                                                  **kwargs)
        elif hasattr(inner, "set_grad_checkpointing"):
            inner.set_grad_checkpointing(True)
        else:
            raise ValueError(f"{type(inner).__name__} has no activation checkpointing switch "
                             "(neither transformers' activation_checkpointing_enable nor timm's set_grad_checkpointing).")

    def save_pretrained(self, save_directory, *, card=None, repo_id: str | None = None):
        """Save the corrected model: the classifier in its library's format, ``debias_config.json``, the CAV and a
        model card (``card``: a ``hf_debias.hub.ModelCardInfo``). Reload with ``hf_debias.load_model``."""
        from .hub import save_model

        return save_model(self, save_directory, card=card, repo_id=repo_id)

    def push_to_hub(self, repo_id: str, **kwargs):
        """Save locally, then push to the Hub in one commit (see ``hf_debias.hub.push_model`` for the options)."""
        from .hub import push_model

        return push_model(self, repo_id, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """Also accepts the wrapped model's own keys (a native checkpoint, as ``save_pretrained`` writes it)."""
        state_dict = dict(state_dict)
        own = set(self.state_dict())
        if not own & set(state_dict) and own & {f"model.{key}" for key in state_dict}:
            state_dict = {f"model.{key}": value for key, value in state_dict.items()}
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def get_base_model(self) -> nn.Module:
        """The wrapped model (still hooked; see ``unload`` for a clean one)."""
        return self.model

    def unload(self) -> nn.Module:
        """Remove every hook and return the plain wrapped model. The wrapper cannot be used afterwards.

        If the method altered the forward pass (EnD with ``normalize_forward='always'``, P-ClArC), the returned model no
        longer applies that change, so its outputs differ from the wrapper's; a warning says so.
        """
        if self.method is None:
            raise RuntimeError("This DebiasModel was already unloaded.")
        if self.method.alters_forward:
            warnings.warn(
                f"{self.method.forward_change()}; the unloaded model no longer applies that change, so its outputs "
                "differ from the corrected model's.",
                stacklevel=2,
            )
        self.method.remove()
        self.method = None
        return self.model

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)


def as_config(config: DebiasConfig | Sequence[DebiasConfig]) -> DebiasConfig:
    """``config`` itself; a list of configs as one ``ComposedConfig`` (a list of one as that config)."""
    if isinstance(config, (list, tuple)):
        from .methods.composed import ComposedConfig

        if len(config) == 1:
            return as_config(config[0])
        return ComposedConfig(corrections=list(config))
    return config


def get_debias_model(model: nn.Module, config: DebiasConfig | Sequence[DebiasConfig]) -> DebiasModel:
    """Wrap ``model`` (a timm or transformers image classifier, or any ``nn.Module`` returning logits) so that
    its training loss adds the penalty described by ``config`` (e.g. ``EnDConfig``). A list of configs
    (``[EnDConfig(...), RRClArCConfig(cav=ruler), RRClArCConfig(cav=tag)]``) applies them together as one
    ``ComposedConfig``: every part's penalty is added and logged under the part's name."""
    if isinstance(model, DebiasModel):
        raise ValueError("model is already a DebiasModel; call unload() first to change the correction.")
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}.")
    return DebiasModel(model, config)
