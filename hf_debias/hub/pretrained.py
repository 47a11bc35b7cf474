"""Save, push and load corrected models.

A saved corrected model is a folder (or Hub repo) holding:

- the classifier in its own library's format (``config.json`` + safetensors; see ``native``), so a correction
  that leaves the forward pass alone loads by name in plain timm and transformers with the same logits;
- ``debias_config.json``: method, layer, hyper-parameters, base model id and revision, hf_debias version;
- ``cav/`` for CAV-based methods (``cav.safetensors`` + ``cav_config.json``); a composed correction keeps each
  CAV part's in ``cav_<index>/`` and lists every part in its one ``debias_config.json``;
- ``README.md``: the model card, plus ``report.png`` / ``heatmaps.png`` when a chart / heatmap grid is given.

``load_model`` restores every kind, the forward-changing ones included, with the same logits as before saving.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from torch import nn

from ..config import CONFIG_NAME, DebiasConfig
from ..loading import model_identity, unwrap_model
from ..model import DebiasModel, get_debias_model
from .atomic import OWNED, files_under, install, staging_folder
from .cards import ModelCardInfo, copy_chart, debias_model_card
from .integrity import add_record
from .native import CONFIG_NAME as MODEL_CONFIG_NAME
from .native import barrier, load_native, write_native
from .paths import recordable_name
from .push import save_and_push
from .resolve import resolve_folder


def _recorded_config(model: DebiasModel) -> DebiasConfig:
    """The model's config with its base model filled in from the model when the user did not record one (in
    every part of a composed correction too)."""
    return _with_base_model(model.debias_config, *model_identity(model.model))


def _with_base_model(config: DebiasConfig, found_name: str | None, found_revision: str | None) -> DebiasConfig:
    name, revision = config.base_model_name_or_path, config.revision
    if name is None:
        name, revision = found_name, revision or found_revision
    changes = {}
    if (name, revision) != (config.base_model_name_or_path, config.revision) or recordable_name(name) != name:
        changes.update(base_model_name_or_path=recordable_name(name), revision=revision)
    parts = getattr(config, "corrections", None)
    if parts is not None:
        recorded = [_with_base_model(part, name, revision) for part in parts]
        if any(new is not old for new, old in zip(recorded, parts)):
            changes["corrections"] = recorded
    return dataclasses.replace(config, **changes) if changes else config


def _cavs_of(config: DebiasConfig) -> list:
    """The CAVs a saved config writes: its own, or each CAV part's of a composed correction."""
    parts = getattr(config, "corrections", [config])
    return [part.load_cav() for part in parts if hasattr(part, "load_cav")]


def _forward_change_reason(config: DebiasConfig, model: DebiasModel) -> str | None:
    """Why plain loaders must refuse the saved folder (which parts change the forward pass); None: they may load it."""
    if not model.method.alters_forward:
        return None
    parts = getattr(model.method, "parts", None)
    if parts is None:
        return f"{config.method_title or config.debias_method} changes the forward pass"
    titles = [part.config.method_title or part.config.debias_method for part in parts if part.alters_forward]
    return f"{' and '.join(titles)} in this composed correction change{'s' if len(titles) == 1 else ''} the " \
           "forward pass"


def save_model(model: nn.Module, save_directory: str | os.PathLike, *, card: ModelCardInfo | None = None,
               repo_id: str | None = None, image_processor: Any | None = None) -> Path:
    """Save a ``DebiasModel`` (or a plain classifier) into ``save_directory``; see the module docstring.

    The save is atomic (``hub.atomic``): written into a temporary sibling folder, then moved into place behind a
    guarded ``config.json``, ``debias_config.json`` (with the sha256 of the model files) moved last. Files of an
    earlier hf_debias save in the folder are replaced or removed; files hf_debias did not write are left alone.

    Args:
        card: what the model card says beyond the config (bias, metrics before / after, chart).
        repo_id: the name the card shows in its loading examples (default: the folder's name).
        image_processor: a transformers image processor saved with the model (``preprocessor_config.json``), so
            that ``AutoImageProcessor`` and ``pipeline("image-classification")`` work on the folder or repo.
    """
    model = unwrap_model(model, through_debias=False)
    folder = Path(save_directory)
    if not isinstance(model, DebiasModel):
        with staging_folder(folder) as staging:
            write_native(model, staging)
            if image_processor is not None:
                image_processor.save_pretrained(staging)
            copy_chart(card, staging)  # a run's report.png / heatmaps.png stay beside the plain model too
            install(staging, folder, owned=OWNED, barrier=barrier(staging), last=[MODEL_CONFIG_NAME])
        return folder
    if model.method is None:
        raise RuntimeError("This DebiasModel was unloaded; save the model that unload() returned instead.")
    config = _recorded_config(model)
    reason = _forward_change_reason(config, model)
    with staging_folder(folder) as staging:
        library = write_native(model.model, staging, refuse_plain_loading=reason)
        if image_processor is not None:
            image_processor.save_pretrained(staging)
        config.save_pretrained(staging)
        cavs = _cavs_of(config)
        copy_chart(card, staging)
        debias_model_card(config, repo_id=repo_id or folder.resolve().name, library=library,
                          plain_loading=reason is None, info=card, cav=cavs[0] if len(cavs) == 1 else None,
                          folder=staging, method_config=getattr(model.method, "config", None),
                          ).save(staging / "README.md")
        add_record(staging, files_under(staging))
        install(staging, folder, owned=OWNED, barrier=barrier(staging), last=[CONFIG_NAME, MODEL_CONFIG_NAME])
        for cav in cavs:
            if cav.name_or_path is not None and Path(cav.name_or_path).parent == staging:
                cav.name_or_path = str(folder / Path(cav.name_or_path).name)  # it now lives in the saved folder
    return folder


def push_model(model: nn.Module, repo_id: str, *, save_directory: str | os.PathLike | None = None,
               card: ModelCardInfo | None = None, commit_message: str = "Upload corrected model with hf_debias",
               token: str | None = None, private: bool | None = None, revision: str | None = None,
               create_pr: bool = False, image_processor: Any | None = None):
    """Save the model locally (``save_directory``, else a fresh staging folder), then push it in one commit.

    On success a staging folder is removed; on failure it is kept and the ``PushError`` names it.
    ``image_processor`` is saved with the model (see ``save_model``).
    """
    return save_and_push(lambda folder: save_model(model, folder, card=card, repo_id=repo_id,
                                                   image_processor=image_processor), repo_id,
                         save_directory=save_directory, commit_message=commit_message, token=token,
                         private=private, revision=revision, create_pr=create_pr)


def load_model(name_or_path: str | os.PathLike, *, revision: str | None = None, **hub_kwargs: Any) -> nn.Module:
    """Load a model saved by hf_debias — a folder or a Hub repo id — with its correction restored.

    Returns a ``DebiasModel`` in eval mode when the folder holds a ``debias_config.json`` (its logits equal the
    saved model's), else the plain classifier. ``debias_config.json`` keys from a newer hf_debias are dropped
    with a warning. Only JSON and safetensors files are read; ``hub_kwargs`` (``token``, ``cache_dir``,
    ``local_files_only``...) go to ``huggingface_hub.snapshot_download``.
    """
    folder = resolve_folder(name_or_path, revision=revision, allow_patterns=list(OWNED), **hub_kwargs)
    model = load_native(folder)  # checks the folder against debias_config.json's record first
    config = DebiasConfig.from_pretrained(folder) if (folder / CONFIG_NAME).is_file() else None
    if config is None:
        return model.eval()
    return get_debias_model(model, config).eval()
