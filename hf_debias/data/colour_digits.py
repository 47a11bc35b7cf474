"""Colour-Digits: a Biased-MNIST-style benchmark (ReBias protocol, as used by EnD) that builds offline.

Each digit is drawn in white on a background of one of ten colours. In training a fraction ``rho`` of every
class gets its class colour (the bias) and the rest are spread evenly over ``n_confusing_colours`` other
colours (the bias-conflicting samples). The unbiased test set draws colours independently of the digit
(``rho = 0.1``), the biased test set always uses the class colour (``rho = 1``).

The default source is the 1,797 8x8 digits that ship with scikit-learn. They are split into disjoint train /
validation / test *base* digits, upsampled to ``image_size`` and turned into many distinct images by random
affine transforms (rotation, scale, shear, translation), so that the training set is as large as MNIST's and
the number of bias-conflicting images at each ``rho`` matches the 60,000-image Biased-MNIST setting. A folder
with the real MNIST idx files builds the real Biased-MNIST through the same function (``source=folder``).
"""

from __future__ import annotations

import gzip
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._validation import check_choice

COLOURS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (0, 255, 0), (0, 0, 255), (225, 225, 0), (225, 0, 225),
    (0, 255, 255), (255, 128, 0), (255, 0, 128), (128, 0, 255), (128, 128, 128),
)
"""The ten ReBias background colours; colour ``k`` is the bias-aligned colour of digit ``k``."""
COLOUR_NAMES = ("red", "green", "blue", "yellow", "magenta", "cyan", "orange", "pink", "purple", "grey")
COLOUR_MODES = ("background", "foreground")
SPLITS = ("train", "validation", "test_unbiased", "test_biased")


@dataclass
class ArraySplit:
    """One split as arrays: ``images`` uint8 ``[N, H, W, 3]``, ``labels`` and ``bias_labels`` int64 ``[N]``, and
    ``source_ids``, the source image each one was drawn from (``"digits:123"``, ``"t10k:45"``)."""

    images: np.ndarray
    labels: np.ndarray
    bias_labels: np.ndarray
    source_ids: np.ndarray

    @property
    def num_conflicting(self) -> int:
        """Samples whose colour is not their class colour."""
        return int((self.labels != self.bias_labels).sum())


def colour_digits_arrays(
    rho: float = 0.99,
    *,
    n_train: int = 60_000,
    n_validation: int = 10_000,
    n_test: int = 10_000,
    image_size: int = 28,
    colour_mode: str = "background",
    n_confusing_colours: int = 9,
    validation_fraction: float = 0.1,
    test_fraction: float = 0.25,
    augment: bool | None = None,
    source: str | Path = "digits",
    seed: int = 0,
) -> dict[str, ArraySplit]:
    """Build the four splits as arrays; see ``build_colour_digits`` for the arguments."""
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho!r}.")
    check_choice("colour_mode", colour_mode, COLOUR_MODES)
    if not 1 <= n_confusing_colours <= 9:
        raise ValueError(f"n_confusing_colours must be between 1 and 9, got {n_confusing_colours!r}.")
    if min(n_train, n_validation, n_test) < 10:
        raise ValueError(f"n_train, n_validation and n_test must each be >= 10, got "
                         f"{n_train}, {n_validation}, {n_test}.")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)

    if str(source) == "digits":
        pools = _sklearn_digit_pools(image_size, validation_fraction, test_fraction, rng)
        augment = True if augment is None else augment
    else:
        pools = _mnist_pools(Path(source), image_size, validation_fraction, rng)
        augment = False if augment is None else augment
    sizes = {"train": n_train, "validation": n_validation, "test_unbiased": n_test, "test_biased": n_test}
    pool_of = {"train": "train", "validation": "validation", "test_unbiased": "test", "test_biased": "test"}
    rho_of = {"train": rho, "validation": rho, "test_unbiased": 0.1, "test_biased": 1.0}

    splits = {}
    for split in SPLITS:
        base_images, base_labels, base_ids = pools[pool_of[split]]
        index = _cycle_indices(len(base_labels), sizes[split], rng)
        masks = torch.from_numpy(base_images[index])
        if augment:
            masks = _random_affine(masks, generator)
        labels = base_labels[index]
        confusing = 9 if split == "test_unbiased" else n_confusing_colours
        bias_labels = assign_colours(labels, rho_of[split], confusing, rng)
        splits[split] = ArraySplit(colourise(masks.numpy(), bias_labels, colour_mode), labels, bias_labels,
                                   base_ids[index])
    return splits


def build_colour_digits(rho: float = 0.99, **kwargs):
    """Build Colour-Digits as a ``datasets.DatasetDict`` with splits ``train``, ``validation``,
    ``test_unbiased`` and ``test_biased`` and columns ``image`` (PIL), ``labels`` and ``bias_labels``.

    Args:
        rho: share of each training class drawn in its class colour (0.99 ... 0.999 in the paper).
        n_train, n_validation, n_test: images per split (the two test splits have ``n_test`` each).
        image_size: side of the square images (28 as in MNIST).
        colour_mode: ``"background"`` (ReBias: coloured background, white digit) or ``"foreground"``.
        n_confusing_colours: how many other colours the bias-conflicting training samples are spread over.
        validation_fraction, test_fraction: share of the base digits held out for validation / test; the
            splits never share a base digit, so test images are disjoint from training images.
        augment: draw random affine variants of the base digits (default: on for the scikit-learn digits,
            off for MNIST files).
        source: ``"digits"`` (scikit-learn, offline) or a folder with the MNIST idx files
            (``train-images-idx3-ubyte[.gz]`` ...) to build the real Biased-MNIST.
        seed: fixes every random choice.
    """
    import datasets

    arrays = colour_digits_arrays(rho, **kwargs)
    features = datasets.Features({
        "image": datasets.Image(),
        "labels": datasets.ClassLabel(names=[str(digit) for digit in range(10)]),
        "bias_labels": datasets.ClassLabel(names=list(COLOUR_NAMES)),
    })
    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(
            {"image": list(data.images), "labels": data.labels, "bias_labels": data.bias_labels},
            features=features,
            split=datasets.NamedSplit(split),
        )
        for split, data in arrays.items()
    })


def digit_arrays(*, n_train: int = 20_000, n_validation: int = 2_000, n_test: int = 5_000, image_size: int = 16,
                 noise: float = 0.0, digit_fraction: float = 20 / 28, validation_fraction: float = 0.1,
                 test_fraction: float = 0.25, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Plain grey digits (white on black, RGB uint8 ``[N, H, W, 3]``) and labels for ``train`` / ``validation`` /
    ``test``, from disjoint base digits with random affine variants; ``noise`` adds Gaussian pixel noise
    (standard deviation as a fraction of the intensity range), which makes the digits harder to read;
    ``digit_fraction`` is the digit's side relative to the image (MNIST: 20/28), leaving a margin for artifacts."""
    if noise < 0:
        raise ValueError(f"noise must be >= 0, got {noise!r}.")
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    if not 0.2 <= digit_fraction <= 1.0:
        raise ValueError(f"digit_fraction must be in [0.2, 1], got {digit_fraction!r}.")
    pools = _sklearn_digit_pools(image_size, validation_fraction, test_fraction, rng, digit_fraction)
    out = {}
    for split, n in (("train", n_train), ("validation", n_validation), ("test", n_test)):
        base_images, base_labels, _ = pools[split]
        index = _cycle_indices(len(base_labels), n, rng)
        strokes = _random_affine(torch.from_numpy(base_images[index]), generator)
        if noise:
            strokes = strokes + noise * torch.randn(strokes.shape, generator=generator)
        grey = np.rint(strokes.clamp(0, 1).numpy() * 255).astype(np.uint8)
        out[split] = (np.repeat(grey[..., None], 3, axis=-1), base_labels[index])
    return out


def assign_colours(labels: np.ndarray, rho: float, n_confusing_colours: int,
                   rng: np.random.Generator) -> np.ndarray:
    """Give exactly ``round(rho * n_k)`` samples of each class ``k`` colour ``k``; spread the rest evenly over
    the next ``n_confusing_colours`` colours (``k+1, k+2, ...`` modulo 10), in a random order."""
    colours = np.empty_like(labels)
    for digit in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == digit))
        n_aligned = int(round(rho * len(members)))
        colours[members[:n_aligned]] = digit
        offsets = 1 + np.arange(len(members) - n_aligned) % n_confusing_colours
        colours[members[n_aligned:]] = (digit + offsets) % 10
    return colours


def colourise(masks: np.ndarray, colour_ids: np.ndarray, mode: str = "background") -> np.ndarray:
    """Turn stroke intensities ``[N, H, W]`` in [0, 1] into uint8 RGB images ``[N, H, W, 3]``."""
    palette = np.asarray(COLOURS, dtype=np.float32)[colour_ids][:, None, None, :]
    stroke = masks[..., None].astype(np.float32)
    if mode == "background":
        image = stroke * 255.0 + (1.0 - stroke) * palette
    else:
        image = stroke * palette
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _cycle_indices(pool_size: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices that use every base image equally often (up to one), in random order."""
    repeats = math.ceil(n / pool_size)
    return np.concatenate([rng.permutation(pool_size) for _ in range(repeats)])[:n]


def _split_pool(images: np.ndarray, labels: np.ndarray, ids: np.ndarray, fractions: dict[str, float],
                rng: np.random.Generator) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Split base images into disjoint, class-stratified pools with the given fractions (rest: train)."""
    chosen = {name: [] for name in (*fractions, "train")}
    for digit in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == digit))
        start = 0
        for name, fraction in fractions.items():
            count = int(round(fraction * len(members)))
            chosen[name].append(members[start:start + count])
            start += count
        chosen["train"].append(members[start:])
    pools = {}
    for name, parts in chosen.items():
        index = np.concatenate(parts)
        pools[name] = (images[index], labels[index], ids[index])
    return pools


def _sklearn_digit_pools(image_size: int, validation_fraction: float, test_fraction: float,
                         rng: np.random.Generator, digit_fraction: float = 20 / 28):
    from sklearn.datasets import load_digits

    digits = load_digits()
    strokes = torch.from_numpy(digits.images.astype(np.float32) / 16.0)[:, None]
    inner = max(4, round(image_size * digit_fraction))  # MNIST draws a 20x20 digit in a 28x28 frame
    strokes = F.interpolate(strokes, size=(inner, inner), mode="bicubic", align_corners=False)
    strokes = (strokes.clamp(0, 1) * 1.25 - 0.1).clamp(0, 1)  # crisper strokes after upsampling
    pad = image_size - inner
    strokes = F.pad(strokes, (pad // 2, pad - pad // 2, pad // 2, pad - pad // 2))[:, 0]
    ids = np.array([f"digits:{i}" for i in range(len(digits.target))])
    return _split_pool(strokes.numpy(), digits.target.astype(np.int64), ids,
                       {"validation": validation_fraction, "test": test_fraction}, rng)


def _random_affine(masks: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random rotation (+-15 deg), scale (0.85-1.15), shear (+-0.2) and shift (+-10 %) of ``[N, H, W]``."""
    n = masks.shape[0]

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(n, generator=generator)

    angle = uniform(-15, 15) * math.pi / 180
    scale = uniform(0.85, 1.15)
    shear = uniform(-0.2, 0.2)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([
        torch.stack([cos, -sin + shear * cos, uniform(-0.1, 0.1)], dim=1),
        torch.stack([sin, cos + shear * sin, uniform(-0.1, 0.1)], dim=1),
    ], dim=1)
    out = []
    for start in range(0, n, 8192):  # bounded memory for large n
        chunk = masks[start:start + 8192, None]
        grid = F.affine_grid(theta[start:start + 8192], list(chunk.shape), align_corners=False)
        out.append(F.grid_sample(chunk, grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    return torch.cat(out)[:, 0].clamp(0, 1)


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        data = handle.read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path:
    for candidate in (folder / stem, folder / f"{stem}.gz", folder / stem.replace("-idx", ".idx")):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"MNIST file {stem!r} (or {stem}.gz) not found in {str(folder)!r}.")


def _mnist_pools(folder: Path, image_size: int, validation_fraction: float, rng: np.random.Generator):
    if not folder.is_dir():
        raise ValueError(f"source must be 'digits' or a folder with the MNIST idx files, got {str(folder)!r}.")

    def load(prefix: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        images = _read_idx(_find_idx(folder, f"{prefix}-images-idx3-ubyte")).astype(np.float32) / 255.0
        labels = _read_idx(_find_idx(folder, f"{prefix}-labels-idx1-ubyte")).astype(np.int64)
        if images.shape[-1] != image_size:
            images = F.interpolate(torch.from_numpy(images)[:, None], size=(image_size, image_size),
                                   mode="bilinear", align_corners=False)[:, 0].numpy()
        return images, labels, np.array([f"{prefix}:{i}" for i in range(len(labels))])

    pools = _split_pool(*load("train"), {"validation": validation_fraction}, rng)
    pools["test"] = load("t10k")
    return pools
