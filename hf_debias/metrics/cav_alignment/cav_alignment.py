"""CAV alignment: the cosine between a CAV and the activation change an artifact causes, ``a(φ(x)) − a(x)``.

Load offline with ``evaluate.load(hf_debias.metrics.CAV_ALIGNMENT_MODULE)``; pass the pooled activations of the
images with the artifact as ``predictions``, those of the same images without it as ``references``, and the
CAV vector as ``cav`` to ``compute``.
"""

import datasets
import evaluate

from hf_debias.metrics.artifact import cav_alignment

_DESCRIPTION = """How well a concept activation vector points along the true change the concept causes: the mean
per-sample cosine between the CAV and a(x with artifact) - a(x), and the cosine with the mean change."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of list of float): pooled activations of images with the artifact.
    references (list of list of float): pooled activations of the same images without it.
    cav (list of float): the concept direction.
Returns:
    alignment, alignment_of_means.
Examples:
    >>> metric = evaluate.load(hf_debias.metrics.CAV_ALIGNMENT_MODULE)
    >>> metric.compute(predictions=[[1.0, 1.0]], references=[[0.0, 1.0]], cav=[1.0, 0.0])["alignment"]
    1.0
"""

_CITATION = """@inproceedings{pahde2025navigating,
  title={Navigating Neural Space: Revisiting Concept Activation Vectors to Overcome Directional Divergence},
  author={Pahde, Frederik and Dreyer, Maximilian and Weckbecker, Moritz and Weber, Leander and Anders, Christopher J.
          and Wiegand, Thomas and Samek, Wojciech and Lapuschkin, Sebastian}, booktitle={ICLR}, year={2025}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class CAVAlignment(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Value("float64")),
                "references": datasets.Sequence(datasets.Value("float64")),
            }),
        )

    def _compute(self, predictions, references, cav):
        import torch

        return cav_alignment(torch.tensor(cav), torch.tensor(references), torch.tensor(predictions))
