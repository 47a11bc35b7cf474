"""Image transforms from a model's own preprocessing: ``list[PIL.Image] -> pixel_values`` tensors.

Training transforms follow timm's ``train.py`` (``create_transform(**data_config, is_training=True)``: random
resized crop, flip, colour jitter) and transformers' ``run_image_classification.py`` (the image processor's size,
mean and std with ``RandomResizedCrop`` + ``RandomHorizontalFlip``; ``Resize`` + ``CenterCrop`` for evaluation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

ImageBatchTransform = Callable[[Sequence], torch.Tensor]
"""``list[PIL.Image] -> Tensor[N, C, H, W]``."""


def _timm_model(model: nn.Module) -> nn.Module | None:
    from ..loading import unwrap_model

    model = unwrap_model(model)
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        return model
    inner = getattr(model, "timm_model", None)  # transformers' TimmWrapper
    return inner if isinstance(getattr(inner, "pretrained_cfg", None), dict) else None


class _Batched:
    """``list[PIL.Image] -> Tensor[N, C, H, W]`` through a per-image ``transform`` (kept, so that
    ``mask_transform_for`` can read its geometric steps)."""

    def __init__(self, transform: Callable, mode: str):
        self.transform, self.mode = transform, mode

    def __call__(self, images: Sequence) -> torch.Tensor:
        return torch.stack([self.transform(image.convert(self.mode)) for image in images])


def _batched(transform: Callable, mode: str) -> ImageBatchTransform:
    return _Batched(transform, mode)


def mask_transform_for(image_transform: ImageBatchTransform) -> Callable[[Sequence], torch.Tensor]:
    """``list[PIL mask] -> Tensor[N, H, W]`` of 0/1 floats that lands every mask pixel where
    ``image_transform`` (an evaluation transform of ``train_eval_transforms``) puts the image's: its resizes (with
    nearest-neighbour interpolation, so a mask stays binary) and centre crops. Any non-zero mask value marks the
    region. A random step (crop, flip, jitter) cannot be followed and is an error."""
    from torchvision import transforms as T

    steps = getattr(getattr(image_transform, "transform", None), "transforms", None)
    if steps is None:
        raise ValueError("Masks need the image transform's steps (a torchvision Compose from train_eval_transforms); "
                         f"got {type(image_transform).__name__}.")
    geometric = []
    for step in steps:
        name = type(step).__name__
        if name.startswith(("Random", "RandAugment", "AutoAugment", "TrivialAugment", "ColorJitter")):
            raise ValueError(f"Masks cannot follow the random image step {name}: train with the evaluation transform "
                             "(--no_augment) so that each mask stays on its image.")
        if isinstance(step, T.Resize):
            geometric.append(T.Resize(step.size, interpolation=T.InterpolationMode.NEAREST, max_size=step.max_size))
        elif isinstance(step, T.CenterCrop):
            geometric.append(step)
        elif name not in ("ToTensor", "MaybeToTensor", "Normalize", "PILToTensor", "ConvertImageDtype"):
            raise ValueError(f"Masks cannot follow the image step {name}; only resizes and centre crops are applied "
                             "to masks.")
    geometric = T.Compose(geometric)

    def transform(masks: Sequence) -> torch.Tensor:
        import numpy as np

        return torch.stack([torch.from_numpy((np.asarray(geometric(mask.convert("L"))) > 0).astype(np.float32))
                            for mask in masks])
    return transform


def timm_data_config(model: nn.Module, image_size: int | None = None) -> dict:
    """timm's resolved data config of ``model`` (``input_size`` replaced by ``image_size`` when given)."""
    import timm

    config = timm.data.resolve_data_config({}, model=model)
    if image_size is not None:
        config["input_size"] = (config["input_size"][0], image_size, image_size)
    return config


def processor_size(processor) -> int | tuple[int, int]:
    """The image size a transformers image processor produces: ``shortest_edge`` or ``(height, width)``
    (its ``crop_size`` when it crops)."""
    def get(size, key):
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None)
    if size is None:
        raise ValueError(f"{type(processor).__name__} has no size; pass --image_size.")
    if get(size, "shortest_edge"):
        return int(get(size, "shortest_edge"))
    if get(size, "height") and get(size, "width"):
        return int(get(size, "height")), int(get(size, "width"))
    raise ValueError(f"Cannot read an image size from {type(processor).__name__}.size={size!r}; pass --image_size.")


def train_eval_transforms(model: nn.Module, name_or_path: str | None = None, *, augment: bool = True,
                          image_size: int | None = None, processor=None,
                          ) -> tuple[ImageBatchTransform, ImageBatchTransform]:
    """The training and the evaluation transform for ``model``.

    timm models (and TimmWrapper): ``timm.data.create_transform`` on the model's resolved data config, with
    ``is_training=True`` for training. transformers models: the image processor's (``processor``, else the one of
    ``name_or_path`` or of the model) size, mean and std with ``RandomResizedCrop`` + ``RandomHorizontalFlip``
    for training and ``Resize`` + ``CenterCrop`` for evaluation. ``augment=False``: both are the evaluation one.
    ``image_size`` replaces the model's input size.
    """
    timm_model = _timm_model(model)
    if timm_model is not None:
        import timm

        config = timm_data_config(timm_model, image_size)
        mode = "L" if config["input_size"][0] == 1 else "RGB"
        evaluation = _batched(timm.data.create_transform(**config), mode)
        if not augment:
            return evaluation, evaluation
        return _batched(timm.data.create_transform(**config, is_training=True), mode), evaluation
    from torchvision import transforms as T

    processor = processor if processor is not None else _processor_for(model, name_or_path)
    size = image_size if image_size is not None else processor_size(processor)
    steps = [T.ToTensor()]
    if getattr(processor, "do_normalize", True) and getattr(processor, "image_mean", None) is not None:
        steps.append(T.Normalize(mean=processor.image_mean, std=processor.image_std))
    evaluation = _batched(T.Compose([T.Resize(size), T.CenterCrop(size), *steps]), "RGB")
    if not augment:
        return evaluation, evaluation
    return _batched(T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), *steps]), "RGB"), evaluation


def _processor_for(model: nn.Module, name_or_path: str | None):
    from ..loading import load_image_processor, model_identity

    source = name_or_path or model_identity(model)[0]
    if source is None:
        raise ValueError(f"Cannot tell which image processor {type(model).__name__} needs; pass pixel_values.")
    return load_image_processor(source)


def image_transform_for(model: nn.Module, name_or_path: str | None = None) -> ImageBatchTransform:
    """The model's own evaluation preprocessing as ``list[PIL.Image] -> pixel_values``: timm's resolved data
    config for timm models, else the transformers image processor of ``name_or_path`` (default: the model's own),
    applied as the processor itself does."""
    if _timm_model(model) is not None:
        return train_eval_transforms(model, augment=False)[1]
    processor = _processor_for(model, name_or_path)
    return lambda images: processor([image.convert("RGB") for image in images], return_tensors="pt")["pixel_values"]
