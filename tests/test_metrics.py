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
