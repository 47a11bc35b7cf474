"""P-ClArC and A-ClArC on a model: a forward hook that moves the layer's activation along the CAV."""

from __future__ import annotations

import torch
from torch import nn

from ...freezing import FrozenParameters
from ...hooks import LayerHook
from ..base import Penalty
from ..cav_method import CAVMethod
from .config import AClArCConfig, PClArCConfig


def _statistic(value: float | None, name: str, cav) -> float:
    if value is None:
        raise ValueError(f"The CAV {cav.concept or ''} has no {name} (the mean projection of its samples); "
                         "compute it with hf_debias.compute_cav or CAV.fit, which record it.")
    return value


class _ShiftMethod(CAVMethod):
    """Shift each sample's activation so that its pooled projection on the CAV equals ``target``."""

    target_statistic: str

    def __init__(self, model: nn.Module, config):
        super().__init__(model, config)
        self.target = _statistic(getattr(self.cav, self.target_statistic), self.target_statistic, self.cav)
        self.hook = LayerHook(self.layer, transform=self._shift)

    def shifts(self) -> bool:
        return True

    def _shift(self, activation: torch.Tensor) -> torch.Tensor:
        self.check_channels(activation)
        if not self.shifts():
            return activation
        return self.cav.shift_to(activation, self.target)

    def begin_forward(self) -> None:
        self.hook.reset()

    def penalty(self, *, logits: torch.Tensor, labels: torch.Tensor,
                bias_labels: torch.Tensor | None) -> Penalty:
        return Penalty(total=logits.new_zeros((), dtype=torch.float32), terms={})

    def remove(self) -> None:
        self.hook.remove()


class PClArC(_ShiftMethod):
    """Projects every sample to the clean mean μ⁻, in training and evaluation (the correction is the model)."""

    config_class = PClArCConfig
    target_statistic = "clean_mean"

    @property
    def alters_forward(self) -> bool:
        return True


class AClArC(_ShiftMethod):
    """Moves every training sample to the concept mean μ⁺ (augmentation); evaluation sees the plain model."""

    config_class = AClArCConfig
    target_statistic = "concept_mean"

    def __init__(self, model: nn.Module, config: AClArCConfig):
        super().__init__(model, config)
        self.frozen = FrozenParameters(model, config.freeze, self.layer)

    def shifts(self) -> bool:
        return self.model.training

    def on_train(self, mode: bool) -> None:
        self.frozen.keep_eval_modes()

    def remove(self) -> None:
        super().remove()
        self.frozen.restore()
