"""``compute_cav``: run a model over data, pool one layer's activations and fit a CAV.

For the signal / fastcav CAVs this is one streaming pass: only per-class sums (O(C)) and a bounded held-out
sample (for the AUC) are kept, whatever the number of images. The forward pass stops at the layer, so a pass
costs less than full inference. Filter CAVs keep the pooled activations, ``[N, C]``.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .._validation import check_choice
from ..distributed import all_reduce_max, all_reduce_sum, gather, is_distributed
from ..functional.rr_clarc import channels_last
from ..hooks import LayerHook, StopForward
from ..layers import resolve_layer
from ..loading import model_device, model_identity
from ..token_models import patch_embedding_layer
from .cav import CAV
from .fitting import (CAV_METHODS, RESIDUAL_MAX_SAMPLES, STREAMING_METHODS, ConceptStatistics, auc_warning,
                      check_concept_labels, held_out_auc, residual_auc, residual_warning)
from .pooling import (AUTO, POOLING_CHOICES, POOLINGS, SPATIAL, PoolingChoice, auto_pooling, pool_activation,
                      spatial_shape_of)


@torch.no_grad()
def held_out_mask(index: torch.Tensor, every: int) -> torch.Tensor:
    """Which samples (by their index in the data) are held out for the AUC: a fixed pseudo-random one in ``every``.

    A hash of the index (splitmix64), not ``index % every``: the choice is the same on any number of processes and
    in any batch order, and it does not follow a periodic pattern in the data (concept labels that alternate, as
    in ``arange(n) % 2``, held out only one concept value with ``index % 2``)."""
    x = index.cpu().numpy().astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return torch.from_numpy(x % np.uint64(every) == 0).to(index.device)


def compute_cav(model: nn.Module, layer: str | None, data: Any, *, concept: str | None = None,
                method: str = "signal", pooling: str = AUTO, concept_column: str = "concept",
                batch_size: int = 64, device: str | torch.device | None = None,
                validation_fraction: float = 0.1, max_validation_samples: int = 2048,
                fit_intercept: bool = True, cv: int = 3, seed: int = 0, progress: bool = True) -> CAV:
    """Compute a CAV for ``concept`` at ``layer`` of ``model``.

    Args:
        layer: a module name (``"layer3"``, ``"blocks.5"``, ``"head:input"``); ``None``: the classifier's input,
            or on a vision transformer (``hf_debias.token_models``) its patch embedding, where a corner artifact is
            still in its own tokens and the corrections were measured to remove it (BENCHMARKS §4g).
        data: a ``DataLoader`` (or any iterable) of batches — ``(pixel_values, concept_labels)`` tuples or dicts
            with ``pixel_values`` and ``concept_column`` —, a ``(pixel_values, concept_labels)`` pair of tensors,
            or a ``datasets.Dataset`` with ``pixel_values`` (or ``image``, preprocessed with the model's own
            data config) and ``concept_column``.
        method: ``signal`` (default) or ``fastcav`` stream; ``svm`` / ``ridge`` / ``lasso`` / ``logistic``
            collect the pooled activations and fit a scikit-learn model.
        pooling: ``max`` or ``mean`` over positions / tokens, ``cls`` (first token) for token models, ``none``
            (a spatial CAV: every position keeps its channels, for an artifact at a fixed place; it then fits one
            input size, and RR-ClArC penalises the gradient along the whole map), or
            ``auto`` (the default; earlier versions used ``max``): the pooling the model itself applies to the
            layer, measured by ``auto_pooling`` on the first batch (a forward and a backward pass on at most 8
            images) — ``mean`` when the layer is read through global average pooling (e.g. the last stage before
            timm's ``global_pool`` or a transformers pooler, where a mean-pooled CAV is the direction the head
            sees), ``cls`` when only the class token reaches the head, ``none`` (spatial) at a vision
            transformer's patch embedding, else ``max`` (the paper's choice). The choice and its reason are
            recorded in ``cav.fit_params["pooling_reason"]``.
        validation_fraction: a fixed pseudo-random share (one in round(1 / fraction), by sample index; see
            ``held_out_mask``) is held out, up to ``max_validation_samples``,
            to measure the concept-detection AUC (``cav.quality``: ``auc`` and the ``held_out_with`` /
            ``held_out_without`` counts it rests on; see ``hf_debias.cav.describe_auc``). It warns when fewer than
            ``MIN_AUC_SAMPLES_PER_VALUE`` (20) of either kind were held out, and when only one kind was (no AUC);
            0 uses every sample for the fit.
        device: where to run (default: where the model's parameters are).

    Under ``torch.distributed`` (more than one process) a tensor pair or a ``datasets.Dataset`` is split over the
    processes (a DataLoader should use a ``DistributedSampler``), the per-class sums are summed across them and
    every process returns the same CAV as one process on all the data.
    """
    check_choice("method", method, CAV_METHODS)
    check_choice("pooling", pooling, POOLING_CHOICES)
    if not 0.0 <= validation_fraction < 1.0:
        raise ValueError(f"validation_fraction must be in [0, 1), got {validation_fraction!r}.")
    patch_embedding = patch_embedding_layer(model)
    if layer is None and patch_embedding is not None:
        layer = patch_embedding
    ref = resolve_layer(model, layer)
    device = torch.device(device) if device is not None else model_device(model)
    was_training = model.training
    model.eval()
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) if is_distributed() else (0, 1)
    batches = _batches(data, model, concept_column, batch_size, rank, world)
    first = next(batches, None)
    choice = None
    if pooling == AUTO and ref.name == patch_embedding and not ref.on_input:
        choice = PoolingChoice(SPATIAL, f"{ref.spec!r} is a vision transformer's patch embedding: a spatial CAV "
                                        "keeps each token's own direction (an artifact lives in its own patches)")
        pooling = choice.pooling
    elif pooling == AUTO:
        try:
            choice = _agreed_pooling(model, layer, first, world)
        except BaseException:
            model.train(was_training)
            raise
        pooling = choice.pooling
    if first is not None:
        batches = itertools.chain([first], batches)
    hook = LayerHook(ref, stop_forward=True)
    streaming = method in STREAMING_METHODS
    stats: ConceptStatistics | None = None
    fit_rows: list[torch.Tensor] = []
    fit_labels: list[torch.Tensor] = []
    fit_index: list[torch.Tensor] = []
    held_rows: list[torch.Tensor] = []
    held_labels: list[torch.Tensor] = []
    held_maps: list[torch.Tensor] = []  # the first held-out images' whole activations, for residual_auc
    kept_maps = 0
    every = round(1 / validation_fraction) if validation_fraction > 0 else 0
    seen = held = 0
    spatial_shape = None
    try:
        for pixel_values, labels, index in tqdm(batches, desc="computing CAV", disable=not progress or rank > 0,
                                                total=_num_batches(data, batch_size, world)):
            labels = check_concept_labels(labels, pixel_values.shape[0], require_both=False)
            hook.reset()
            try:
                model(pixel_values.to(device))
            except StopForward:
                pass
            if hook.activation is None:
                raise RuntimeError(f"Layer {ref.spec!r} did not run during the forward pass.")
            if pooling == SPATIAL:
                shape = spatial_shape_of(hook.activation)
                if spatial_shape is not None and shape != spatial_shape:
                    raise ValueError(f"pooling='none' (a spatial CAV) needs one input size: layer {ref.spec!r} gave "
                                     f"positions {spatial_shape} and then {shape}; resize the images to one size.")
                spatial_shape = shape
            pooled = pool_activation(hook.activation, pooling).float().cpu()
            seen += labels.numel()
            take = held_out_mask(index, every) if every else torch.zeros_like(index, dtype=torch.bool)
            if held + int(take.sum()) > max_validation_samples:
                take &= torch.cumsum(take.long(), 0) <= max_validation_samples - held
            held += int(take.sum())
            if take.any():
                held_rows.append(pooled[take])
                held_labels.append(labels[take])
                if pooling != SPATIAL and hook.activation.dim() > 2 and kept_maps < RESIDUAL_MAX_SAMPLES:
                    maps = channels_last(hook.activation[take.to(hook.activation.device)])
                    held_maps.append(maps[:RESIDUAL_MAX_SAMPLES - kept_maps].float().cpu())
                    kept_maps += held_maps[-1].shape[0]
            if streaming:
                stats = stats or ConceptStatistics(pooled.shape[1])
                stats.update(pooled[~take], labels[~take])
            else:
                fit_rows.append(pooled[~take])
                fit_labels.append(labels[~take])
                fit_index.append(index[~take])
    finally:
        hook.remove()
        model.train(was_training)
    if world > 1:  # every process ends with the statistics (or rows) of all of them
        seen = int(all_reduce_sum(torch.tensor([seen], dtype=torch.float64))[0])
        if streaming:
            channels = _num_channels_everywhere(stats.num_channels if stats is not None else 0)  # collective
            stats = stats if stats is not None else ConceptStatistics(channels)
            all_reduce_sum(stats.sums)
            all_reduce_sum(stats.counts)
        else:
            order = gather(torch.cat(fit_index)).argsort()  # the sample order of one process: same folds, same fit
            fit_rows = [gather(torch.cat(fit_rows))[order]]
            fit_labels = [gather(torch.cat(fit_labels))[order]]
        if every:
            width = (stats.num_channels if streaming else fit_rows[0].shape[1])
            held_rows = [gather(torch.cat(held_rows) if held_rows else torch.zeros(0, width))]
            held_labels = [gather(torch.cat(held_labels) if held_labels else torch.zeros(0, dtype=torch.long))]
    if seen == 0:
        raise ValueError("data yielded no samples.")
    name, revision = model_identity(model)
    metadata = dict(concept=concept, layer=ref.spec, pooling=pooling, base_model_name_or_path=name,
                    revision=revision, spatial_shape=spatial_shape)
    if streaming:
        cav = CAV.from_statistics(stats, method=method, **metadata)
    else:
        cav = CAV.fit(torch.cat(fit_rows), torch.cat(fit_labels), method=method, fit_intercept=fit_intercept,
                      cv=cv, seed=seed, **metadata)
    if choice is not None:
        cav.fit_params["pooling_reason"] = choice.reason
    if every:
        rows = torch.cat(held_rows) if held_rows else torch.zeros(0, cav.vector.numel())
        labels = torch.cat(held_labels) if held_labels else torch.zeros(0, dtype=torch.long)
        cav.quality.update(held_out_auc(cav.project(rows), labels))
        read_pooled = not held_maps or world > 1 or _model_reads_pooled(model, layer, choice, pooling, first)
        if read_pooled:
            cav.quality["residual_auc"] = residual_auc(rows, labels, cav.vector)
        else:  # every position projected off the channel direction: what the later layers read
            maps = torch.cat(held_maps)
            cav.quality["residual_auc"] = residual_auc(maps, labels[:maps.shape[0]], cav.vector)
        # a spatial CAV's rows are every position already
        cav.fit_params["residual_space"] = "positions" if pooling == SPATIAL or not read_pooled else "pooled"
        for warning in (auc_warning(cav.quality), residual_warning(cav.quality)):
            if warning and rank == 0:
                warnings.warn(warning, stacklevel=3)
    return cav


def _model_reads_pooled(model: nn.Module, layer: str | None, choice: PoolingChoice | None, pooling: str,
                        first: tuple | None) -> bool:
    """Whether the later layers read the layer only through the CAV's own pooling (``mean`` before global average
    pooling, ``cls`` when only the class token reaches the head): then the pooled space is the one to probe for
    ``residual_auc``; else every position is."""
    if pooling not in ("mean", "cls") or first is None:
        return False
    reads = choice if choice is not None else auto_pooling(model, layer, first[0])
    return reads.pooling == pooling


def _agreed_pooling(model: nn.Module, layer: str | None, first: tuple | None, world: int) -> PoolingChoice:
    """``auto_pooling`` on the first batch; under ``torch.distributed`` every process takes the same choice (a
    process without data takes the others')."""
    choice = auto_pooling(model, layer, first[0]) if first is not None else None
    if world == 1:
        if choice is None:
            raise ValueError("data yielded no samples.")
        return choice
    code = torch.tensor([POOLINGS.index(choice.pooling) + 1 if choice is not None else 0])
    agreed = POOLINGS[int(all_reduce_max(code)[0]) - 1]
    if choice is not None and choice.pooling == agreed:
        return choice
    return PoolingChoice(agreed, "as measured on the other processes' data")


def _num_channels_everywhere(local: int) -> int:
    """A process that saw no sample learns the channel count from the others."""
    return int(all_reduce_max(torch.tensor([local]))[0])


def _num_batches(data: Any, batch_size: int, world: int = 1) -> int | None:
    if isinstance(data, tuple) and len(data) == 2:
        return -(-len(data[0]) // (batch_size * world))
    try:
        length = len(data)
    except TypeError:
        return None
    return length if isinstance(data, torch.utils.data.DataLoader) else -(-length // (batch_size * world))


def _batches(data: Any, model: nn.Module, concept_column: str, batch_size: int, rank: int = 0,
             world: int = 1) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Normalise every supported input to ``(pixel_values, concept_labels, sample_indices)`` batches; tensor pairs
    and datasets are split over ``world`` processes (this one takes every ``world``-th sample from ``rank``)."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        images, labels = data
        labels = torch.as_tensor(labels)
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} concept labels.")
        mine = torch.arange(rank, images.shape[0], world)
        for start in range(0, mine.numel(), batch_size):
            index = mine[start:start + batch_size]
            yield images[index], labels[index], index
        return
    if _is_hf_dataset(data):
        yield from _dataset_batches(data, model, concept_column, batch_size, rank, world)
        return
    seen = 0
    if not isinstance(data, Iterable):
        raise ValueError(f"data must be a DataLoader, a (pixel_values, concept_labels) pair or a datasets.Dataset, "
                         f"got {type(data).__name__}.")
    for batch in data:
        if isinstance(batch, dict):
            if "pixel_values" not in batch or concept_column not in batch:
                raise ValueError(f"Each batch needs 'pixel_values' and {concept_column!r}; got keys {sorted(batch)}. "
                                 "Pass concept_column=... to name the concept label column.")
            pixels, labels = batch["pixel_values"], torch.as_tensor(batch[concept_column])
        elif isinstance(batch, (tuple, list)) and len(batch) >= 2:
            pixels, labels = batch[0], torch.as_tensor(batch[1])
        else:
            raise ValueError(f"A batch must be (pixel_values, concept_labels) or a dict, got {type(batch).__name__}.")
        yield pixels, labels, torch.arange(seen, seen + labels.numel()) * world + rank
        seen += labels.numel()


def _is_hf_dataset(data: Any) -> bool:
    return type(data).__module__.startswith("datasets") and hasattr(data, "column_names")


def _dataset_batches(dataset, model: nn.Module, concept_column: str, batch_size: int, rank: int,
                     world: int) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    from ..data.transforms import image_transform_for

    names = dataset.column_names
    if concept_column not in names:
        raise ValueError(f"The dataset has no concept column {concept_column!r}; its columns are {names}.")
    to_pixels = None
    if "pixel_values" not in names:
        if "image" not in names:
            raise ValueError(f"The dataset needs a 'pixel_values' or an 'image' column; it has {names}.")
        to_pixels = image_transform_for(model)
    mine = list(range(rank, len(dataset), world))
    for start in range(0, len(mine), batch_size):
        index = mine[start:start + batch_size]
        rows = dataset[index] if world > 1 else dataset[index[0]:index[-1] + 1]
        pixels = to_pixels(rows["image"]) if to_pixels else torch.as_tensor(rows["pixel_values"])
        yield pixels, torch.as_tensor(rows[concept_column]), torch.as_tensor(index)
