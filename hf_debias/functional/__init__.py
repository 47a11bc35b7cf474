"""Pure penalty functions: tensors in, tensors out, no hooks and no model state."""

from .end import PAIRINGS, end_penalty, end_terms

__all__ = ["PAIRINGS", "end_penalty", "end_terms"]
