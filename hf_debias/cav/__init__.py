"""Concept activation vectors: fitting (signal, FastCAV, filter CAVs), streaming computation over a model, and
safetensors + JSON storage."""

from .cav import CAV, CAV_CONFIG_NAME, CAV_WEIGHTS_NAME
from .compute import compute_cav
from .fitting import CAV_METHODS, STREAMING_METHODS, ConceptStatistics
from .pooling import POOLINGS, pool_activation, shift_along

__all__ = ["CAV", "CAV_CONFIG_NAME", "CAV_METHODS", "CAV_WEIGHTS_NAME", "POOLINGS", "STREAMING_METHODS",
           "ConceptStatistics", "compute_cav", "pool_activation", "shift_along"]
