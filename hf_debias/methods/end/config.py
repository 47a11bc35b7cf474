"""``EnDConfig``: the hyper-parameters of EnD (Tartaglione et al., CVPR 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..._validation import check_choice, check_non_negative
from ...config import DebiasConfig
from ...functional.end import PAIRINGS


@dataclass
class EnDConfig(DebiasConfig):
    """EnD: ``loss = CE + alpha * r_ortho + beta * r_par`` on the bottleneck features.

    Args:
        layer: the bottleneck (see ``DebiasConfig``); by default the pooled features entering the classifier.
        alpha: weight of the disentangling term (same-bias samples made orthogonal). >= 0.
        beta: weight of the entangling term (same-class, different-bias samples made parallel). >= 0.
        pairing: ``"all"`` (the paper's pair set) or ``"reference"`` (the official code's subset).
        normalize_forward: put the L2 normalisation into the forward pass at the bottleneck, as the paper's
            network does (the classifier then sees unit-norm features). ``False`` leaves the architecture
            untouched and normalises only inside the penalty. Default ``True``: on Colour-Digits it gained
            15-31 points over vanilla, ``False`` at most 4 (BENCHMARKS.md).
        global_batch: under distributed training (more than one process), compute the penalty on the batch
            gathered from every process, with gradients, so it equals the single-process penalty on the whole
            batch (default). ``False`` keeps a per-process penalty on each process's own micro-batch.
    """

    debias_method: ClassVar[str] = "end"
    method_title: ClassVar[str] = "EnD (Entangling and Disentangling)"
    method_summary: ClassVar[str] = (
        "EnD (Tartaglione et al., CVPR 2021) adds two Gram-matrix terms on the bottleneck features to the "
        "training loss: samples that share a bias label are pushed to orthogonal features, samples of one class "
        "with different bias labels to parallel ones, so that the features stop encoding the bias.")

    alpha: float = 1.0
    beta: float = 1.0
    pairing: str = "all"
    normalize_forward: bool = True
    global_batch: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.alpha = check_non_negative("alpha", self.alpha)
        self.beta = check_non_negative("beta", self.beta)
        check_choice("pairing", self.pairing, PAIRINGS)
        for name in ("normalize_forward", "global_batch"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}.")
