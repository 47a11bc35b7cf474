"""``simple_convnet``: the small CNN of the EnD / ReBias Biased-MNIST experiments, as a timm model.

Four conv-BN blocks (the last with Tanh, so that pooled features can take both signs and EnD's orthogonality
term can reach 0), global average pooling and a linear head. 3x3 kernels and strides 1-2-2-1 keep it cheap on
a CPU (about 17 s per 60,000-image epoch at 16x16 on 2 cores). Importing ``hf_debias`` registers it, so
``timm.create_model("simple_convnet", num_classes=10)`` works.
"""

from __future__ import annotations

import torch
from torch import nn
from timm.layers import SelectAdaptivePool2d
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model


class SimpleConvNet(nn.Module):
    """A timm-style classifier: ``forward_features`` / ``forward_head`` / ``get_classifier`` / ``feature_info``."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, widths: tuple[int, ...] = (16, 32, 64, 128),
                 kernel_size: int = 3, global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = widths[-1]
        self.drop_rate = drop_rate
        strides = (1, 2, 2, 1)
        blocks, channels, reduction = [], in_chans, 1
        self.feature_info = []
        for index, (width, stride) in enumerate(zip(widths, strides)):
            last = index == len(widths) - 1
            blocks.append(nn.Sequential(
                nn.Conv2d(channels, width, kernel_size, stride=stride, padding=kernel_size // 2, bias=False),
                nn.BatchNorm2d(width),
                nn.Tanh() if last else nn.ReLU(inplace=True),
            ))
            channels, reduction = width, reduction * stride
            self.feature_info.append({"num_chs": width, "reduction": reduction, "module": f"stages.{index}"})
        self.stages = nn.Sequential(*blocks)
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        if self.drop_rate:
            x = nn.functional.dropout(x, p=self.drop_rate, training=self.training)
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


default_cfgs = generate_default_cfgs({
    "simple_convnet": {
        "num_classes": 10, "input_size": (3, 16, 16), "pool_size": (4, 4), "interpolation": "bilinear",
        "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5), "first_conv": "stages.0.0", "classifier": "fc",
        "crop_pct": 1.0,
    },
})


@register_model
def simple_convnet(pretrained: bool = False, **kwargs) -> SimpleConvNet:
    """The EnD paper's small Biased-MNIST CNN (strided for CPU speed); ``pretrained`` weights do not exist."""
    return build_model_with_cfg(SimpleConvNet, "simple_convnet", pretrained, feature_cfg={"flatten_sequential": True},
                                **kwargs)
