"""A composed correction on a model: every part's method bound to it, run together as one method."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import ClassVar

import torch
from torch import nn

from ..base import DebiasMethod, Penalty, method_class_for
from ..rr_clarc.method import _trains_before
from .config import ComposedConfig

_SPECIALISED: dict[tuple[bool, bool, bool], type[ComposedMethod]] = {}


class ComposedMethod(DebiasMethod):
    """The parts of a ``ComposedConfig``, in order: their hooks registered one after the other, their forward
    contexts entered together, their penalties summed, each term logged as ``<part name>/<term>`` plus each
    part's weighted total as ``<part name>/weighted_penalty``.

    ``method_class_for(config)`` answers a subclass whose class attributes say what the parts need:
    ``needs_bias_labels`` / ``needs_masks`` when any part does, ``compile_safe`` when every part is.
    """

    config_class: ClassVar[type[ComposedConfig]] = ComposedConfig

    @classmethod
    def for_config(cls, config: ComposedConfig) -> type[ComposedMethod]:
        classes = [method_class_for(part) for part in config.corrections]
        key = (any(c.needs_bias_labels for c in classes), any(c.needs_masks for c in classes),
               all(c.compile_safe for c in classes))
        if key not in _SPECIALISED:  # no config_class in the subclass' own dict: it does not register
            _SPECIALISED[key] = type(cls.__name__, (cls,), {
                "needs_bias_labels": key[0], "needs_masks": key[1], "compile_safe": key[2],
                "__module__": cls.__module__, "__qualname__": cls.__qualname__, "__doc__": cls.__doc__})
        return _SPECIALISED[key]

    def __init__(self, model: nn.Module, config: ComposedConfig):
        super().__init__(model, config)
        self.labels = config.labels()
        self.parts: list[DebiasMethod] = []
        try:
            for label, part in zip(self.labels, config.corrections):
                try:
                    self.parts.append(method_class_for(part)(model, part))
                except ValueError as err:
                    raise ValueError(f"{label}: {err}") from err
            self._check_on_the_model()
        except BaseException:
            self.remove()
            raise
        resolved = [part.config for part in self.parts]
        if any(mine is not given for mine, given in zip(resolved, config.corrections)):
            self.config = dataclasses.replace(config, corrections=resolved)  # e.g. EnD's resolved normalize_forward
        self.names = self.config.part_names()  # after the parts loaded their CAVs (their concepts name them)

    def _check_on_the_model(self) -> None:
        parts, labels = self.parts, self.labels
        for i in range(len(parts)):
            for j in range(i + 1, len(parts)):
                a, b = parts[i], parts[j]
                if a.changes_activation and b.changes_activation and _same_place(a.layer, b.layer):
                    raise ValueError(f"{labels[i]} and {labels[j]} both change the activation at {a.layer.spec!r} "
                                     "in the forward pass, so the result would depend on their order; move one to "
                                     "another layer or keep one of them.")
                if type(a) is type(b) and a.fingerprint() == b.fingerprint():
                    raise ValueError(f"{labels[i]} and {labels[j]} are identical: the same correction twice only "
                                     "doubles its weight; remove one (or raise its weight).")
        policies = {label: part.freeze_policy for label, part in zip(labels, parts) if part.freeze_policy}
        places = {(policy, id(ref.module) if ref else None, ref.on_input if ref else None)
                  for policy, ref in policies.values()}
        if len(places) > 1:
            shown = ", ".join(f"{label} freeze={policy!r}" + (f" at {ref.spec!r}" if ref else "")
                              for label, (policy, ref) in policies.items())
            raise ValueError(f"The parts freeze differently: {shown}. One freeze policy applies to the whole model: "
                             "give every part the same freeze (for 'before_layer', the same layer).")
        if policies:
            policy = next(iter(policies.values()))[0]
            for label, part in zip(labels, parts):
                if part.freeze_policy is None and part.has_penalty and not _trains_before(self.model, part.layer):
                    raise ValueError(
                        f"{label} at {part.layer.spec!r} would train nothing: the freeze={policy!r} of "
                        f"{', '.join(policies)} leaves no trainable parameter before that layer, so its penalty "
                        "cannot change the features it measures. Give those parts freeze='none' (or "
                        "'before_layer' at an earlier layer).")

    # ------------------------------------------------------------------ what the parts together are
    @property
    def layer(self):
        """The layer of the first part that changes the deployed forward pass, else the first part's."""
        return next((part.layer for part in self.parts if part.alters_forward), self.parts[0].layer)

    @property
    def alters_forward(self) -> bool:
        return any(part.alters_forward for part in self.parts)

    @property
    def changes_activation(self) -> bool:
        return any(part.changes_activation for part in self.parts)

    @property
    def has_penalty(self) -> bool:
        return any(part.has_penalty for part in self.parts)

    @property
    def freeze_policy(self):
        return next((part.freeze_policy for part in self.parts if part.freeze_policy), None)

    def forward_change(self) -> str:
        return "; ".join(f"{label}: {part.forward_change()}" for label, part in zip(self.labels, self.parts)
                         if part.alters_forward)

    def fingerprint(self) -> bytes:
        return b"".join(f"[{index}:{part.config.debias_method}]".encode() + part.fingerprint()
                        for index, part in enumerate(self.parts))

    # ------------------------------------------------------------------ the lifecycle
    def begin_forward(self) -> None:
        for part in self.parts:
            part.begin_forward()

    @contextlib.contextmanager
    def forward_context(self):
        with contextlib.ExitStack() as stack:
            for part in self.parts:
                stack.enter_context(part.forward_context())
            yield

    def on_train(self, mode: bool) -> None:
        for part in self.parts:
            part.on_train(mode)

    def penalty(self, *, logits: torch.Tensor, labels: torch.Tensor, bias_labels: torch.Tensor | None,
                masks: torch.Tensor | None = None) -> Penalty:
        total = logits.new_zeros((), dtype=torch.float32)
        terms: dict[str, torch.Tensor] = {}
        for name, part in zip(self.names, self.parts):
            inputs = {"masks": masks} if part.needs_masks else {}
            result = part.penalty(logits=logits, labels=labels, bias_labels=bias_labels, **inputs)
            total = total + result.total
            terms[f"{name}/weighted_penalty"] = result.total.detach()
            terms.update({f"{name}/{key}": value for key, value in result.terms.items()})
        return Penalty(total=total, terms=terms)

    def remove(self) -> None:
        """Every part's hooks off, last part first (so frozen parameters get their own flags back)."""
        for part in reversed(self.parts):
            part.remove()
        self.parts = []


def _same_place(a, b) -> bool:
    return a.module is b.module and a.on_input == b.on_input
