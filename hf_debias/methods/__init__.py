"""Correction methods: one sub-package per method (its config and its model-side logic), one registry."""

from .base import DebiasMethod, Penalty, method_class_for
from .end import EnD, EnDConfig

__all__ = ["DebiasMethod", "EnD", "EnDConfig", "Penalty", "method_class_for"]
