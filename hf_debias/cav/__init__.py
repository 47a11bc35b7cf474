"""Concept activation vectors: fitting (signal, FastCAV, filter CAVs), streaming computation over a model, and
safetensors + JSON storage."""

from .cav import CAV, CAV_CONFIG_NAME, CAV_WEIGHTS_NAME
from .compute import compute_cav
from .fitting import (CAV_METHODS, MIN_AUC_SAMPLES_PER_VALUE, STREAMING_METHODS, ConceptStatistics, auc_warning,
                      describe_auc, held_out_auc)
from .pooling import (POOLING_CHOICES, POOLINGS, PoolingChoice, auto_pooling, pool_activation, pooling_from_gradient,
                      shift_along)

__all__ = ["CAV", "CAV_CONFIG_NAME", "CAV_METHODS", "CAV_WEIGHTS_NAME", "MIN_AUC_SAMPLES_PER_VALUE", "POOLINGS",
           "POOLING_CHOICES", "STREAMING_METHODS", "ConceptStatistics", "PoolingChoice", "auc_warning",
           "auto_pooling", "compute_cav", "describe_auc", "held_out_auc", "pool_activation", "pooling_from_gradient",
           "shift_along"]
