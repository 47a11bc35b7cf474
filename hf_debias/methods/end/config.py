"""``EnDConfig``: the hyper-parameters of EnD (Tartaglione et al., CVPR 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..._validation import check_choice, check_non_negative
from ...config import DebiasConfig
from ...functional.end import PAIRINGS
from .portable import NORMALIZE_FORMS


@dataclass
class EnDConfig(DebiasConfig):
    """EnD: ``loss = CE + alpha * r_ortho + beta * r_par`` on the bottleneck features.

    Args:
        layer: the bottleneck (see ``DebiasConfig``); by default the pooled features entering the classifier.
        alpha: weight of the disentangling term (same-bias samples made orthogonal). >= 0.
        beta: weight of the entangling term (same-class, different-bias samples made parallel). >= 0.
        pairing: ``"all"`` (the paper's pair set) or ``"reference"`` (the official code's subset).
        normalize_forward: where the bottleneck is L2-normalised in the forward pass (the paper's network feeds
            unit-norm features to the classifier):

            - ``"train"`` (portable): in the training forward only. The classifier head's bias is set to 0 and
              frozen while EnD is attached (``unload()`` leaves it at 0), so the plain network that is evaluated,
              saved and loaded by plain timm / transformers / ``pipeline`` computes ``W·f`` where training computed
              ``W·f/||f||``: the same class ranking and predictions, un-normalised scores (calibration differs).
              Exact only when the bottleneck is the input of a linear head; elsewhere it raises ``ValueError``.
            - ``"always"``: in every forward (training and deployment). The saved repo is guarded: only
              ``hf_debias.load_model`` restores it.
            - ``"never"``: only inside the penalty; the architecture is untouched (portable too).
            - ``None`` (default): ``"train"`` where it is exact, else ``"always"`` with a warning. The model's
              method records the resolved value (``DebiasModel.method.config``).

            ``True`` / ``False`` (older configs and code) mean ``"always"`` / ``"never"``. On
            Colour-Digits ``"always"`` gained 15-31 points over vanilla, ``"never"`` at most 4 (BENCHMARKS.md §1);
            ``"train"`` vs ``"always"``: BENCHMARKS.md §1c.
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
    normalize_forward: str | None = None
    global_batch: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.alpha = check_non_negative("alpha", self.alpha)
        self.beta = check_non_negative("beta", self.beta)
        check_choice("pairing", self.pairing, PAIRINGS)
        if isinstance(self.normalize_forward, bool):  # older configs and code
            self.normalize_forward = "always" if self.normalize_forward else "never"
        elif self.normalize_forward is not None and self.normalize_forward not in NORMALIZE_FORMS:
            raise ValueError(f"normalize_forward={self.normalize_forward!r} is not valid; choose one of: "
                             f"{', '.join(map(repr, NORMALIZE_FORMS))}, None (the default: 'train' where exact), or "
                             "True / False (= 'always' / 'never').")
        if not isinstance(self.global_batch, bool):
            raise ValueError(f"global_batch must be True or False, got {self.global_batch!r}.")

    def card_notes(self) -> list[str]:
        """What a model card must tell a user about this config's saved network (one paragraph each)."""
        if self.normalize_forward == "train":
            return ["Trained with EnD's L2 normalisation of the classifier's input in the training forward pass "
                    "only, with the classifier's bias fixed at 0 (`normalize_forward=\"train\"`). The saved network "
                    "is the plain architecture: it computes `W·f` where training computed `W·f/||f||`, so its class "
                    "predictions and the whole class ranking equal the trained network's, in every loader. Its "
                    "scores are un-normalised logits, so softmax probabilities (calibration) differ from the "
                    "training-time network's."]
        if self.normalize_forward == "always":
            return ["The L2 normalisation of EnD's bottleneck is part of this network's forward pass "
                    "(`normalize_forward=\"always\"`, the paper's network); only `hf_debias.load_model` rebuilds it."]
        return []
