"""``RRClArCConfig``: the hyper-parameters of RR-ClArC (Dreyer et al., AAAI 2024)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..._validation import check_choice, check_non_negative
from ...freezing import FREEZE_POLICIES
from ...functional.rr_clarc import AGGREGATIONS, FINITE_DIFFERENCE_AGGREGATIONS, GRADIENT_TARGETS, PENALTY_FORMS
from ..cav_method import CAVConfig


@dataclass
class RRClArCConfig(CAVConfig):
    """RR-ClArC: ``loss = CE + lamb * (∇_a [m · f̃(a)] · h)²`` at the layer, for the CAV ``h``.

    Args:
        layer: where the CAV lives (default: the CAV's own layer, else the classifier's input).
        cav: a ``CAV``, a folder or a Hub repo id (see ``CAVConfig``).
        lamb: the penalty weight λ >= 0 (the paper sweeps 0.05 ... 1e8). 0 trains with cross-entropy only
            under the same freeze policy: the control every corrected model should be compared with.
        gradient_target: what is differentiated (``GRADIENT_TARGETS``; the paper's default ``random_signs``;
            ``official_logprobs`` reproduces the official code's ``logprobs``, ``log(softmax + 1e-5)``, which on a
            confident model differs from the exact ``mean_log_prob``).
        target_class: the class for ``gradient_target="class"``.
        aggregation: ``l2_mean`` (the paper's loss) or another of ``AGGREGATIONS``.
        freeze: ``conv_norm`` (the paper: convolutions and norms frozen, the rest trained), ``before_layer``
            (train only what follows the layer), or ``none``.
        penalty_form: how the output's response along the CAV is measured (``PENALTY_FORMS``): ``gradient`` (the
            paper: the latent gradient, double backward), ``finite_difference`` (the output change between the
            activation moved to the concept mean and to the clean mean, over that distance: what the concept does,
            not a local slope), or ``auto`` (the default): ``finite_difference`` on a vision transformer
            (``hf_debias.token_models``), where the gradient form was measured to leave a patch shortcut whole,
            ``gradient`` elsewhere. The model resolves ``auto`` when the correction is bound to it, and the
            resolved form is what is saved.
    """

    debias_method: ClassVar[str] = "rrclarc"
    method_title: ClassVar[str] = "RR-ClArC (Right Reason ClArC)"
    method_summary: ClassVar[str] = (
        "RR-ClArC (Dreyer et al., AAAI 2024) fine-tunes the model with a penalty on the gradient of its output "
        "along the bias concept activation vector (CAV) at one layer, so that the output stops responding to "
        "the bias concept. The forward pass is unchanged.")

    lamb: float = 1.0
    gradient_target: str = "random_signs"
    target_class: int | None = None
    aggregation: str = "l2_mean"
    freeze: str = "conv_norm"
    penalty_form: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.lamb = check_non_negative("lamb", self.lamb)
        check_choice("gradient_target", self.gradient_target, GRADIENT_TARGETS)
        check_choice("aggregation", self.aggregation, AGGREGATIONS)
        check_choice("freeze", self.freeze, FREEZE_POLICIES)
        check_choice("penalty_form", self.penalty_form, ("auto", *PENALTY_FORMS))
        if self.penalty_form == "finite_difference":
            check_finite_difference_aggregation(self.aggregation, self.penalty_form)
        if self.gradient_target == "class":
            if isinstance(self.target_class, bool) or not isinstance(self.target_class, int) or self.target_class < 0:
                raise ValueError(f"gradient_target='class' needs target_class, a class index >= 0; got "
                                 f"{self.target_class!r}.")
        elif self.target_class is not None:
            raise ValueError(f"target_class={self.target_class} is only used with gradient_target='class', not "
                             f"{self.gradient_target!r}.")


def check_finite_difference_aggregation(aggregation: str, penalty_form: str) -> None:
    """Refuse an aggregation that has no finite-difference form (the cosine ones)."""
    if aggregation not in FINITE_DIFFERENCE_AGGREGATIONS:
        raise ValueError(f"aggregation={aggregation!r} has no finite-difference form (penalty_form={penalty_form!r}; "
                         "'auto' is 'finite_difference' on vision transformers); choose one of "
                         f"{list(FINITE_DIFFERENCE_AGGREGATIONS)} or penalty_form='gradient'.")
