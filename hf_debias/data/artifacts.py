"""The controlled-artifact benchmark (RR-ClArC's evaluation protocol, methods.md §2).

An artificial artifact is inserted into a fraction ``p`` of the training images of **one** class, so a vanilla
model can learn "artifact ⇒ that class" as a shortcut. The test set comes twice: ``test_clean`` without
artifacts and ``test_attacked`` with the artifact in every image of every class. A corrected model keeps its
clean accuracy and recovers its attacked accuracy. Every image carries its 0/1 ``artifact`` label (the concept
label a CAV is fitted on) and the ``artifact_mask`` of the pixels the artifact touched.

Artifacts (``ARTIFACTS``): a solid ``patch`` in a corner, a ``timestamp``-like text in a corner, a global
``brightness`` blend, and ``hidden_bits``, a fixed pattern in the low bits of every pixel (hidden in the noise).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .._validation import check_choice

ARTIFACTS = ("patch", "timestamp", "brightness", "hidden_bits")
CORNERS = ("bottom_right", "bottom_left", "top_right", "top_left")
SPLITS = ("train", "validation", "test_clean", "test_attacked")

BUILTIN_DIGITS = {"image_size": 20, "digit_fraction": 0.55, "noise": 0.3}
"""The built-in task: noisy 11-pixel digits in a 20-pixel frame. Clean digits are too easy — a vanilla model
then reads the digit and ignores the artifact (a 3x3 patch in 30 % of class 0 left attacked accuracy at 100 %) —
so the noise makes the artifact the more reliable cue and the margin keeps the corner patch off the digit."""

# 3x5 pixel glyphs for a timestamp; rows top to bottom, "1" = ink.
_GLYPHS = {
    "0": ("111", "101", "101", "101", "111"), "1": ("010", "110", "010", "010", "111"),
    "2": ("111", "001", "111", "100", "111"), "3": ("111", "001", "111", "001", "111"),
    "4": ("101", "101", "111", "001", "001"), "5": ("111", "100", "111", "001", "111"),
    "6": ("111", "100", "111", "101", "111"), "7": ("111", "001", "010", "010", "010"),
    "8": ("111", "101", "111", "101", "111"), "9": ("111", "101", "111", "001", "111"),
    ":": ("000", "010", "000", "010", "000"),
}


@dataclass
class ArtifactSpec:
    """How to draw one artifact.

    Args:
        kind: one of ``ARTIFACTS``.
        size: patch side in pixels (default: 20 % of the image side, at least 3); text scale for timestamp.
        corner: where patch and timestamp go (``CORNERS``).
        colour: RGB of patch and timestamp ink.
        strength: brightness blend weight towards white (default 0.35).
        bits: how many low bits ``hidden_bits`` overwrites with a fixed pseudo-random pattern, per pixel and
            channel (default 5: values change by at most 31 of 255 levels, 10 on average, inside the built-in
            digits' noise of σ ≈ 77 levels). The bits do reach the model (the float conversion keeps every
            level); what decides is their size against that noise. Measured with a vanilla ``simple_convnet``
            (3 epochs, Adam lr 1e-3, 20,000 digits, 80 % of one class marked, seeds 0-2), attacked accuracy
            below clean: 2 bits (the earlier default) -0.1 to 0.6 points on classes 0 and 3 — never learned;
            4 bits 3.2 and 19.1 on class 3 (seeds 0, 1); 5 bits 33.3 ± 2.5 (class 0) and 29.4 ± 15.5 (class 3; 7.9
            on seed 0).
            On 8,000 digits 3 bits gave 1.8 and a 2-bit checkerboard pattern -0.5.
        text: the timestamp's characters (digits and ':'), cut to what fits.
    """

    kind: str = "patch"
    size: int | None = None
    corner: str = "bottom_right"
    colour: tuple[int, int, int] = (255, 255, 255)
    strength: float = 0.35
    bits: int = 5
    text: str = "12:34"

    def __post_init__(self) -> None:
        check_choice("artifact", self.kind, ARTIFACTS)
        check_choice("corner", self.corner, CORNERS)
        if self.size is not None and self.size < 1:
            raise ValueError(f"size must be >= 1, got {self.size!r}.")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {self.strength!r}.")
        if not 1 <= self.bits <= 7:
            raise ValueError(f"bits must be between 1 and 7, got {self.bits!r}.")
        bad = sorted(set(self.text) - set(_GLYPHS))
        if bad:
            raise ValueError(f"text may only use {''.join(sorted(_GLYPHS))}; got {bad}.")


def insert_artifact(images: np.ndarray, spec: ArtifactSpec | str = "patch") -> tuple[np.ndarray, np.ndarray]:
    """Return a copy of uint8 ``images`` ``[N, H, W, 3]`` with the artifact drawn in, and its boolean mask
    ``[N, H, W]`` (True where the artifact changed or may change pixels)."""
    spec = ArtifactSpec(spec) if isinstance(spec, str) else spec
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, H, W, 3], got {images.dtype} {images.shape}.")
    out = images.copy()
    height, width = images.shape[1:3]
    mask = np.zeros((height, width), dtype=bool)
    if spec.kind == "patch":
        side = spec.size or max(3, round(0.2 * min(height, width)))
        rows, cols = _corner_slices(spec.corner, height, width, side, side, margin=1)
        mask[rows, cols] = True
        out[:, mask] = spec.colour
    elif spec.kind == "timestamp":
        ink = _render_text(spec.text, spec.size or max(1, min(height, width) // 32), width - 2)
        rows, cols = _corner_slices(spec.corner, height, width, *ink.shape, margin=1)
        mask[rows, cols] = ink
        out[:, mask] = spec.colour
    elif spec.kind == "brightness":
        mask[:] = True
        blended = images.astype(np.float32) * (1 - spec.strength) + 255.0 * spec.strength
        out = np.rint(blended).astype(np.uint8)
    else:  # hidden_bits: a fixed pseudo-random pattern in the low bits, the same for every image
        mask[:] = True
        pattern = np.random.default_rng(1234).integers(0, 2 ** spec.bits, size=(height, width, 3), dtype=np.uint8)
        out = (images & np.uint8(256 - 2 ** spec.bits)) | pattern
    return out, np.broadcast_to(mask, images.shape[:3]).copy()


def _corner_slices(corner: str, height: int, width: int, rows: int, cols: int, margin: int):
    if rows + margin > height or cols + margin > width:
        raise ValueError(f"An artifact of {rows}x{cols} pixels does not fit into {height}x{width} images.")
    top = margin if corner.startswith("top") else height - margin - rows
    left = margin if corner.endswith("left") else width - margin - cols
    return slice(top, top + rows), slice(left, left + cols)


def _render_text(text: str, scale: int, max_width: int) -> np.ndarray:
    """The ink of ``text`` in the 3x5 font at ``scale``, cut to the characters that fit into ``max_width``."""
    glyphs = [np.array([[c == "1" for c in row] for row in _GLYPHS[char]]) for char in text]
    while glyphs and (4 * len(glyphs) - 1) * scale > max_width:
        glyphs = glyphs[:-1]
    if len(glyphs) < 2:
        raise ValueError(f"A timestamp does not fit into images {max_width + 2} pixels wide; use a larger image "
                         "size or another artifact.")
    gap = np.zeros((5, 1), dtype=bool)
    ink = np.concatenate([part for glyph in glyphs for part in (glyph, gap)][:-1], axis=1)
    return np.kron(ink, np.ones((scale, scale), dtype=bool))


@dataclass
class ArtifactSplit:
    """One split as arrays: uint8 ``images`` ``[N, H, W, 3]``, int64 ``labels``, 0/1 ``artifact`` and the
    boolean ``masks`` ``[N, H, W]`` (all False where there is no artifact).

    With several artifacts (``controlled_artifact_arrays(artifacts=...)``) ``artifact`` and ``masks`` are those of
    any artifact, and ``artifact_flags`` / ``artifact_masks`` hold each artifact's own, by name
    (``artifact_names``); both are None for a single artifact."""

    images: np.ndarray
    labels: np.ndarray
    artifact: np.ndarray
    masks: np.ndarray
    artifact_flags: dict[str, np.ndarray] | None = None
    artifact_masks: dict[str, np.ndarray] | None = None


def artifact_names(artifacts: Sequence[tuple[ArtifactSpec | str, int]]) -> list[str]:
    """Each artifact's name: its kind (``patch``), or ``<kind>_<index>`` where the list repeats a kind."""
    kinds = [_spec(spec).kind for spec, _ in artifacts]
    return [kind if kinds.count(kind) == 1 else f"{kind}_{index}" for index, kind in enumerate(kinds)]


def _spec(artifact: ArtifactSpec | str) -> ArtifactSpec:
    return ArtifactSpec(artifact) if isinstance(artifact, str) else artifact


def _pairs(artifact, target_class, artifacts) -> list[tuple[ArtifactSpec, int]]:
    if artifacts is None:
        return [(_spec("patch" if artifact is None else artifact), 0 if target_class is None else target_class)]
    if artifact is not None or target_class is not None:
        raise ValueError("Pass either artifact= and target_class= (one artifact) or artifacts=[(spec, class), ...] "
                         "(several), not both.")
    if isinstance(artifacts, (str, ArtifactSpec)) or not isinstance(artifacts, Sequence) or not artifacts:
        raise ValueError(f"artifacts must be a non-empty list of (ArtifactSpec or kind, target_class) pairs, got "
                         f"{artifacts!r}.")
    pairs = []
    for index, pair in enumerate(artifacts):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2 or isinstance(pair[1], bool) or \
                not isinstance(pair[1], int):
            raise ValueError(f"artifacts[{index}] must be an (ArtifactSpec or kind, target_class) pair, got {pair!r}.")
        pairs.append((_spec(pair[0]), pair[1]))
    return pairs


def controlled_artifact_arrays(source: dict[str, tuple[np.ndarray, np.ndarray]] | None = None, *,
                               artifact: ArtifactSpec | str | None = None, target_class: int | None = None,
                               p: float = 0.8, seed: int = 0,
                               artifacts: Sequence[tuple[ArtifactSpec | str, int]] | None = None,
                               **digit_kwargs) -> dict[str, ArtifactSplit]:
    """Build the splits as arrays; see ``build_controlled_artifact``.

    ``artifacts=[(spec, target_class), ...]`` inserts several artifacts, each into ``p`` of its own target class's
    training (and validation) images, drawn independently and drawn in list order (a later artifact is drawn over an
    earlier one where both fall on one image). The test splits are then ``test_clean``, ``test_attacked`` (every
    artifact in every image) and ``test_attacked_<name>`` (that artifact alone in every image; ``artifact_names``).
    One artifact (``artifact=``, ``target_class=``; the defaults: the patch in class 0) gives the four splits of
    ``SPLITS``, exactly as before ``artifacts`` existed.
    """
    pairs = _pairs(artifact, target_class, artifacts)
    several = artifacts is not None
    names = artifact_names(pairs)
    if not 0.0 < p <= 1.0:
        raise ValueError(f"p must be in (0, 1], got {p!r}.")
    if source is None:
        from .colour_digits import digit_arrays

        source = digit_arrays(seed=seed, **{**BUILTIN_DIGITS, **digit_kwargs})
    elif digit_kwargs:
        raise ValueError(f"{sorted(digit_kwargs)} only apply to the built-in digits, not to a passed source.")
    missing = [name for name in ("train", "test") if name not in source]
    if missing:
        raise ValueError(f"source needs 'train' and 'test' splits (and optionally 'validation'); missing {missing}.")
    # Its own stream: a plain default_rng(seed) permutation would pick the same positions as a user's
    # shuffle(seed=seed) (datasets uses one), so a shuffled subset would hold only artifact images.
    rng = np.random.default_rng([seed, 0xA27])
    splits = [*SPLITS, *(f"test_attacked_{name}" for name in names)] if several else SPLITS
    out = {}
    for split in splits:
        base = "test" if split.startswith("test_") else split
        if base not in source:
            continue
        images, labels = source[base]
        labels = np.asarray(labels, dtype=np.int64)
        present = set(labels.tolist())
        current, flags, masks = images, {}, {}
        for name, (spec, target) in zip(names, pairs):
            if target not in present:
                where = f"artifacts[{names.index(name)}]: " if several else ""
                raise ValueError(f"{where}target_class={target} does not occur in the {base!r} labels "
                                 f"({sorted(present)[:20]}).")
            if split == "test_attacked" or split == f"test_attacked_{name}":
                chosen = np.ones(len(labels), dtype=bool)
            elif split.startswith("test_"):
                chosen = np.zeros(len(labels), dtype=bool)
            else:  # exactly round(p * n) images of the target class
                members = rng.permutation(np.flatnonzero(labels == target))
                chosen = np.zeros(len(labels), dtype=bool)
                chosen[members[:int(round(p * len(members)))]] = True
            with_artifact, mask = insert_artifact(current, spec)
            current = np.where(chosen[:, None, None, None], with_artifact, current)
            flags[name], masks[name] = chosen.astype(np.int64), mask & chosen[:, None, None]
        if not several:
            out[split] = ArtifactSplit(current, labels, flags[names[0]], masks[names[0]])
            continue
        out[split] = ArtifactSplit(current, labels, np.any(list(flags.values()), axis=0).astype(np.int64),
                                   np.any(list(masks.values()), axis=0), artifact_flags=flags, artifact_masks=masks)
    return out


def build_controlled_artifact(source=None, *, artifact: ArtifactSpec | str | None = None,
                              target_class: int | None = None, p: float = 0.8, seed: int = 0,
                              artifacts: Sequence[tuple[ArtifactSpec | str, int]] | None = None, **digit_kwargs):
    """The controlled-artifact benchmark as a ``datasets.DatasetDict`` with splits ``train``, ``validation``,
    ``test_clean`` and ``test_attacked`` and columns ``image`` (PIL), ``labels``, ``artifact`` (0/1) and
    ``artifact_mask`` (PIL, 255 where the artifact is).

    Args:
        source: ``None`` for the built-in digits (offline), a ``datasets.DatasetDict`` with ``train`` and
            ``test`` (and optionally ``validation``) splits with ``image`` and ``label(s)`` columns, or a dict
            ``{split: (uint8 images [N, H, W, 3], labels)}``. Images of one split must share a size.
        artifact: an ``ArtifactSpec`` or one of ``ARTIFACTS`` (default ``"patch"``).
        target_class: the class whose training images get the artifact (default 0).
        p: the share of that class's training (and validation) images that get it.
        artifacts: instead of ``artifact`` and ``target_class``, several ``(artifact, target_class)`` pairs: the
            splits ``test_attacked_<name>`` and the columns ``artifact_<name>`` / ``artifact_mask_<name>`` are added
            per artifact (``artifact`` / ``artifact_mask``: any of them); see ``controlled_artifact_arrays``.
        **digit_kwargs: for the built-in digits: ``n_train``, ``n_validation``, ``n_test``, ``image_size``,
            ``noise``, ``digit_fraction`` (see ``hf_debias.data.digit_arrays``; defaults ``BUILTIN_DIGITS``).

    The defaults (a 4-pixel white corner patch in 80 % of class 0, noisy digits) make a vanilla CNN learn the
    shortcut: BENCHMARKS.md has the measured clean vs attacked accuracy.
    """
    import datasets

    if isinstance(source, datasets.DatasetDict) or (source is not None and not isinstance(source, dict)):
        source = _arrays_from_datasets(source)
    arrays = controlled_artifact_arrays(source, artifact=artifact, target_class=target_class, p=p, seed=seed,
                                        artifacts=artifacts, **digit_kwargs)
    columns = {"image": datasets.Image(), "labels": datasets.Value("int64"),
               "artifact": datasets.ClassLabel(names=["clean", "artifact"]), "artifact_mask": datasets.Image()}
    names = artifact_names(artifacts) if artifacts is not None else []
    for name in names:
        columns.update({f"artifact_{name}": datasets.ClassLabel(names=["clean", "artifact"]),
                        f"artifact_mask_{name}": datasets.Image()})
    features = datasets.Features(columns)

    def table(data: ArtifactSplit) -> dict:
        values = {"image": list(data.images), "labels": data.labels, "artifact": data.artifact,
                  "artifact_mask": list((data.masks * 255).astype(np.uint8))}
        for name in names:
            values[f"artifact_{name}"] = data.artifact_flags[name]
            values[f"artifact_mask_{name}"] = list((data.artifact_masks[name] * 255).astype(np.uint8))
        return values

    return datasets.DatasetDict({
        split: datasets.Dataset.from_dict(table(data), features=features, split=datasets.NamedSplit(split))
        for split, data in arrays.items()
    })


def _arrays_from_datasets(splits) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for name, dataset in splits.items():
        label_column = "labels" if "labels" in dataset.column_names else "label"
        if "image" not in dataset.column_names or label_column not in dataset.column_names:
            raise ValueError(f"Split {name!r} needs 'image' and 'label' (or 'labels') columns; it has "
                             f"{dataset.column_names}.")
        images = [np.asarray(image.convert("RGB")) for image in dataset["image"]]
        if len({image.shape for image in images}) > 1:
            raise ValueError(f"The images of split {name!r} have different sizes; resize them first.")
        out[name] = (np.stack(images), np.asarray(dataset[label_column], dtype=np.int64))
    return out
