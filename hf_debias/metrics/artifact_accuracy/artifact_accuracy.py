"""Artifact accuracy: accuracy on clean and on attacked samples (the artifact inserted) and the drop between them.

Load offline with ``evaluate.load(hf_debias.metrics.ARTIFACT_ACCURACY_MODULE)``; pass ``attacked`` (0/1 per
sample) next to ``predictions`` and ``references``.
"""

import datasets
import evaluate

from hf_debias.metrics.artifact import artifact_accuracy

_DESCRIPTION = """Accuracy on clean samples and on attacked samples (an artifact inserted into every image), and the
drop between them: how much a model relies on the artifact as a shortcut (RR-ClArC's controlled protocol)."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of int): predicted class ids.
    references (list of int): target class ids.
    attacked (list of int): 1 where the artifact was inserted, 0 for the clean copy.
Returns:
    clean_accuracy, attacked_accuracy, attack_drop.
Examples:
    >>> metric = evaluate.load(hf_debias.metrics.ARTIFACT_ACCURACY_MODULE)
    >>> metric.compute(predictions=[1, 0], references=[1, 1], attacked=[0, 1])["attack_drop"]
    1.0
"""

_CITATION = """@inproceedings{dreyer2024hope,
  title={From Hope to Safety: Unlearning Biases of Deep Models via Gradient Penalization in Latent Space},
  author={Dreyer, Maximilian and Pahde, Frederik and Anders, Christopher J. and Samek, Wojciech and Lapuschkin, Sebastian},
  booktitle={AAAI}, year={2024}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ArtifactAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Value("int64"),
                "references": datasets.Value("int64"),
                "attacked": datasets.Value("int64"),
            }),
        )

    def _compute(self, predictions, references, attacked):
        return artifact_accuracy(predictions, references, attacked)
