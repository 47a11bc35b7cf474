"""Group-robustness metrics for predictions with a target label and a bias (group) label."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

ALIGNED_IDENTITY = "identity"
"""``aligned_bias="identity"``: the bias value aligned with label ``k`` is ``k`` (as in Colour-Digits)."""


def _as_int_array(name: str, values: object) -> np.ndarray:
    array = np.asarray(values.detach().cpu() if hasattr(values, "detach") else values)
    if array.size == 0:
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integer ids, got dtype {array.dtype}.")
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}.")
    return array


def group_accuracy(
    predictions: object,
    labels: object,
    bias_labels: object,
    *,
    aligned_bias: Mapping[int, int] | str | None = None,
) -> dict[str, object]:
    """Accuracy per (label, bias) group and the summaries built on it.

    Args:
        predictions: predicted class ids ``[N]``, or logits ``[N, K]`` (arg-maxed here).
        labels: target ids ``[N]``.
        bias_labels: bias ids ``[N]``.
        aligned_bias: which bias value is the one the bias correlates with in training, per label: a mapping
            ``{label: bias}`` or ``"identity"``. Needed for the aligned / conflicting figures; without it
            those keys are left out.

    Returns:
        ``accuracy`` (plain), ``unbiased_accuracy`` (mean over the groups present), ``worst_group_accuracy``,
        ``worst_group`` (``"y=..,b=.."``), ``group_accuracy`` and ``group_size`` (dicts keyed ``"y=..,b=.."``),
        and with ``aligned_bias``: ``bias_aligned_accuracy``, ``bias_conflicting_accuracy`` (means over the
        aligned / conflicting groups) and ``bias_gap`` (aligned minus conflicting).
    """
    predictions = np.asarray(predictions.detach().cpu() if hasattr(predictions, "detach") else predictions)
    if predictions.ndim == 2:
        predictions = predictions.argmax(axis=1)
    predictions = _as_int_array("predictions", predictions)
    labels = _as_int_array("labels", labels)
    bias_labels = _as_int_array("bias_labels", bias_labels)
    if not len(predictions) == len(labels) == len(bias_labels):
        raise ValueError(f"predictions, labels and bias_labels must have the same length, got "
                         f"{len(predictions)}, {len(labels)}, {len(bias_labels)}.")
    if len(labels) == 0:
        raise ValueError("group_accuracy needs at least one sample.")
    if isinstance(aligned_bias, str) and aligned_bias != ALIGNED_IDENTITY:
        raise ValueError(f"aligned_bias must be a mapping, {ALIGNED_IDENTITY!r} or None, got {aligned_bias!r}.")

    correct = predictions == labels
    pairs = np.stack([labels, bias_labels], axis=1)
    groups, group_index = np.unique(pairs, axis=0, return_inverse=True)
    group_index = group_index.reshape(-1)
    sizes = np.bincount(group_index, minlength=len(groups))
    accuracies = np.bincount(group_index, weights=correct, minlength=len(groups)) / sizes
    keys = [f"y={y},b={b}" for y, b in groups]
    worst = int(np.argmin(accuracies))
    result: dict[str, object] = {
        "accuracy": float(correct.mean()),
        "unbiased_accuracy": float(accuracies.mean()),
        "worst_group_accuracy": float(accuracies[worst]),
        "worst_group": keys[worst],
        "group_accuracy": {key: float(acc) for key, acc in zip(keys, accuracies)},
        "group_size": {key: int(size) for key, size in zip(keys, sizes)},
    }
    if aligned_bias is not None:
        if aligned_bias == ALIGNED_IDENTITY:
            is_aligned = groups[:, 0] == groups[:, 1]
        else:
            is_aligned = np.array([aligned_bias.get(int(y)) == int(b) for y, b in groups])
        aligned = float(accuracies[is_aligned].mean()) if is_aligned.any() else float("nan")
        conflicting = float(accuracies[~is_aligned].mean()) if (~is_aligned).any() else float("nan")
        result.update(bias_aligned_accuracy=aligned, bias_conflicting_accuracy=conflicting,
                      bias_gap=aligned - conflicting)
    return result


def infer_aligned_bias(labels: object, bias_labels: object) -> dict[int, int]:
    """For each label, the bias value it co-occurs with most often (the bias-aligned value in training data)."""
    labels = _as_int_array("labels", labels)
    bias_labels = _as_int_array("bias_labels", bias_labels)
    pairs, counts = np.unique(np.stack([labels, bias_labels], axis=1), axis=0, return_counts=True)
    aligned: dict[int, int] = {}
    best: dict[int, int] = {}
    for (label, bias), count in zip(pairs.tolist(), counts.tolist()):
        if count > best.get(label, -1):
            aligned[label], best[label] = bias, count
    return aligned
