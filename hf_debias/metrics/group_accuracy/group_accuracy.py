"""Group accuracy: per-(label, bias) accuracy, worst-group, unbiased and bias-aligned / conflicting accuracy.

Load offline with ``evaluate.load(hf_debias.metrics.GROUP_ACCURACY_MODULE)``; pass ``bias_labels`` through
``add_batch`` / ``add`` or ``compute`` next to ``predictions`` and ``references``.
"""

import datasets
import evaluate

from hf_debias.metrics.group import group_accuracy

_DESCRIPTION = """Accuracy per (label, bias) group and its summaries: worst-group accuracy, unbiased accuracy (the
mean of the group accuracies), and, given aligned_bias, bias-aligned and bias-conflicting accuracy and their gap."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): target class ids.
    bias_labels (list of int): bias (group) ids.
    aligned_bias (dict or "identity", optional): the bias value aligned with each label in training.
Returns:
    accuracy, unbiased_accuracy, worst_group_accuracy, worst_group, group_accuracy, group_size, the worst
    group's ids and size (worst_group_label, worst_group_bias, worst_group_count), one flat entry per group
    (group_{label}_{bias}_accuracy and group_{label}_{bias}_count, and group_{label}_{bias}_aligned with
    aligned_bias) and, with aligned_bias, bias_aligned_accuracy, bias_conflicting_accuracy and bias_gap.
Examples:
    >>> metric = evaluate.load(hf_debias.metrics.GROUP_ACCURACY_MODULE)
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 0], bias_labels=[0, 1, 1])["worst_group_accuracy"]
    0.0
"""

_CITATION = """@inproceedings{sagawa2020distributionally,
  title={Distributionally Robust Neural Networks for Group Shifts},
  author={Sagawa, Shiori and Koh, Pang Wei and Hashimoto, Tatsunori B. and Liang, Percy},
  booktitle={ICLR}, year={2020}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class GroupAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("int64"),
                "references": datasets.Value("int64"),
                "bias_labels": datasets.Value("int64"),
            }),
        )

    def _compute(self, predictions, references, bias_labels, aligned_bias=None):
        return group_accuracy(predictions, references, bias_labels, aligned_bias=aligned_bias)
