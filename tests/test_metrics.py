"""Group metrics: hand-computed values, the offline evaluate module, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from hf_debias.metrics import group_accuracy, load_group_accuracy

# Groups (y, b): (0,0) 2 correct of 2, (0,1) 1 of 2, (1,1) 3 of 3, (1,0) 0 of 1.
PREDICTIONS = [0, 0, 0, 1, 1, 1, 1, 0]
LABELS = [0, 0, 0, 0, 1, 1, 1, 1]
BIAS = [0, 0, 1, 1, 1, 1, 1, 0]


def test_hand_computed_values():
    result = group_accuracy(PREDICTIONS, LABELS, BIAS, aligned_bias="identity")
    assert result["accuracy"] == pytest.approx(6 / 8)
    assert result["group_accuracy"] == {"y=0,b=0": 1.0, "y=0,b=1": 0.5, "y=1,b=0": 0.0, "y=1,b=1": 1.0}
    assert result["group_size"] == {"y=0,b=0": 2, "y=0,b=1": 2, "y=1,b=0": 1, "y=1,b=1": 3}
    assert result["unbiased_accuracy"] == pytest.approx(0.625)
    assert result["worst_group_accuracy"] == 0.0 and result["worst_group"] == "y=1,b=0"
    assert result["bias_aligned_accuracy"] == pytest.approx(1.0)
    assert result["bias_conflicting_accuracy"] == pytest.approx(0.25)
    assert result["bias_gap"] == pytest.approx(0.75)


def test_mapping_for_aligned_bias_and_logits_input():
    logits = torch.nn.functional.one_hot(torch.tensor(PREDICTIONS), 2).float()
    result = group_accuracy(logits, np.array(LABELS), torch.tensor(BIAS), aligned_bias={0: 1, 1: 0})
    assert result["bias_aligned_accuracy"] == pytest.approx(0.25)  # (0,1) and (1,0)
    assert result["bias_conflicting_accuracy"] == pytest.approx(1.0)
    assert "bias_gap" not in group_accuracy(PREDICTIONS, LABELS, BIAS)


def test_offline_evaluate_module_matches_the_function():
    metric = load_group_accuracy()
    for start in (0, 4):
        metric.add_batch(predictions=PREDICTIONS[start:start + 4], references=LABELS[start:start + 4],
                         bias_labels=BIAS[start:start + 4])
    result = metric.compute(aligned_bias="identity")
    assert result == group_accuracy(PREDICTIONS, LABELS, BIAS, aligned_bias="identity")


@pytest.mark.parametrize(("args", "message"), [
    (([0.5, 1.0], [0, 1], [0, 1]), "integer ids"),
    (([0, 1], [0, 1], [0]), "same length"),
    (([], [], []), "at least one sample"),
])
def test_bad_inputs(args, message):
    with pytest.raises(ValueError, match=message):
        group_accuracy(*args)
    with pytest.raises(ValueError, match="aligned_bias"):
        group_accuracy([0], [0], [0], aligned_bias="diagonal")


def test_flat_group_keys_name_every_group_and_the_worst_one():
    result = group_accuracy(PREDICTIONS, LABELS, BIAS, aligned_bias="identity")
    assert (result["worst_group_label"], result["worst_group_bias"], result["worst_group_count"]) == (1, 0, 1)
    assert all(type(result[key]) is int for key in ("worst_group_label", "worst_group_bias", "worst_group_count"))
    assert {key: result[key] for key in result if key.startswith("group_") and key[6].isdigit()} == {
        "group_0_0_accuracy": 1.0, "group_0_0_count": 2, "group_0_0_aligned": True,
        "group_0_1_accuracy": 0.5, "group_0_1_count": 2, "group_0_1_aligned": False,
        "group_1_0_accuracy": 0.0, "group_1_0_count": 1, "group_1_0_aligned": False,
        "group_1_1_accuracy": 1.0, "group_1_1_count": 3, "group_1_1_aligned": True}
    assert type(result["group_1_1_count"]) is int and type(result["group_0_1_accuracy"]) is float
    # the existing keys stay
    assert result["worst_group"] == "y=1,b=0" and result["group_size"]["y=1,b=1"] == 3
    assert "group_0_0_aligned" not in group_accuracy(PREDICTIONS, LABELS, BIAS)


def test_groups_from_metrics_reads_the_rows_back_for_one_prefix():
    from hf_debias.metrics.group import groups_from_metrics

    result = group_accuracy(PREDICTIONS, LABELS, BIAS, aligned_bias="identity")
    flat = {f"eval_validation_{key}": value for key, value in result.items()}
    flat.update({f"eval_test_{key}": value for key, value in group_accuracy(LABELS, LABELS, BIAS).items()})
    rows = groups_from_metrics(flat, prefix="eval_validation_")
    assert rows == [
        {"label": 0, "bias": 0, "accuracy": 1.0, "count": 2, "aligned": True},
        {"label": 0, "bias": 1, "accuracy": 0.5, "count": 2, "aligned": False},
        {"label": 1, "bias": 0, "accuracy": 0.0, "count": 1, "aligned": False},
        {"label": 1, "bias": 1, "accuracy": 1.0, "count": 3, "aligned": True},
    ]
    test_rows = groups_from_metrics(flat, prefix="eval_test_")
    assert [row["accuracy"] for row in test_rows] == [1.0] * 4 and {row["aligned"] for row in test_rows} == {None}
    assert groups_from_metrics(flat) == []  # no key starts with "group_" itself
    # JSON round trip (eval_results.json): counts come back as ints
    import json
    assert groups_from_metrics(json.loads(json.dumps(flat)), "eval_validation_") == rows


def test_groups_from_metrics_rejects_incomplete_or_mistyped_groups():
    from hf_debias.metrics.group import groups_from_metrics

    with pytest.raises(ValueError, match="no group_1_0_count"):
        groups_from_metrics({"group_1_0_accuracy": 0.5})
    with pytest.raises(ValueError, match="'group_1_0_count' must be a number \\(an integer\\), got 2.5"):
        groups_from_metrics({"group_1_0_accuracy": 0.5, "group_1_0_count": 2.5})
    with pytest.raises(ValueError, match="'group_1_0_aligned' must be a bool"):
        groups_from_metrics({"group_1_0_accuracy": 0.5, "group_1_0_count": 2, "group_1_0_aligned": "yes"})


def test_parse_group_key_reads_every_per_group_key_and_nothing_else():
    from hf_debias.metrics.group import parse_group_key

    assert parse_group_key("group_3_-1_accuracy", prefix="") == (3, -1, "accuracy")
    assert parse_group_key("eval_validation_group_3_1_count") == (3, 1, "count")
    assert parse_group_key("eval_validation_group_3_1_count", prefix="eval_") is None  # not exactly that prefix
    assert parse_group_key("eval_validation_group_3_1_count", prefix="eval_validation_") == (3, 1, "count")
    for key in ("worst_group_accuracy", "group_3_1_accuracy_x", "subgroup_3_1_accuracy", "group_a_1_count", 7):
        assert parse_group_key(key) is None
