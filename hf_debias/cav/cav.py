"""``CAV``: a unit concept direction at one layer of one model, and what it means.

Stored as ``cav.safetensors`` (the vector) plus ``cav_config.json`` (concept, layer, pooling, method, channel
count, base model and revision, sample counts, quality figures) — never pickle.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .. import __version__
from .._validation import check_choice
from ..config import read_json_object
from .fitting import (CAV_METHODS, ConceptStatistics, auc_warning, check_concept_labels, fit_direction, held_out_auc,
                      residual_auc, residual_warning)
from .pooling import POOLINGS, SPATIAL, pool_activation, shift_along

CAV_WEIGHTS_NAME = "cav.safetensors"
CAV_CONFIG_NAME = "cav_config.json"
REQUIRED_METADATA = ("concept", "layer", "pooling", "method", "num_channels")
"""Keys ``cav_config.json`` must have: without them a CAV cannot be checked against a model."""


@dataclass
class CAV:
    """A concept activation vector.

    Attributes:
        vector: the unit direction, ``[C]`` float32.
        concept: what the direction means (``"ruler"``, ``"timestamp"``).
        layer: the layer it was computed at; pooling: how that layer's activation was pooled (``POOLINGS``).
        method: how it was fitted (``CAV_METHODS``); fit_params: what the fit chose (e.g. the SVM's ``C``).
        base_model_name_or_path / revision: the model it was computed on.
        num_samples / num_concept_samples: the samples it was fitted on, and how many showed the concept.
        spatial_shape: for a spatial CAV (``pooling="none"``) the positions it spans, ``[H, W]`` of a conv map or
            ``[T]`` tokens: the vector then holds ``H * W * C`` (or ``T * C``) entries, positions in order and channels
            last, and fits only activations of exactly that shape (the same input size). ``None`` otherwise.
        concept_mean / clean_mean: mean projection ``h · pool(a)`` of samples with (μ⁺) and without (μ⁻) the
            concept, which ClArC's projections move samples to.
        quality: figures such as ``auc`` (concept detection on held-out samples, with the ``held_out_with`` /
            ``held_out_without`` counts it rests on) and ``alignment``.
    """

    vector: torch.Tensor
    concept: str | None = None
    layer: str | None = None
    pooling: str = "max"
    method: str = "signal"
    base_model_name_or_path: str | None = None
    revision: str | None = None
    num_samples: int = 0
    num_concept_samples: int = 0
    concept_mean: float | None = None
    clean_mean: float | None = None
    quality: dict[str, float | int | None] = field(default_factory=dict)
    spatial_shape: list[int] | None = None
    fit_params: dict[str, Any] = field(default_factory=dict)
    hf_debias_version: str = __version__
    name_or_path: str | None = field(default=None, compare=False)
    """Where it was loaded from or saved to (not stored)."""

    def __post_init__(self) -> None:
        vector = torch.as_tensor(self.vector)
        if vector.dim() != 1 or vector.numel() == 0 or not vector.is_floating_point():
            raise ValueError(f"A CAV vector must be a 1-D float tensor with one entry per channel, got "
                             f"shape {tuple(vector.shape)} and dtype {vector.dtype}.")
        norm = vector.double().norm()
        if not torch.isfinite(norm) or norm == 0:
            raise ValueError("A CAV vector must be finite and non-zero.")
        self.vector = (vector.double() / norm).float().cpu()
        check_choice("pooling", self.pooling, POOLINGS)
        self.spatial_shape = _check_spatial_shape(self.spatial_shape, self.pooling)
        if self.vector.numel() % self.num_positions:
            raise ValueError(f"A spatial CAV over positions {self.spatial_shape} needs a multiple of "
                             f"{self.num_positions} entries, got {self.vector.numel()}.")
        check_choice("method", self.method, CAV_METHODS)
        check_metadata(self.metadata())

    def __setattr__(self, name: str, value: Any) -> None:
        if name in ("concept_mean", "clean_mean") and value is not None:
            _check_number(name, value)  # P-ClArC / A-ClArC move samples to these: NaN would give NaN logits
        super().__setattr__(name, value)

    @property
    def num_positions(self) -> int:
        """1, or the positions a spatial CAV spans."""
        return math.prod(self.spatial_shape) if self.spatial_shape else 1

    @property
    def num_channels(self) -> int:
        return self.vector.shape[0] // self.num_positions

    @property
    def is_spatial(self) -> bool:
        return self.pooling == SPATIAL

    @property
    def pooling_description(self) -> str:
        """The pooling in words, for cards and logs: ``mean``, or ``none (spatial, 10x10 positions)``."""
        if not self.is_spatial:
            return self.pooling
        return f"none (spatial, {'x'.join(map(str, self.spatial_shape)) or '1'} positions)"

    def direction(self) -> torch.Tensor:
        """The unit vector as ``[C]``, or ``[P, C]`` (positions, channels last) for a spatial CAV."""
        return self.vector.view(self.num_positions, self.num_channels) if self.is_spatial else self.vector

    # ------------------------------------------------------------------ fitting
    @classmethod
    def fit(cls, activations: torch.Tensor, concept_labels: object, *, method: str = "signal",
            fit_intercept: bool = True, cv: int = 3, validation_fraction: float = 0.0, seed: int = 0,
            **metadata: Any) -> CAV:
        """Fit a CAV on pooled activations ``[N, C]`` and 0/1 ``concept_labels``.

        Args:
            method: ``signal`` (mean with minus mean without the concept; the default), ``fastcav``, or a filter
                CAV: ``svm``, ``ridge``, ``lasso``, ``logistic`` (balanced sample weights, ``cv``-fold grid search).
            fit_intercept: filter CAVs only; the paper's formulas include it, the official code leaves it out.
            validation_fraction: share of samples (stratified) held out to measure the concept-detection AUC.
            **metadata: ``concept``, ``layer``, ``pooling``, ``base_model_name_or_path``, ``revision``.
        """
        activations = torch.as_tensor(activations)
        if activations.dim() != 2 or not activations.is_floating_point():
            raise ValueError(f"activations must be pooled floats shaped [N, C], got {tuple(activations.shape)} "
                             f"{activations.dtype}; pool conv maps / tokens first (hf_debias.cav.pool_activation).")
        labels = check_concept_labels(concept_labels, activations.shape[0])
        fit_index, held_out = _stratified_split(labels, validation_fraction, seed)
        direction, params = fit_direction(activations[fit_index], labels[fit_index], method,
                                          fit_intercept=fit_intercept, cv=cv, seed=seed)
        cav = cls(direction, method=method, fit_params=params, **metadata)
        cav._set_statistics(activations[fit_index], labels[fit_index])
        if held_out is not None:
            cav.evaluate(activations[held_out], labels[held_out])
        return cav

    @classmethod
    def from_statistics(cls, stats: ConceptStatistics, *, method: str = "signal", **metadata: Any) -> CAV:
        """The signal / fastcav CAV from streamed per-class sums (see ``compute_cav``)."""
        cav = cls(stats.direction(method), method=method, **metadata)
        means = stats.means().float()
        cav.concept_mean, cav.clean_mean = float(means[1] @ cav.vector), float(means[0] @ cav.vector)
        cav.num_samples, cav.num_concept_samples = int(stats.counts.sum()), int(stats.counts[1])
        return cav

    def _set_statistics(self, activations: torch.Tensor, labels: torch.Tensor) -> None:
        scores = self.project(activations).detach()
        self.concept_mean = float(scores[labels == 1].mean())
        self.clean_mean = float(scores[labels == 0].mean())
        self.num_samples, self.num_concept_samples = int(labels.numel()), int(labels.sum())

    # ------------------------------------------------------------------ use
    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """``h · a`` for pooled activations ``[N, C]`` (``[N, P * C]`` for a spatial CAV)."""
        if pooled.shape[-1] != self.vector.numel():
            if not self.is_spatial:
                self.check_channels(pooled.shape[-1])
            raise ValueError(f"The spatial CAV spans {self.num_positions} positions x {self.num_channels} channels "
                             f"({self.vector.numel()} values) but the activations have {pooled.shape[-1]}.")
        return pooled.float() @ self.vector.to(pooled.device)

    def shift_to(self, activation: torch.Tensor, target: float | torch.Tensor) -> torch.Tensor:
        """Move each sample's (unpooled) activation along the CAV so that its pooled projection ``h · pool(a)``
        equals ``target`` (ClArC's move: to the clean mean μ⁻ or the concept mean μ⁺); see ``shift_along``."""
        projection = self.project(pool_activation(activation, self.pooling))
        return shift_along(activation, self.direction().to(activation.device), target - projection)

    def evaluate(self, activations: torch.Tensor, concept_labels: object) -> float | None:
        """Concept-detection ROC AUC of ``h · a`` on (held-out) pooled activations ``[N, C]``.

        Stored in ``quality`` with the held-out counts it rests on (``auc``, ``held_out_with``,
        ``held_out_without``; see ``hf_debias.cav.held_out_auc``). Warns (``auc_warning``) when there are too few
        held-out samples of either kind to trust it, or only one concept value (then there is no AUC: ``None`` is
        returned and an earlier ``quality['auc']`` is removed).
        """
        activations = torch.as_tensor(activations)
        quality = held_out_auc(self.project(activations), concept_labels)
        self.quality.pop("auc", None)
        self.quality.update(quality)
        self.quality["residual_auc"] = residual_auc(activations, concept_labels, self.vector)
        for warning in (auc_warning(self.quality), residual_warning(self.quality)):
            if warning:
                warnings.warn(warning, stacklevel=2)
        return self.quality.get("auc")

    def check_activation(self, activation: torch.Tensor, layer: str | None = None) -> None:
        """Raise if a layer's activation does not fit the CAV: its channel count, and for a spatial CAV its
        positions (a spatial CAV fits one input size only); the message names both."""
        from .pooling import spatial_shape_of
        from ..functional.rr_clarc import num_channels

        self.check_channels(num_channels(activation), layer)
        if self.is_spatial and spatial_shape_of(activation) != self.spatial_shape:
            where = f"layer {layer!r}" if layer else "the activation"
            raise ValueError(f"The spatial CAV spans positions {self.spatial_shape} but {where} has "
                             f"{spatial_shape_of(activation)}: a spatial CAV (pooling='none') fits the input size it "
                             "was computed at only; recompute it at this size or use a pooled CAV.")

    def check_channels(self, num_channels: int, layer: str | None = None) -> None:
        """Raise if the layer has another channel count than the CAV; the message names both."""
        if num_channels != self.num_channels:
            where = f"layer {layer!r}" if layer else "the activation"
            raise ValueError(f"The CAV has {self.num_channels} channels but {where} has {num_channels}; it was "
                             f"computed at layer {self.layer!r} of {self.base_model_name_or_path!r}.")

    # ------------------------------------------------------------------ files
    def metadata(self) -> dict[str, Any]:
        """Everything but the vector, as JSON-serialisable values."""
        return {
            "concept": self.concept, "layer": self.layer, "pooling": self.pooling, "method": self.method,
            "num_channels": self.num_channels, "base_model_name_or_path": self.base_model_name_or_path,
            "revision": self.revision, "num_samples": self.num_samples,
            "num_concept_samples": self.num_concept_samples, "concept_mean": self.concept_mean,
            "clean_mean": self.clean_mean, "quality": dict(self.quality), "spatial_shape": self.spatial_shape, "fit_params": _jsonable(self.fit_params),
            "hf_debias_version": self.hf_debias_version,
        }

    def save_pretrained(self, save_directory: str | os.PathLike) -> Path:
        """Write ``cav.safetensors`` and ``cav_config.json`` into ``save_directory``, atomically: into a temporary
        sibling first, ``cav_config.json`` moved last (see ``hf_debias.hub.atomic``). The base model is recorded
        as its Hub id or its folder's name, never a local absolute path."""
        from ..hub.atomic import CAV_OWNED, install, staging_folder
        from ..hub.paths import recordable_name

        path = Path(save_directory)
        metadata = {**self.metadata(), "base_model_name_or_path": recordable_name(self.base_model_name_or_path)}
        with staging_folder(path) as staging:
            save_file({"cav": self.vector.contiguous()}, str(staging / CAV_WEIGHTS_NAME))
            (staging / CAV_CONFIG_NAME).write_text(json.dumps(metadata, indent=2, sort_keys=True) + "\n")
            install(staging, path, owned=CAV_OWNED[:2], last=[CAV_CONFIG_NAME])
        self.name_or_path = str(path)
        return path

    def push_to_hub(self, repo_id: str, *, subfolder: str | None = None, **push_kwargs: Any):
        """Push this CAV with its card in one commit: into ``subfolder`` (its card too, so the root card of a
        multi-concept repo stays as it is), else the repo root. To push several concepts with one card listing
        them use ``hf_debias.hub.push_cavs_to_hub``; ``push_kwargs`` are its options."""
        from ..hub import push_cavs_to_hub
        from ..hub.paths import check_subfolder

        subfolder = check_subfolder(subfolder or "", "subfolder")
        return push_cavs_to_hub(repo_id, {subfolder: self}, card_folder=subfolder, **push_kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, *, subfolder: str | None = None,
                        revision: str | None = None, **hub_kwargs: Any) -> CAV:
        """Load a CAV from a local folder or a Hub repo (``subfolder`` for one of several concepts, or the
        ``cav`` folder of a corrected model's repo). ``hub_kwargs`` go to ``hf_hub_download``."""
        from ..hub.native import check_safetensors
        from ..hub.paths import check_subfolder
        from ..hub.resolve import resolve_file

        if subfolder is not None:
            check_subfolder(subfolder, "subfolder")
        config_path = resolve_file(name_or_path, CAV_CONFIG_NAME, subfolder=subfolder, revision=revision,
                                   **hub_kwargs)
        weights_path = resolve_file(name_or_path, CAV_WEIGHTS_NAME, subfolder=subfolder, revision=revision,
                                    **hub_kwargs)
        metadata = read_json_object(config_path, "CAV config")
        missing = [key for key in REQUIRED_METADATA if key not in metadata]
        if missing:
            raise ValueError(f"{config_path} lacks the CAV metadata {missing}; a CAV file needs "
                             f"{list(REQUIRED_METADATA)} (save it with CAV.save_pretrained).")
        try:
            check_metadata(metadata)
        except ValueError as err:
            raise ValueError(f"{config_path}: {err}") from None
        check_safetensors(weights_path)
        tensors = load_file(str(weights_path))
        if set(tensors) != {"cav"}:
            raise ValueError(f"{weights_path} must hold exactly one tensor named 'cav', got {sorted(tensors)}.")
        vector = tensors["cav"]
        expected = metadata.pop("num_channels")
        try:
            positions = math.prod(_check_spatial_shape(metadata.get("spatial_shape"), metadata["pooling"]) or [1])
        except ValueError as err:
            raise ValueError(f"{config_path}: {err}") from None
        if vector.dim() != 1 or vector.numel() != expected * positions:
            spatial = f" over {positions} positions" if metadata.get("spatial_shape") else ""
            raise ValueError(f"{weights_path} holds a CAV of shape {tuple(vector.shape)}, but {config_path.name} "
                             f"says num_channels={expected}{spatial}.")
        known = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("vector", "name_or_path")}
        unknown = sorted(set(metadata) - known)
        if unknown:
            warnings.warn(f"Ignoring unknown CAV metadata {unknown} in {config_path} (written by hf_debias "
                          f"{metadata.get('hf_debias_version', '?')}, this is {__version__}).", stacklevel=2)
        cav = cls(vector, **{key: value for key, value in metadata.items() if key in known})
        cav.name_or_path = str(name_or_path) if subfolder is None else f"{name_or_path}/{subfolder}"
        return cav

    def __repr__(self) -> str:
        quality = ", ".join(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}"
                            for key, value in self.quality.items())  # counts (held_out_with) as integers
        spatial = f", positions={self.spatial_shape}" if self.is_spatial else ""
        return (f"CAV(concept={self.concept!r}, layer={self.layer!r}, channels={self.num_channels}{spatial}, "
                f"method={self.method!r}, pooling={self.pooling!r}, samples={self.num_samples}"
                f"{', ' + quality if quality else ''})")


_TEXT_FIELDS = ("concept", "layer", "base_model_name_or_path", "revision")
_COUNT_FIELDS = ("num_channels", "num_samples", "num_concept_samples")


def _check_spatial_shape(shape: object, pooling: str) -> list[int] | None:
    """A spatial CAV's positions: a list of integers >= 1 (``[]`` for an already pooled ``[N, C]`` layer), given
    exactly when ``pooling == "none"``."""
    if pooling != SPATIAL:
        if shape is not None:
            raise ValueError(f"field 'spatial_shape' is only for spatial CAVs (pooling='none'); this CAV has "
                             f"pooling={pooling!r} and spatial_shape={shape!r}.")
        return None
    if not isinstance(shape, (list, tuple)) or len(shape) > 2 or any(
            isinstance(size, bool) or not isinstance(size, numbers.Integral) or size < 1 for size in shape):
        raise ValueError(f"field 'spatial_shape' of a spatial CAV (pooling='none') must list the positions it "
                         f"spans, [H, W] or [T] with integers >= 1; got {shape!r}.")
    return [int(size) for size in shape]


def _check_number(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
        raise ValueError(f"field {name!r} must be a finite number, got {value!r}.")
    return float(value)


def check_metadata(metadata: dict[str, Any]) -> None:
    """Field types of a CAV's metadata (``cav_config.json``): strings or null, counts >= 0, finite means and
    quality figures, a real dict of fit parameters. Raises ``ValueError`` naming the field and the value."""
    for name in _TEXT_FIELDS:
        if metadata.get(name) is not None and not isinstance(metadata[name], str):
            raise ValueError(f"field {name!r} must be a string or null, got {metadata[name]!r}.")
    for name in ("pooling", "method", "hf_debias_version"):
        if name in metadata and not isinstance(metadata[name], str):
            raise ValueError(f"field {name!r} must be a string, got {metadata[name]!r}.")
    for name in _COUNT_FIELDS:
        value = metadata.get(name, 0)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"field {name!r} must be an integer >= 0, got {value!r}.")
    for name in ("concept_mean", "clean_mean"):
        if metadata.get(name) is not None:
            _check_number(name, metadata[name])
    quality = metadata.get("quality", {})
    if not isinstance(quality, dict):
        raise ValueError(f"field 'quality' must be an object of finite numbers, got {quality!r}.")
    for key, value in quality.items():
        if value is not None:  # null: not measured (e.g. a held-out set with one concept value)
            _check_number(f"quality.{key}", value)
    if not isinstance(metadata.get("fit_params", {}), dict):
        raise ValueError(f"field 'fit_params' must be an object, got {metadata['fit_params']!r}.")


def _stratified_split(labels: torch.Tensor, fraction: float, seed: int):
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction!r}.")
    if fraction == 0.0:
        return torch.arange(labels.numel()), None
    rng = np.random.default_rng(seed)
    held = []
    for value in (0, 1):
        members = rng.permutation(np.flatnonzero(labels.numpy() == value))
        count = int(round(fraction * len(members)))
        if count == 0 or count == len(members):
            raise ValueError(f"validation_fraction={fraction} leaves no {'concept' if value else 'clean'} "
                             f"samples on one side ({len(members)} in all).")
        held.append(members[:count])
    held_out = np.sort(np.concatenate(held))
    keep = np.setdiff1d(np.arange(labels.numel()), held_out)
    return torch.from_numpy(keep), torch.from_numpy(held_out)


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {key: (float(value) if isinstance(value, (np.floating, np.integer)) else value)
            for key, value in values.items()}
