"""Pure penalty functions: tensors in, tensors out, no hooks and no model state."""

from .end import PAIRINGS, end_penalty, end_terms
from .rr_clarc import (AGGREGATIONS, GRADIENT_TARGETS, OFFICIAL_LOGPROBS_EPS, gradient_target_output,
                       latent_gradient, rr_clarc_penalty)
from .rrr import check_masks, rrr_penalty

__all__ = ["AGGREGATIONS", "GRADIENT_TARGETS", "OFFICIAL_LOGPROBS_EPS", "PAIRINGS", "end_penalty", "end_terms",
           "check_masks", "gradient_target_output", "latent_gradient", "rr_clarc_penalty", "rrr_penalty"]
