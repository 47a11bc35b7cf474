"""``DebiasMethod``: what a correction method contributes to a model — its hooks and its penalty."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from ..config import DebiasConfig
from ..layers import LayerRef

_METHOD_CLASSES: dict[str, type[DebiasMethod]] = {}


@dataclass
class Penalty:
    """A method's contribution to the loss: the weighted total and its named, unweighted parts for logging."""

    total: torch.Tensor
    terms: dict[str, torch.Tensor]


class DebiasMethod:
    """One method bound to one model. Subclasses set ``config_class`` and implement ``penalty``.

    Lifecycle: ``__init__`` resolves layers and registers hooks, ``begin_forward`` runs before every forward,
    ``penalty`` after it (training only), and ``remove`` takes every hook off again.
    """

    config_class: ClassVar[type[DebiasConfig]]
    needs_bias_labels: ClassVar[bool] = False
    compile_safe: ClassVar[bool] = True
    """False for methods whose training step cannot run inside ``torch.compile`` (double backward)."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "config_class" in cls.__dict__:  # abstract intermediate classes do not register
            _METHOD_CLASSES[cls.config_class.debias_method] = cls

    def __init__(self, model: nn.Module, config: DebiasConfig):
        self.model = model
        self.config = config

    layer: LayerRef  # where the method acts, resolved on the model

    @property
    def changes_activation(self) -> bool:
        """True when the method's hook replaces the activation at ``layer`` by a different value in a forward pass
        (P-ClArC's and A-ClArC's shift along the CAV, EnD's L2 normalisation with ``normalize_forward`` 'always' or
        'train'), False when it only reads it (RR-ClArC, RRR, EnD with 'never'). A composition refuses two methods
        that change one layer: the result would depend on their order. The default reads the resolved config;
        a new method that changes its layer overrides it."""
        method = self.config.debias_method
        if method in ("pclarc", "aclarc"):
            return True
        return method == "end" and getattr(self.config, "normalize_forward", "never") != "never"

    @property
    def has_penalty(self) -> bool:
        """False for the methods whose loss term is always 0 (P-ClArC, A-ClArC: they move activations instead)."""
        return self.config.debias_method not in ("pclarc", "aclarc")

    @property
    def freeze_policy(self) -> tuple[str, LayerRef | None] | None:
        """``(policy, layer)`` of the methods that freeze parameters (``freezing.FREEZE_POLICIES``; the layer only
        for ``before_layer``), None for a method that trains whatever is trainable (EnD)."""
        policy = getattr(self.config, "freeze", None)
        if policy is None:
            return None
        return policy, (self.layer if policy == "before_layer" else None)

    def forward_change(self) -> str:
        """Where and how the deployed forward pass differs from the plain network's (for ``alters_forward``)."""
        return f"{self.config.debias_method} changed the forward pass at {self.layer.spec!r}"

    @classmethod
    def for_config(cls, config: DebiasConfig) -> type[DebiasMethod]:
        """The class that runs ``config``: ``cls`` itself, or (a composition) a subclass whose class attributes
        (``needs_bias_labels``, ``needs_masks``, ``compile_safe``) describe that config's parts."""
        return cls

    @property
    def alters_forward(self) -> bool:
        """True when the deployed (eval-mode) model predicts differently from the plain architecture with the same
        weights, so that plain timm / transformers loaders must be refused (``hub.save_model`` guards the repo) and
        ``unload()`` warns. A change confined to the training forward that leaves every eval-mode prediction as
        the plain network's (EnD's ``normalize_forward="train"``) is not one."""
        return False

    def begin_forward(self) -> None:
        """Prepare for a new forward pass (e.g. forget the last captured activation)."""

    def forward_context(self) -> contextlib.AbstractContextManager:
        """A context the wrapped model's forward runs in (RR-ClArC: the math attention backend)."""
        return contextlib.nullcontext()

    def on_train(self, mode: bool) -> None:
        """Called after ``model.train(mode)`` (e.g. to keep frozen norm layers in eval mode)."""

    needs_masks: ClassVar[bool] = False
    """Whether ``penalty`` takes per-image ``masks`` (RRR): the wrapper passes them only to such methods, the
    Trainer keeps their dataset column."""

    def penalty(self, *, logits: torch.Tensor, labels: torch.Tensor,
                bias_labels: torch.Tensor | None) -> Penalty:
        """The weighted penalty and its named parts; methods with ``needs_masks`` also take ``masks=``."""
        raise NotImplementedError

    def fingerprint(self) -> bytes:
        """What every process must agree on under distributed training (the config, without local paths)."""
        return self.config.to_json_string().encode()

    def remove(self) -> None:
        """Take every hook off the model."""


def method_class_for(config: DebiasConfig) -> type[DebiasMethod]:
    """The registered method class for ``config``; raises ``ValueError`` listing the valid methods."""
    if not isinstance(config, DebiasConfig):
        raise ValueError(f"config must be a DebiasConfig such as EnDConfig, got {type(config).__name__}.")
    try:
        cls = _METHOD_CLASSES[config.debias_method]
    except KeyError:
        raise ValueError(f"No method registered for debias_method={config.debias_method!r}; "
                         f"registered: {sorted(_METHOD_CLASSES)}.") from None
    return cls.for_config(config)
