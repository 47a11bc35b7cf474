"""Read a classifier's output: ``logits_of`` finds the logits whatever library made the model.

A bottom-floor primitive (it imports only torch), so that the methods, the CAV code and the wrapper above them can
all use it without importing one another."""

from __future__ import annotations

import torch


def logits_of(output: object) -> torch.Tensor:
    """The logits in a model's output: a tensor (timm), ``.logits`` (transformers) or the first tuple item."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise ValueError(f"Cannot find logits in a model output of type {type(output).__name__}.")
