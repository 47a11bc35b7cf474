"""Pseudo bias labels for EnD when the data has none, from a deliberately biased auxiliary model.

Recipe (methods.md §5): a copy of the architecture to be trained (same initial weights, or a fresh model from a
factory) is trained briefly with the generalised cross-entropy (GCE, ``q = 0.7``, as in "Learning from Failure",
Nam et al. 2020), which up-weights the samples the model already finds easy and so learns the shortcut first.
Its features at EnD's bottleneck (by default the classifier input, found with ``hf_debias.layers`` exactly as EnD
finds it) are L2-normalised and turned into one bias id per sample.

EnD compares bias labels *across* classes (its disentangling term pairs samples of any class that share a bias
id), so an id must mean the same bias value in every class. Three assignments keep that property
(``PseudoLabelConfig.assignment``):

- ``"global"`` (default): one k-means over all samples (k = number of classes unless given);
- ``"prediction"``: the biased model's predicted class (the JTT view: what the shortcut says);
- ``"aligned"``: k-means per class, each class's clusters matched to the global centres (Hungarian assignment),
  the per-class recipe of methods.md §5 made comparable across classes.

The default, ``"global"``, was chosen by measurement on Colour-Digits (``simple_convnet``, 16 px, GCE 1 epoch, seed 0;
adjusted Rand index against the true colours, all three assignments on the same auxiliary model;
``benchmarks/end_colour_digits.py --pseudo-compare-assignments``, ``ASSIGNMENT_MEASUREMENT``): on 60,000 images
``global`` and ``prediction`` both recover the colours exactly (ARI 1.000 at rho = 0.99 and 0.999) while ``aligned``
does not (0.870 / 0.190: per-class k-means splits each class's dominant colour into several clusters, because that
class holds only a few images of each other colour); on 2,000 images with 7 auxiliary steps ``global`` still gives
1.000, ``prediction`` 0.869 (the briefly trained model has not yet learned every colour's shortcut, its features
already separate them), ``aligned`` 0.033. ``global`` also allows ``n_clusters`` different from the number of
classes (a bias with fewer or more values than classes).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ._validation import check_choice
from .config import read_json_object
from .hooks import LayerHook
from .layers import resolve_layer

LOSSES = ("gce", "ce")
ASSIGNMENTS = ("global", "prediction", "aligned")
FORMAT_VERSION = 1
JSON_NAME = "pseudo_labels.json"
ARRAYS_NAME = "pseudo_labels.safetensors"
MODEL_NAME = "auxiliary_model.safetensors"
OWNED = (JSON_NAME, ARRAYS_NAME, MODEL_NAME)

ASSIGNMENT_MEASUREMENT = {
    "rho=0.99, 60000 images": {"global": 1.000, "prediction": 1.000, "aligned": 0.870},
    "rho=0.999, 60000 images": {"global": 1.000, "prediction": 1.000, "aligned": 0.190},
    "rho=0.99, 2000 images, 7 auxiliary steps": {"global": 1.000, "prediction": 0.869, "aligned": 0.033},
}
"""The adjusted Rand index of each assignment on Colour-Digits (seed 0) that fixed the default (module docstring)."""


@dataclass
class PseudoLabelConfig:
    """How the auxiliary (biased) model is trained and its features are turned into bias ids.

    Args:
        loss: ``"gce"`` (generalised cross-entropy, learns the easy shortcut first) or ``"ce"`` (plain, short).
        q: GCE's exponent, in (0, 1]; 0.7 as in LfF. Ignored by ``"ce"``.
        epochs: passes over the data for the auxiliary model (> 0, may be fractional): short on purpose.
        batch_size, lr, weight_decay: Adam settings of the auxiliary training.
        n_clusters: number of bias ids; ``None`` means the number of classes. Ignored by ``"prediction"``.
        assignment: ``"global"``, ``"prediction"`` or ``"aligned"`` (module docstring).
        layer: the bottleneck whose features are clustered; ``None`` = the classifier input (EnD's default).
        seed: seeds the auxiliary training's order and k-means: same seed, same data -> same labels.
        device: where the auxiliary model trains (``None``: where it is).
    """

    loss: str = "gce"
    q: float = 0.7
    epochs: float = 1.0
    batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 1e-4
    n_clusters: int | None = None
    assignment: str = "global"
    layer: str | None = None
    seed: int = 0
    device: str | None = None

    def __post_init__(self) -> None:
        check_choice("loss", self.loss, LOSSES)
        check_choice("assignment", self.assignment, ASSIGNMENTS)
        for name, low, high in (("q", 0.0, 1.0), ("epochs", 0.0, math.inf), ("lr", 0.0, math.inf)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or not (low < value <= high):
                raise ValueError(f"{name} must be a number in ({low:g}, {high:g}], got {value!r}.")
            setattr(self, name, float(value))
        if isinstance(self.weight_decay, bool) or not isinstance(self.weight_decay, (int, float)) \
                or not math.isfinite(self.weight_decay) or self.weight_decay < 0:
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay!r}.")
        self.weight_decay = float(self.weight_decay)
        for name, minimum in (("batch_size", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}.")
        if self.n_clusters is not None and (isinstance(self.n_clusters, bool) or not isinstance(self.n_clusters, int)
                                            or self.n_clusters < 2):
            raise ValueError(f"n_clusters must be an integer >= 2 or None (= number of classes), "
                             f"got {self.n_clusters!r}.")
        for name in ("layer", "device"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value):
                raise ValueError(f"{name} must be a non-empty string or None, got {value!r}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PseudoLabelConfig:
        """The config in ``data``; an unknown key is an error naming it and the valid ones."""
        if not isinstance(data, dict):
            raise ValueError(f"A pseudo-label config must be a JSON object, got {type(data).__name__}.")
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValueError(f"Unknown pseudo-label config keys {unknown}; valid keys: {names}.")
        return cls(**data)


@dataclass
class PseudoLabels:
    """Pseudo bias labels and how they were made.

    Attributes:
        labels: one bias id per sample, ``int64 [N]``, in ``range(len(centres))``.
        centres: the cluster centres in the (L2-normalised) feature space, ``float32 [k, D]``; for
            ``"prediction"`` the mean normalised feature of each predicted class.
        config: the settings used (its ``seed`` included).
        ari: adjusted Rand index against the true bias labels when they were given, else ``None``.
        train_seconds: wall time of the auxiliary training.
        model: the trained auxiliary model (``None`` after loading without one).
    """

    labels: np.ndarray
    centres: np.ndarray
    config: PseudoLabelConfig
    ari: float | None = None
    train_seconds: float = 0.0
    model: nn.Module | None = None

    @property
    def tensor(self) -> torch.Tensor:
        """The labels as a ``torch.long`` tensor (what ``fit`` / the EnD wrapper take as ``bias_labels``)."""
        return torch.from_numpy(self.labels).long()

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write ``pseudo_labels.json`` (config, seed, ARI, sha256 of the other files), ``pseudo_labels.safetensors``
        (labels, centres) and, when there is one, ``auxiliary_model.safetensors``; atomically (hub.atomic)."""
        from safetensors.torch import save, save_file

        from .hub.atomic import install, staging_folder

        arrays = save({"labels": torch.from_numpy(np.ascontiguousarray(self.labels, dtype=np.int64)),
                       "centres": torch.from_numpy(np.ascontiguousarray(self.centres, dtype=np.float32))})
        with staging_folder(folder) as staging:
            (staging / ARRAYS_NAME).write_bytes(arrays)
            files = {ARRAYS_NAME: hashlib.sha256(arrays).hexdigest()}
            if self.model is not None:
                state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.model.state_dict().items()}
                save_file(state, str(staging / MODEL_NAME))
                files[MODEL_NAME] = hashlib.sha256((staging / MODEL_NAME).read_bytes()).hexdigest()
            record = {"format_version": FORMAT_VERSION, "config": self.config.to_dict(), "seed": self.config.seed,
                      "n_samples": int(self.labels.shape[0]), "n_clusters": int(self.centres.shape[0]),
                      "ari": self.ari, "train_seconds": self.train_seconds, "files": files}
            (staging / JSON_NAME).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
            return install(staging, folder, owned=OWNED, last=(JSON_NAME,))

    @classmethod
    def from_pretrained(cls, folder: str | Path, model: nn.Module | None = None) -> PseudoLabels:
        """Load a ``save_pretrained`` folder, checking every file against the record (sha256, shapes, ids);
        ``model`` (the same architecture) receives the auxiliary weights. Errors name the file at fault."""
        from safetensors import SafetensorError
        from safetensors.torch import load, load_file

        folder = Path(folder)
        json_path = folder / JSON_NAME
        if not json_path.is_file():
            raise FileNotFoundError(f"{json_path} not found: {folder} is not a saved PseudoLabels folder.")
        record = read_json_object(json_path, "pseudo-label record")
        required = ("format_version", "config", "n_samples", "n_clusters", "files")
        missing = [key for key in required if key not in record]
        if missing:
            raise ValueError(f"{json_path} lacks {missing} (was it edited by hand?).")
        if record["format_version"] != FORMAT_VERSION:
            raise ValueError(f"{json_path}: format_version {record['format_version']!r} is not supported "
                             f"(this hf_debias reads {FORMAT_VERSION}).")
        try:
            config = PseudoLabelConfig.from_dict(record["config"])
        except (ValueError, TypeError) as err:
            raise ValueError(f"{json_path}: invalid config: {err}") from None
        files = record["files"]
        if not isinstance(files, dict) or ARRAYS_NAME not in files:
            raise ValueError(f"{json_path}: 'files' must record the sha256 of {ARRAYS_NAME}.")
        for name, digest in files.items():
            path = folder / name
            if name not in OWNED or not path.is_file():
                raise ValueError(f"{json_path} records {name!r}, which is {'missing' if name in OWNED else 'unknown'}.")
            if hashlib.sha256(path.read_bytes()).hexdigest() != digest:
                raise ValueError(f"{path} does not match the sha256 recorded in {json_path} (truncated or edited).")
        try:
            arrays = load((folder / ARRAYS_NAME).read_bytes())
        except SafetensorError as err:
            raise ValueError(f"{folder / ARRAYS_NAME} is not a valid safetensors file: {err}.") from None
        labels, centres = arrays.get("labels"), arrays.get("centres")
        if labels is None or centres is None or labels.dim() != 1 or centres.dim() != 2 \
                or labels.shape[0] != record["n_samples"] or centres.shape[0] != record["n_clusters"] \
                or (labels.numel() and (labels.min() < 0 or labels.max() >= centres.shape[0])):
            raise ValueError(f"{folder / ARRAYS_NAME} must hold 'labels' [n_samples] with ids in "
                             f"range(n_clusters) and 'centres' [n_clusters, D] as recorded in {json_path}.")
        if model is not None:
            if MODEL_NAME not in files:
                raise ValueError(f"{folder} holds no {MODEL_NAME} to load into the model.")
            model.load_state_dict(load_file(str(folder / MODEL_NAME)))
        ari = record.get("ari")
        return cls(labels=labels.numpy().astype(np.int64), centres=centres.numpy(), config=config,
                   ari=None if ari is None else float(ari), train_seconds=float(record.get("train_seconds", 0.0)),
                   model=model)


def gce_loss(logits: torch.Tensor, labels: torch.Tensor, q: float = 0.7) -> torch.Tensor:
    """Generalised cross-entropy ``mean((1 - p_y^q) / q)`` (Zhang & Sabuncu 2018; LfF's biased model)."""
    p_true = F.softmax(logits.float(), dim=1).gather(1, labels[:, None]).squeeze(1).clamp_min(1e-8)
    return ((1.0 - p_true ** q) / q).mean()


def _logits(output: Any) -> torch.Tensor:
    from .outputs import logits_of

    return logits_of(output)


def _as_tensors(images: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """``images`` ``[N, C, H, W]`` float tensor (or a dataset of ``{"pixel_values", "labels"}`` items) and labels."""
    if not isinstance(images, torch.Tensor):
        if hasattr(images, "column_names"):  # a datasets.Dataset: read in slices, through its transform
            items = [images[start:start + 256] for start in range(0, len(images), 256)]
            items = [{key: batch[key][row] for key in batch} for batch in items
                     for row in range(len(next(iter(batch.values()))))]
        else:
            items = [images[index] for index in range(len(images))]
        if not items or not isinstance(items[0], dict) or "pixel_values" not in items[0]:
            raise ValueError("images must be a float tensor [N, C, H, W] or a dataset whose items are dicts with "
                             f"'pixel_values', got {type(images).__name__}.")
        if labels is None:
            key = next((k for k in ("labels", "label") if k in items[0]), None)
            if key is None:
                raise ValueError("labels is None and the dataset items have no 'labels' / 'label' key.")
            labels = [int(item[key]) for item in items]
        images = torch.stack([torch.as_tensor(item["pixel_values"]) for item in items])
    if not images.is_floating_point() or images.dim() < 2:
        raise ValueError(f"images must be a floating-point tensor [N, ...], got {images.dtype} {tuple(images.shape)}.")
    labels = torch.as_tensor(np.asarray(labels)).long()
    if labels.dim() != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must hold one class id per image ({images.shape[0]}), got shape "
                         f"{tuple(labels.shape)}.")
    return images, labels


def _train_auxiliary(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, config: PseudoLabelConfig,
                     progress: bool) -> None:
    generator = torch.Generator().manual_seed(config.seed)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    n = images.shape[0]
    batch = min(config.batch_size, n)
    total = max(1, int(round(config.epochs * max(1, n // batch))))
    device = next(model.parameters()).device
    model.train()
    order, cursor = torch.randperm(n, generator=generator), 0
    bar = tqdm(total=total, desc=f"biased auxiliary model ({config.loss})", disable=not progress, leave=False)
    for step in range(total):
        if cursor + batch > n:
            order, cursor = torch.randperm(n, generator=generator), 0
        index = order[cursor:cursor + batch]
        cursor += batch
        logits = _logits(model(images[index].to(device)))
        y = labels[index].to(device)
        loss = gce_loss(logits, y, config.q) if config.loss == "gce" else F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.update(1)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()


@torch.no_grad()
def _features_and_predictions(model: nn.Module, images: torch.Tensor, layer: str | None,
                              batch_size: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised bottleneck features ``[N, D]`` and predicted classes ``[N]`` (eval mode)."""
    hook = LayerHook(resolve_layer(model, layer))
    model.eval()
    device = next(model.parameters()).device
    features, predictions = [], []
    try:
        for start in range(0, images.shape[0], batch_size):
            hook.reset()
            logits = _logits(model(images[start:start + batch_size].to(device)))
            features.append(F.normalize(hook.activation.flatten(1).float(), dim=1).cpu())
            predictions.append(logits.argmax(dim=1).cpu())
    finally:
        hook.remove()
    return torch.cat(features).numpy(), torch.cat(predictions).numpy()


def assign_bias_ids(features: np.ndarray, labels: np.ndarray, predictions: np.ndarray, assignment: str,
                    n_clusters: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bias ids comparable across classes, and their centres, by ``assignment`` (module docstring)."""
    from scipy.optimize import linear_sum_assignment
    from sklearn.cluster import KMeans

    check_choice("assignment", assignment, ASSIGNMENTS)
    if assignment == "prediction":
        ids = predictions.astype(np.int64)
        centres = np.stack([features[ids == k].mean(0) if (ids == k).any() else np.zeros(features.shape[1])
                            for k in range(max(n_clusters, int(ids.max()) + 1))])
        return ids, centres.astype(np.float32)
    n_clusters = min(n_clusters, features.shape[0])
    global_k = KMeans(n_clusters=n_clusters, n_init=3, random_state=seed).fit(features)
    if assignment == "global":
        return global_k.labels_.astype(np.int64), global_k.cluster_centers_.astype(np.float32)
    ids = np.zeros(features.shape[0], dtype=np.int64)
    for cls in np.unique(labels):
        members = np.flatnonzero(labels == cls)
        k = min(n_clusters, members.size)
        local = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(features[members])
        distance = ((local.cluster_centers_[:, None, :] - global_k.cluster_centers_[None]) ** 2).sum(-1)
        rows, columns = linear_sum_assignment(distance)
        mapping = dict(zip(rows.tolist(), columns.tolist()))
        ids[members] = [mapping[c] for c in local.labels_]
    return ids, global_k.cluster_centers_.astype(np.float32)


def pseudo_bias_labels(model_or_factory: nn.Module | Callable[[], nn.Module], images: Any, labels: Any = None,
                       config: PseudoLabelConfig | None = None, *, bias_labels: Any = None,
                       progress: bool = True) -> PseudoLabels:
    """Pseudo bias labels for ``images`` from a briefly trained, deliberately biased copy of the model.

    Args:
        model_or_factory: the model to be debiased (deep-copied: it is not trained here, and the auxiliary model
            starts from its initial weights) or a zero-argument callable returning a fresh one.
        images: float ``[N, C, H, W]`` tensor, or a dataset of dicts with ``"pixel_values"`` (and ``"labels"``).
        labels: the target class ids ``[N]`` (``None``: read from the dataset items).
        config: ``PseudoLabelConfig()`` by default.
        bias_labels: the true bias labels, if known, only to report the adjusted Rand index (``.ari``).

    Returns:
        ``PseudoLabels``; ``.tensor`` goes to ``fit(model, images, labels, bias_labels=...)`` or the EnD wrapper.
    """
    from sklearn.metrics import adjusted_rand_score

    config = config or PseudoLabelConfig()
    if isinstance(model_or_factory, nn.Module):
        model = copy.deepcopy(model_or_factory)
    elif callable(model_or_factory):
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            model = model_or_factory()
        if not isinstance(model, nn.Module):
            raise ValueError(f"model_or_factory returned {type(model).__name__}, not a torch.nn.Module.")
    else:
        raise ValueError(f"model_or_factory must be an nn.Module or a callable returning one, "
                         f"got {type(model_or_factory).__name__}.")
    images, target = _as_tensors(images, labels)
    if config.device is not None:
        model.to(config.device)
    started = time.perf_counter()
    with torch.random.fork_rng():  # dropout etc. draw from a seeded stream; the caller's RNG is untouched
        torch.manual_seed(config.seed)
        _train_auxiliary(model, images, target, config, progress)
    train_seconds = time.perf_counter() - started
    features, predictions = _features_and_predictions(model, images, config.layer)
    y = target.numpy()
    n_clusters = config.n_clusters or int(y.max()) + 1
    ids, centres = assign_bias_ids(features, y, predictions, config.assignment, max(2, n_clusters), config.seed)
    ari = None
    if bias_labels is not None:
        truth = np.asarray(bias_labels.cpu() if isinstance(bias_labels, torch.Tensor) else bias_labels)
        if truth.shape != ids.shape:
            raise ValueError(f"bias_labels must hold one id per image ({ids.shape[0]}), got shape {truth.shape}.")
        ari = float(adjusted_rand_score(truth, ids))
    return PseudoLabels(labels=ids, centres=centres, config=config, ari=ari, train_seconds=train_seconds,
                        model=model)


def all_assignments(result: PseudoLabels, images: torch.Tensor, labels: Any, bias_labels: Any) -> dict[str, float]:
    """The ARI of every assignment on the features of ``result``'s auxiliary model (one training, for comparing
    the assignments as the benchmark does)."""
    from sklearn.metrics import adjusted_rand_score

    if result.model is None:
        raise ValueError("result.model is None: all_assignments needs the trained auxiliary model.")
    features, predictions = _features_and_predictions(result.model, images, result.config.layer)
    y = np.asarray(labels)
    k = result.config.n_clusters or int(y.max()) + 1
    return {name: float(adjusted_rand_score(np.asarray(bias_labels), assign_bias_ids(
        features, y, predictions, name, max(2, k), result.config.seed)[0])) for name in ASSIGNMENTS}
