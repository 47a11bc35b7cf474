"""``PClArCConfig`` and ``AClArCConfig``: the ClArC baselines that move activations along a CAV instead of
penalising gradients (Anders et al., "Finding and removing Clever Hans", Information Fusion 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..._validation import check_choice
from ...freezing import FREEZE_POLICIES
from ..cav_method import CAVConfig


@dataclass
class PClArCConfig(CAVConfig):
    """P-ClArC: training-free. At the layer every sample is shifted along the CAV ``h`` so that its projection
    equals the clean mean μ⁻ (``a ← a + (μ⁻ − h·pool(a)) h``). The projection is part of the corrected model,
    in training and in evaluation."""

    debias_method: ClassVar[str] = "pclarc"
    method_title: ClassVar[str] = "P-ClArC (Projective ClArC)"
    method_summary: ClassVar[str] = (
        "P-ClArC (Anders et al., Information Fusion 2022) moves every sample's activation at one layer along the "
        "bias CAV to the mean of samples without the bias; the projection is part of the corrected model.")


@dataclass
class AClArCConfig(CAVConfig):
    """A-ClArC: during fine-tuning (cross-entropy only) every sample is shifted to the concept mean μ⁺
    (``a ← a + (μ⁺ − h·pool(a)) h``), so the model learns to ignore the concept; the shift is off in evaluation.

    Args:
        freeze: which parameters fine-tune (see ``RRClArCConfig``); ``conv_norm`` by default, as in the paper.
    """

    debias_method: ClassVar[str] = "aclarc"
    method_title: ClassVar[str] = "A-ClArC (Augmentative ClArC)"
    method_summary: ClassVar[str] = (
        "A-ClArC (Anders et al., Information Fusion 2022) fine-tunes the model on samples whose activation at one "
        "layer is moved along the bias CAV to the mean of biased samples, so that the bias stops being "
        "informative. The forward pass is unchanged after training.")

    freeze: str = "conv_norm"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_choice("freeze", self.freeze, FREEZE_POLICIES)
