"""A minimal plain-PyTorch fit / predict loop on in-memory tensors, used by the demo and the benchmarks.

It is the "timm loop" path in its smallest form: any classifier, or a ``DebiasModel`` whose ``forward`` adds
the penalty to the loss. For datasets on disk and full features use ``DebiasTrainer``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from .loading import model_device
from .model import DebiasModel, logits_of


def images_to_tensor(images: np.ndarray, mean: float = 0.5, std: float = 0.5) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` images to a normalised float ``[N, C, H, W]`` tensor."""
    tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return tensor.sub_(mean).div_(std).contiguous()


@dataclass
class FitConfig:
    """Optimisation settings of ``fit`` (defaults follow the EnD paper's Biased-MNIST runs: Adam, lr 1e-3,
    weight decay 1e-4, batch 256)."""

    epochs: float = 2.0
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str | None = None
    """Where to train (``"cuda"``, ``"cpu"``); ``None`` keeps the model where it is. Batches are moved there."""


@dataclass
class FitHistory:
    """Per-step training losses: ``loss`` always, plus ``ce_loss`` and the penalty terms for a DebiasModel."""

    steps: int = 0
    losses: dict[str, list[float]] = field(default_factory=dict)

    def add(self, **values: float) -> None:
        self.steps += 1
        for key, value in values.items():
            self.losses.setdefault(key, []).append(value)

    def last_mean(self, key: str, window: int = 50) -> float:
        values = self.losses.get(key, [])[-window:]
        return float(np.mean(values)) if values else float("nan")


def training_loss(model: nn.Module, pixel_values: torch.Tensor, labels: torch.Tensor,
                  bias_labels: torch.Tensor, masks: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """The loss of one batch and its parts for logging: a DebiasModel's own loss (``masks`` reach the methods that
    need them, RRR), else cross-entropy."""
    if isinstance(model, DebiasModel):
        out = model(pixel_values, labels=labels, bias_labels=bias_labels, masks=masks)
        parts = {"ce_loss": out.ce_loss.item(), **{k: v.item() for k, v in (out.penalty_terms or {}).items()}}
        return out.loss, parts
    loss = F.cross_entropy(logits_of(model(pixel_values)).float(), labels)
    return loss, {"ce_loss": loss.item()}


def fit(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, bias_labels: torch.Tensor,
        config: FitConfig | None = None, *, masks: torch.Tensor | None = None, progress: bool = True,
        desc: str = "train") -> FitHistory:
    """Train ``model`` in place with Adam on shuffled mini-batches; ``epochs`` may be fractional. ``masks``
    (``[N, H, W]``, one per image) are passed, batch by batch, to a wrapper whose method needs them (RRR)."""
    config = config or FitConfig()
    if masks is not None and masks.shape[0] != images.shape[0]:
        raise ValueError(f"masks has {masks.shape[0]} entries for {images.shape[0]} images.")
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = images.shape[0]
    steps_per_epoch = max(1, n // config.batch_size)
    total_steps = max(1, int(round(config.epochs * steps_per_epoch)))
    history = FitHistory()
    if config.device is not None:
        model.to(config.device)
    device = model_device(model)
    model.train()
    order = torch.randperm(n, generator=generator)
    cursor = 0
    bar = tqdm(total=total_steps, desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    for _ in range(total_steps):
        if cursor + config.batch_size > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        index = order[cursor:cursor + config.batch_size]
        cursor += config.batch_size
        loss, parts = training_loss(model, images[index].to(device), labels[index].to(device),
                                    bias_labels[index].to(device),
                                    None if masks is None else masks[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.add(loss=loss.item(), **parts)
        bar.update(1)
        if history.steps % 20 == 0:
            bar.set_postfix({key: f"{history.last_mean(key, 20):.3f}" for key in history.losses})
    bar.close()
    return history


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Predicted class ids for ``images`` (eval mode, no gradients)."""
    model.eval()
    device = model_device(model)
    outputs = [logits_of(model(images[start:start + batch_size].to(device))).argmax(dim=1)
               for start in range(0, images.shape[0], batch_size)]
    return torch.cat(outputs).cpu().numpy()
