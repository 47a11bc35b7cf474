"""Artifact relevance R_bias: the share of each heatmap's absolute relevance inside the artifact's mask (RR-ClArC).

Load offline with ``evaluate.load(hf_debias.metrics.ARTIFACT_RELEVANCE_MODULE)`` for ``[H, W]`` heatmaps, or with
``evaluate.load(hf_debias.metrics.ARTIFACT_RELEVANCE_MODULE, "attributions")`` for ``[C, H, W]`` attributions
(from ``hf_debias.attribution.attribute``), summed over channels; the references are the ``[H, W]`` masks.
"""

import datasets
import evaluate

from hf_debias.metrics.artifact_relevance import artifact_relevance

_DESCRIPTION = """Artifact relevance R_bias = Σ|heatmap · M| / Σ|heatmap| per image, the heatmap being the input
attribution summed over channels and M the artifact's mask, processed as the RR-ClArC authors do (binarised at 0.1
of its maximum, Gaussian blur, binarised at 0.3); the mean over images, lower is better after a correction. An
all-zero heatmap gives NaN and is left out of the mean."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of [H, W] heatmaps, or of [C, H, W] attributions with the "attributions" config).
    references (list of [H, W] masks): 1 (or any value > 0) marks the artifact.
    process_masks (bool, default True): apply the authors' mask processing first.
Returns:
    artifact_relevance (the mean), per_image, num_zero_heatmaps.
Examples:
    >>> metric = evaluate.load(hf_debias.metrics.ARTIFACT_RELEVANCE_MODULE)
    >>> metric.compute(predictions=[[[1.0, -3.0]]], references=[[[0, 1]]], process_masks=False)["artifact_relevance"]
    0.75
"""

_CITATION = """@inproceedings{dreyer2024hope,
  title={From Hope to Safety: Unlearning Biases of Deep Models via Gradient Penalization in Latent Space},
  author={Dreyer, Maximilian and Pahde, Frederik and Anders, Christopher J. and Samek, Wojciech and
          Lapuschkin, Sebastian}, booktitle={AAAI}, year={2024}}"""


def _nested(depth: int):
    feature = datasets.Value("float64")
    for _ in range(depth):
        feature = datasets.Sequence(feature)
    return feature


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class ArtifactRelevance(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": _nested(3 if self.config_name == "attributions" else 2),
                                        "references": _nested(2)}),
        )

    def _compute(self, predictions, references, process_masks=True):
        return artifact_relevance(predictions, references, process_masks=process_masks)
