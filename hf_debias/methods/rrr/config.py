"""``RRRConfig``: the hyper-parameters of RRR (Ross et al., "Right for the Right Reasons", IJCAI 2017)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..._validation import check_choice, check_non_negative
from ...config import DebiasConfig
from ...freezing import FREEZE_POLICIES
from ...functional.rrr import RRR_AGGREGATIONS, RRR_GRADIENT_TARGETS


@dataclass
class RRRConfig(DebiasConfig):
    """RRR: ``loss = CE + lamb * mean_n ‖M_n ⊙ ∂/∂x_n Σ_k log p_k(x_n)‖²`` for a per-image mask ``M_n`` of
    the region that must not matter (1 = the artifact).

    Args:
        lamb: the penalty weight λ >= 0 (the RR-ClArC authors sweep 0.05 ... 1e7). 0 trains with cross-entropy
            only under the same freeze policy: the control a corrected model should be compared with.
        mask_column: the dataset column ``DebiasTrainer`` reads the masks from (``[H, W]`` or ``[1, H, W]`` per
            image, bool or values in [0, 1], the image's size).
        gradient_target: what is differentiated with respect to the input (``RRR_GRADIENT_TARGETS``):
            ``log_prob_sum``, Ross et al.'s ``Σ_k log p_k``, or ``official_logprobs``, the RR-ClArC code's
            ``mean_k log(softmax + 1e-5)``.
        aggregation: ``l2`` (Ross et al.: the squared input gradient inside the mask, summed over channels and
            pixels, averaged over the batch) or ``official_cosine`` (the RR-ClArC code's ``RRR_ExpLogSum``: the
            cosine similarity between ``|Σ_c gradient|`` and the mask, averaged over the batch).
        freeze: ``conv_norm`` (the RR-ClArC code: convolutions and norms frozen), ``before_layer`` (train only
            what follows ``layer``), or ``none`` (Ross et al.: everything trains).
        layer: only for ``freeze="before_layer"``: the last frozen layer (default: everything before the
            classifier head, which alone trains). The penalty itself always acts at the input.
    """

    debias_method: ClassVar[str] = "rrr"
    method_title: ClassVar[str] = "RRR (Right for the Right Reasons)"
    method_summary: ClassVar[str] = (
        "RRR (Ross et al., IJCAI 2017) fine-tunes the model with a penalty on the input gradient of its "
        "log-probabilities inside per-image masks of the artifact, so that the prediction stops depending on "
        "those pixels. The forward pass is unchanged.")

    lamb: float = 1.0
    mask_column: str = "artifact_mask"
    gradient_target: str = "log_prob_sum"
    aggregation: str = "l2"
    freeze: str = "conv_norm"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.lamb = check_non_negative("lamb", self.lamb)
        if not isinstance(self.mask_column, str) or not self.mask_column:
            raise ValueError(f"mask_column must be a dataset column name, got {self.mask_column!r}.")
        check_choice("gradient_target", self.gradient_target, RRR_GRADIENT_TARGETS)
        check_choice("aggregation", self.aggregation, RRR_AGGREGATIONS)
        check_choice("freeze", self.freeze, FREEZE_POLICIES)
        if self.layer is not None and self.freeze != "before_layer":
            raise ValueError(f"layer={self.layer!r} is only used with freeze='before_layer' (RRR's penalty acts "
                             f"at the input), not freeze={self.freeze!r}; remove it or choose "
                             "freeze='before_layer'.")
