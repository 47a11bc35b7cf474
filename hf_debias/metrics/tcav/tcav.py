"""TCAV: the TCAV score (share of positive directional derivatives along a CAV) and TCAV sensitivities (their mean
absolute value), from precomputed directional derivatives ``∇_a f_c · h``.

Load offline with ``evaluate.load(hf_debias.metrics.TCAV_MODULE)`` for one derivative per sample (``[N]``, from
``hf_debias.metrics.directional_derivatives(model, layer, cav, images, target_class)``), or with
``evaluate.load(hf_debias.metrics.TCAV_MODULE, "per_position")`` for one list per sample (``[N, P]``, from
``directional_derivatives(..., per_position=True)``), which adds the authors' ``tcav_position_sensitivity``.
"""

import datasets
import evaluate

from hf_debias.metrics.artifact import tcav

_DESCRIPTION = """TCAV score and sensitivities of a class to a concept: for samples showing the concept, the share of
positive directional derivatives of the class logit along the concept's CAV (about 0.5 after a good correction),
the mean absolute derivative along the spatially averaged activation (tcav_pooled_sensitivity) and, from
per-position derivatives, the authors' mean over samples and positions (tcav_position_sensitivity); lower is
better."""

_KWARGS_DESCRIPTION = """
Args:
    predictions (list of float, or of lists of float with the "per_position" config): directional derivatives, one
        per sample (or one per sample and position).
Returns:
    tcav_score, tcav_pooled_sensitivity, and with "per_position" tcav_position_sensitivity.
Examples:
    >>> metric = evaluate.load(hf_debias.metrics.TCAV_MODULE)
    >>> metric.compute(predictions=[0.5, -0.25, 1.0])["tcav_score"]
    0.6666666666666666
"""

_CITATION = """@inproceedings{kim2018interpretability,
  title={Interpretability Beyond Feature Attribution: Quantitative Testing with Concept Activation Vectors (TCAV)},
  author={Kim, Been and Wattenberg, Martin and Gilmer, Justin and Cai, Carrie and Wexler, James and Viegas, Fernanda
          and Sayres, Rory}, booktitle={ICML}, year={2018}}"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TCAV(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Sequence(datasets.Value("float64"))
                                        if self.config_name == "per_position" else datasets.Value("float64")}),
        )

    def _compute(self, predictions):
        return tcav(predictions)
