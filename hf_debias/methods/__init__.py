"""Correction methods: one sub-package per method (its config and its model-side logic), one registry."""

from .base import DebiasMethod, Penalty, method_class_for
from .cav_method import CAVConfig
from .composed import ComposedConfig, ComposedMethod
from .clarc import AClArC, AClArCConfig, PClArC, PClArCConfig
from .end import EnD, EnDConfig
from .rr_clarc import RRClArC, RRClArCConfig
from .rrr import RRR, RRRConfig

__all__ = ["AClArC", "AClArCConfig", "CAVConfig", "ComposedConfig", "ComposedMethod", "DebiasMethod", "EnD",
           "EnDConfig", "PClArC", "PClArCConfig", "Penalty", "RRClArC", "RRClArCConfig", "RRR", "RRRConfig", "method_class_for"]
