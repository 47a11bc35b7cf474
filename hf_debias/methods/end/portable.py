"""EnD's portable form: the L2 normalisation in the *training* forward only, a deployable plain network.

When the bottleneck is the input ``f`` of a linear classifier head whose bias is 0, the normalised network
computes ``W·f / ||f||`` and the plain one ``W·f``: every logit is divided by the same positive ``||f||``, so the
argmax and the whole class ranking are the same. EnD therefore trains with the normalised forward (the paper's
network) and deploys the plain architecture, which plain timm, transformers and ``pipeline`` build from the saved
weights. Scores differ (the deployed logits are not normalised, so calibration differs); class predictions do not.

This module decides where that is exact (``portable_form_problem``), and holds the head's bias at 0 while EnD is
attached (``ZeroFrozenBias``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from ...layers import LayerRef, find_classifier

logger = logging.getLogger(__name__)

NORMALIZE_FORMS = ("train", "always", "never")
"""``train``: portable (normalised training forward, bias-free head, plain deploy); ``always``: the normalisation
stays in every forward (guarded repo, only ``hf_debias.load_model`` restores it); ``never``: penalty only."""

# Modules f -> g(f) with g(c·f) = c·g(f) for every c > 0 (in train and eval mode alike), and no parameters.
_HOMOGENEOUS = (nn.Identity, nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.ReLU,
                nn.LeakyReLU, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                nn.AvgPool1d, nn.AvgPool2d, nn.MaxPool1d, nn.MaxPool2d)


def head_linear(head: nn.Module) -> nn.Linear | None:
    """The head's only linear layer when the head is ``nn.Linear``, or an ``nn.Sequential`` of parameter-free,
    positively homogeneous modules ending in one ``nn.Linear``; ``None`` for any other head."""
    if isinstance(head, nn.Linear):
        return head
    if isinstance(head, nn.Sequential) and len(head) and isinstance(head[-1], nn.Linear):
        if all(type(module) in _HOMOGENEOUS for module in list(head)[:-1]):
            return head[-1]
    return None


def portable_form_problem(model: nn.Module, ref: LayerRef) -> str | None:
    """Why the portable form would not be exact for the bottleneck ``ref`` of ``model``, or ``None`` if it is.

    Exact means: ``ref`` is the input of the model's classifier head, and the head is linear up to positively
    homogeneous operations (see ``head_linear``). That the head's output *is* the model's logits is checked on the
    first training step (``EnD.penalty``).
    """
    for owner in model.modules():
        getter = getattr(owner, "get_classifier", None)
        heads = getter() if callable(getter) else None
        if isinstance(heads, (tuple, list)):
            return (f"{type(owner).__name__} has {len(heads)} classifier heads (e.g. a distillation head) whose "
                    "outputs are combined into the logits")
    try:
        head_name, head = find_classifier(model)
    except ValueError as err:
        return str(err)
    if not ref.on_input or ref.module is not head:
        return (f"the bottleneck {ref.spec!r} is not the input of the classifier head ({head_name + ':input'!r}), so "
                "the layers in between would see unit-norm features in training and unnormalised ones when deployed")
    if head_linear(head) is None:
        return (f"the classifier head {head_name!r} is a {type(head).__name__}, not a linear layer (or a Sequential "
                "of positively homogeneous modules ending in one), so its outputs' ranking depends on the feature norm")
    return None


class ZeroFrozenBias:
    """Sets the head's linear bias to 0 and ``requires_grad=False`` while EnD is attached.

    With no gradient, no optimizer (weight decay included) can move it. ``restore`` gives back the original
    ``requires_grad`` flag but leaves the value at 0: the trained weights need it (say so to users).
    """

    def __init__(self, linear: nn.Linear, head_name: str):
        self.bias = linear.bias
        self.head_name = head_name
        self._requires_grad = self.bias.requires_grad if self.bias is not None else False
        if self.bias is None:
            return
        with torch.no_grad():
            was_zero = bool((self.bias == 0).all())
            self.bias.zero_()
        self.bias.requires_grad_(False)
        if not was_zero:
            logger.warning(
                "EnD (normalize_forward='train'): set the bias of the classifier head %r to 0 and froze it, so that "
                "the deployed network (W·f) ranks the classes exactly as the trained one (W·f/||f||). unload() leaves "
                "it at 0.", head_name)

    def check(self) -> None:
        """Raise ``RuntimeError`` if something moved the bias away from 0 (e.g. re-enabled its gradient)."""
        if self.bias is not None and not bool((self.bias == 0).all()):
            raise RuntimeError(
                f"The bias of the classifier head {self.head_name!r} is no longer 0 (something set requires_grad=True "
                "on it or wrote to it), so EnD's normalize_forward='train' model would predict differently once "
                "deployed. Zero it again (head.bias.data.zero_()) and keep it frozen, or train with "
                "normalize_forward='always'.")

    def restore(self) -> None:
        """Give the bias its original ``requires_grad`` flag back; its value stays 0."""
        if self.bias is not None:
            self.bias.requires_grad_(self._requires_grad)
