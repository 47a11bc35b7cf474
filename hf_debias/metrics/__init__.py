"""Group metrics (worst-group, unbiased, bias-aligned / conflicting accuracy), as functions and as an
offline ``evaluate`` module."""

from pathlib import Path

from .group import ALIGNED_IDENTITY, group_accuracy, infer_aligned_bias

GROUP_ACCURACY_MODULE = str(Path(__file__).parent / "group_accuracy")
"""Path for ``evaluate.load(GROUP_ACCURACY_MODULE)``; it loads offline."""


def load_group_accuracy(**kwargs):
    """``evaluate.load`` the bundled group-accuracy metric (no network needed)."""
    import evaluate

    return evaluate.load(GROUP_ACCURACY_MODULE, **kwargs)


__all__ = ["ALIGNED_IDENTITY", "GROUP_ACCURACY_MODULE", "group_accuracy", "infer_aligned_bias", "load_group_accuracy"]
