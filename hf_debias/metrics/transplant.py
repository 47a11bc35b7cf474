"""The artifact transplant check: re-check a correction without an attacked split (the RR-ClArC authors' re-check).

A user's data has no ``test_attacked`` split. What it has: some images that show the artifact, with a mask of where
it is (a mask column, or a mask drawn by hand). ``transplant_artifact`` pastes each donor's masked region into
clean images; ``artifact_transplant_check`` compares a model's predictions on the clean and the transplanted
images: accuracy on both, and the **flip rate** — the share of images of other classes, predicted as something else
when clean, that the pasted artifact turns into the artifact's class. A model that learned the shortcut flips many;
a corrected one few. Run it on validation or training images, never on a test split.

BENCHMARKS §4h validates it against the controlled benchmark's ground truth (``test_attacked``).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..loading import model_device
from ..outputs import logits_of


def transplant_artifact(images: torch.Tensor, donors: torch.Tensor, donor_masks: torch.Tensor, *,
                        seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste a random donor's masked region into every image: ``x' = x (1 - m) + donor m``.

    Args:
        images: ``[N, C, H, W]`` clean images (preprocessed as the model expects).
        donors: ``[M, C, H, W]`` images that show the artifact, preprocessed the same way.
        donor_masks: ``[M, H, W]``, 1 (or True) where the donor's artifact is; soft masks in [0, 1] blend.
        seed: which donor each image gets.

    Returns ``(transplanted images, the donor index of each image)``.
    """
    if images.dim() != 4 or donors.dim() != 4 or images.shape[1:] != donors.shape[1:]:
        raise ValueError(f"images and donors must be [N, C, H, W] of one size, got {tuple(images.shape)} and "
                         f"{tuple(donors.shape)}.")
    if donor_masks.shape != (donors.shape[0], *donors.shape[2:]):
        raise ValueError(f"donor_masks must be [M, H, W] = {[donors.shape[0], *donors.shape[2:]]} (one per donor, "
                         f"the donors' size), got {list(donor_masks.shape)}.")
    if donors.shape[0] == 0:
        raise ValueError("No donor images: the transplant needs images that show the artifact, with masks.")
    masks = donor_masks.to(images.dtype)
    if not bool(((masks >= 0) & (masks <= 1)).all()):
        raise ValueError("donor_masks must lie in [0, 1] (1: the artifact).")
    empty = masks.flatten(1).sum(dim=1) == 0
    if bool(empty.all()):
        raise ValueError("Every donor mask is empty: there is no artifact region to paste.")
    usable = torch.nonzero(~empty).flatten()
    generator = torch.Generator().manual_seed(seed)
    index = usable[torch.randint(0, usable.numel(), (images.shape[0],), generator=generator)]
    mask = masks[index][:, None].to(images.device)
    return images * (1 - mask) + donors[index].to(images.device) * mask, index


@torch.no_grad()
def _predict(model: nn.Module, images: torch.Tensor, batch_size: int) -> tuple[np.ndarray, int]:
    """Predicted class ids and the number of classes (the logits' width)."""
    device = model_device(model)
    logits = [logits_of(model(images[start:start + batch_size].to(device))).cpu()
              for start in range(0, images.shape[0], batch_size)]
    return torch.cat([batch.argmax(dim=1) for batch in logits]).numpy(), logits[0].shape[1]


def artifact_transplant_check(model: nn.Module, images: torch.Tensor, labels, donors: torch.Tensor,
                              donor_masks: torch.Tensor, *, target_class: int | None = None, repeats: int = 1,
                              seed: int = 0, batch_size: int = 256) -> dict[str, float]:
    """Clean vs transplanted accuracy of ``model`` and the flip rate towards the artifact's class.

    Args:
        images, labels: clean validation (or training) images ``[N, C, H, W]`` and their class ids.
        donors, donor_masks: images with the artifact and its masks (see ``transplant_artifact``).
        target_class: the class the artifact was tied to; needed for the flip rate.
        repeats: transplants per image, each with other donors (results averaged).

    Returns ``clean_accuracy``, ``transplanted_accuracy``, ``transplant_drop`` (their difference) and, with
    ``target_class``, ``flip_rate``: among images of other classes that the model does *not* predict as
    ``target_class`` when clean, the share predicted as ``target_class`` once the artifact is pasted in;
    ``num_images`` and ``num_flip_candidates`` say what they rest on.
    """
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != images.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels.")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}.")
    was_training = model.training
    model.eval()
    try:
        clean, num_classes = _predict(model, images, batch_size)
        if target_class is not None and not (isinstance(target_class, (int, np.integer))
                                             and 0 <= target_class < num_classes):
            raise ValueError(f"target_class must be a class id of the model, 0 to {num_classes - 1}; got "
                             f"{target_class!r}.")
        transplanted = [_predict(model, transplant_artifact(images, donors, donor_masks, seed=seed + r)[0],
                                 batch_size)[0] for r in range(repeats)]
    finally:
        model.train(was_training)
    result = {"clean_accuracy": float((clean == labels).mean()),
              "transplanted_accuracy": float(np.mean([(pred == labels).mean() for pred in transplanted])),
              "num_images": int(labels.shape[0])}
    result["transplant_drop"] = result["clean_accuracy"] - result["transplanted_accuracy"]
    if target_class is not None:
        candidates = (labels != target_class) & (clean != target_class)
        result["num_flip_candidates"] = int(candidates.sum())
        result["flip_rate"] = float(np.mean([(pred[candidates] == target_class).mean() for pred in transplanted])) \
            if candidates.any() else float("nan")
    return result
