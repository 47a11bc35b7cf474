"""Group-robustness metrics for predictions with a target label and a bias (group) label."""

from __future__ import annotations

import re
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

        The same per group as flat numbers, for logs and ``eval_results.json`` (read them back with
        ``groups_from_metrics``): ``group_{label}_{bias}_accuracy`` (float), ``group_{label}_{bias}_count`` (int),
        with ``aligned_bias`` also ``group_{label}_{bias}_aligned`` (bool); and ``worst_group_label``,
        ``worst_group_bias``, ``worst_group_count`` (ints) for the worst group.
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
        "worst_group_label": int(groups[worst, 0]),
        "worst_group_bias": int(groups[worst, 1]),
        "worst_group_count": int(sizes[worst]),
    }
    for (label, bias), accuracy, size in zip(groups.tolist(), accuracies.tolist(), sizes.tolist()):
        result[f"group_{label}_{bias}_accuracy"] = float(accuracy)
        result[f"group_{label}_{bias}_count"] = int(size)
    if aligned_bias is not None:
        if aligned_bias == ALIGNED_IDENTITY:
            is_aligned = groups[:, 0] == groups[:, 1]
        else:
            is_aligned = np.array([aligned_bias.get(int(y)) == int(b) for y, b in groups])
        for (label, bias), aligned_group in zip(groups.tolist(), is_aligned.tolist()):
            result[f"group_{label}_{bias}_aligned"] = bool(aligned_group)
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


_GROUP_KEY = re.compile(r"(?:^|_)group_(-?\d+)_(-?\d+)_(accuracy|count|aligned)$")
GROUP_STRUCTURE_SUFFIXES = ("_count", "_aligned", "worst_group_label", "worst_group_bias")
"""Endings of the flat keys that describe the groups (sizes, ids, alignment) rather than measure the model."""


def is_group_structure_key(key: str) -> bool:
    """True for ``group_*_count``, ``group_*_aligned``, ``worst_group_label/bias/count``: not model metrics."""
    return key.endswith(GROUP_STRUCTURE_SUFFIXES)


def parse_group_key(key: str, prefix: str | None = None) -> tuple[int, int, str] | None:
    """``(label, bias, field)`` of a per-group key ``group_{label}_{bias}_{accuracy|count|aligned}``, else None.

    With ``prefix`` the key must be exactly ``prefix`` + that (``""``: the bare key); without, any prefix ending in
    ``_`` is accepted (``eval_validation_group_3_1_accuracy``)."""
    if not isinstance(key, str):
        return None
    if prefix is not None:
        if not key.startswith(prefix):
            return None
        key = key[len(prefix):]
        match = _GROUP_KEY.match(key)
    else:
        match = _GROUP_KEY.search(key)
    return (int(match[1]), int(match[2]), match[3]) if match is not None else None


def groups_from_metrics(metrics: Mapping[str, object], prefix: str = "") -> list[dict[str, object]]:
    """The per-group rows in a flat metrics dict (``group_accuracy``'s result, ``DebiasTrainer``'s eval metrics,
    ``eval_results.json``), sorted by (label, bias).

    Args:
        metrics: flat ``{key: value}``; keys ``{prefix}group_{label}_{bias}_accuracy`` / ``_count`` /
            ``_aligned`` are read, everything else is ignored.
        prefix: what precedes ``group_`` (``"eval_"``, ``"eval_validation_"``); only keys with exactly this
            prefix are read.

    Returns:
        ``[{"label": int, "bias": int, "accuracy": float, "count": int, "aligned": bool | None}, ...]``;
        ``aligned`` is None where the metrics do not say (no aligned bias known).

    Raises:
        ValueError: a group with an accuracy but no count (or the reverse), or a value of the wrong type.
    """
    rows: dict[tuple[int, int], dict[str, object]] = {}
    for key, value in metrics.items():
        parsed = parse_group_key(key, prefix)
        if parsed is None:
            continue
        label, bias, field = parsed
        valid = isinstance(value, bool) if field == "aligned" else (
            isinstance(value, (int, float)) and not isinstance(value, bool))
        if not valid or (field == "count" and float(value) != int(value)):
            raise ValueError(f"Metric {key!r} must be {'a bool' if field == 'aligned' else 'a number'}"
                             f"{' (an integer)' if field == 'count' else ''}, got {value!r}.")
        rows.setdefault((label, bias), {"label": label, "bias": bias, "aligned": None})[field] = value
    for (label, bias), row in rows.items():
        missing = [name for name in ("accuracy", "count") if name not in row]
        if missing:
            raise ValueError(f"Group (label {label}, bias {bias}) has no {prefix}group_{label}_{bias}_"
                             f"{missing[0]} in the metrics.")
        row["accuracy"], row["count"] = float(row["accuracy"]), int(row["count"])
    return [{name: row[name] for name in ("label", "bias", "accuracy", "count", "aligned")}
            for _, row in sorted(rows.items())]
