"""A classifier in its own library's Hub format: timm's ``config.json`` + ``model.safetensors`` (loads with
``timm.create_model("hf-hub:<id>")`` and ``AutoModelForImageClassification``), or a transformers model's own
``save_pretrained`` layout.

Two fixes happen at save time:

- timm 1.0.31 writes ``model_args.num_classes``, which transformers' ``TimmWrapper`` passes to timm a second
  time (``got multiple values for keyword argument 'num_classes'``); it is dropped (timm still reads the
  root ``num_classes``).
- ``refuse_plain_loading``: for corrections that change the forward pass, plain timm / transformers would build
  the uncorrected network and give wrong outputs without a word. Keys of ``config.json`` are then replaced by a
  sentence that ends "load it with hf_debias.load_model", which those loaders print in their error (see
  ``guard``); the real values are kept under ``hf_debias_<key>``. The keys are chosen so that no loader adds
  advice of its own: ``TimmWrapper``'s unknown-architecture error says "upgrade timm", transformers' unknown
  ``model_type`` error "upgrade transformers", so the field those loaders validate first holds the sentence.
  For transformers layouts the weights are also renamed ``hf_debias_model.safetensors``, so that even a loader
  that skips the config's checks finds nothing to load. ``load_native`` undoes both.

Saves are atomic (``atomic``): written into a temporary sibling, then moved into place behind a guarded
``config.json``. Loads read ``config.json`` and safetensors files only, never run a repo's code
(``trust_remote_code=False``; a config with an ``auto_map`` is refused at once), and refuse a folder that
disagrees with its ``debias_config.json`` (``integrity``).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from ..config import read_json_object
from .atomic import OWNED, install, staging_folder
from .integrity import check_folder
from .paths import inside

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
GUARDED_WEIGHTS_NAME = "hf_debias_model.safetensors"
GUARD_KEY = "hf_debias_guarded"
"""A guarded ``config.json`` lists here the keys the guard replaced; the real value of ``key`` is kept under
``hf_debias_<key>`` (absent when the key was not there)."""
_LEGACY_REAL_KEY = {"architecture": "hf_debias_architecture", "model_type": "hf_debias_model_type"}
"""What hf_debias versions before ``GUARD_KEY`` replaced."""
INCOMPLETE_KEY = "hf_debias_incomplete"
"""Marks the guarded ``config.json`` that stands in while a save into an existing folder moves its files."""


def native_format(model: nn.Module) -> str:
    """``"transformers"`` for a ``PreTrainedModel``, ``"timm"`` for a timm model; anything else is refused."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return "transformers"
    if isinstance(getattr(model, "pretrained_cfg", None), dict) and hasattr(model, "get_classifier"):
        return "timm"
    raise ValueError(f"Cannot save a {type(model).__name__} in a Hub format: hf_debias saves timm models (built "
                     "with timm.create_model) and transformers models (PreTrainedModel).")


def is_guarded(config: dict[str, Any]) -> bool:
    """Whether a ``config.json`` was guarded against plain loading by hf_debias."""
    return any(key in config for key in (GUARD_KEY, INCOMPLETE_KEY, *_LEGACY_REAL_KEY.values()))


def _strict_field(config_class: type | None, config: dict[str, Any], sentence: str) -> str | None:
    """A field of a transformers config class whose validator refuses ``sentence`` (an int or bool field): put
    there, the sentence is what transformers prints, before it builds anything."""
    validators = getattr(config_class, "__validators__", None) or {}
    for name, checks in validators.items():
        if name in ("model_type", "transformers_version") or not isinstance(config.get(name), (bool, int, float)):
            continue
        for check in checks:
            try:
                check(sentence)
            except (TypeError, ValueError):
                return name
    return None


def guard(config: dict[str, Any], reason: str, config_class: type | None = None) -> dict[str, Any]:
    """``config`` with keys replaced by a sentence that plain loaders print in their error; the real value of each
    replaced key goes under ``hf_debias_<key>`` and the keys are listed under ``GUARD_KEY``, for ``load_native``.

    timm layouts: ``architecture`` (timm prints "Unknown model (<sentence>)") and ``do_pooling`` (validated by
    transformers' ``TimmWrapperConfig`` before the architecture is looked up). transformers layouts: a number
    field that ``config_class`` validates (transformers prints "Field 'hidden_size' expected int, got str (value:
    '<sentence>')"), else ``model_type``.
    """
    config = dict(config)
    # no ':' or '/': timm would read them as a source prefix or a repo id and print advice of its own
    reason = reason.replace(":", " -").replace("/", " or ")
    real_name = config.get("architecture", config.get("model_type"))
    sentence = (f"{real_name} corrected by hf_debias - {reason}, so plain timm or transformers would build the "
                f"uncorrected network - load it with hf_debias.load_model")
    if "architecture" in config:
        keys = ["architecture", "do_pooling"]
    else:
        field = _strict_field(config_class, config, sentence)
        keys = [field] if field else ["model_type"]
    for key in keys:
        if key in config:
            config[f"hf_debias_{key}"] = config[key]
        config[key] = sentence
    config[GUARD_KEY] = keys
    return config


def _unguard(config: dict[str, Any]) -> dict[str, Any]:
    """The config ``guard`` was given (also for hf_debias versions that kept ``_LEGACY_REAL_KEY``)."""
    config = dict(config)
    keys = config.pop(GUARD_KEY, None)
    if keys is None:
        keys = [key for key, legacy in _LEGACY_REAL_KEY.items() if legacy in config]
    if not isinstance(keys, list) or not all(isinstance(key, str) and key for key in keys):
        raise ValueError(f"config.json: field {GUARD_KEY!r} must list the guarded keys, got {keys!r}.")
    for key in keys:
        if f"hf_debias_{key}" in config:
            config[key] = config.pop(f"hf_debias_{key}")
        else:
            config.pop(key, None)
    return config


def _json_bytes(config: dict[str, Any]) -> bytes:
    return (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()


def _label_names(model: nn.Module, timm_wrapper: bool, num_classes: int) -> list[str] | None:
    """Class names for timm's ``config.json`` (``label_names``): the timm model's ``pretrained_cfg``, or a
    TimmWrapper's ``id2label`` unless it holds transformers' placeholders."""
    if timm_wrapper:
        id2label = getattr(model.config, "id2label", None) or {}
        names = [id2label[i] for i in sorted(id2label)]
        if names == [f"LABEL_{i}" for i in range(len(names))]:
            return None
    else:
        names = model.pretrained_cfg.get("label_names")
    if names is None:
        return None
    if isinstance(names, dict):
        names = [names[i] for i in sorted(names)]
    if not isinstance(names, (list, tuple)) or not all(isinstance(name, str) for name in names):
        raise ValueError(f"pretrained_cfg['label_names'] must be a list of class names (strings), got {names!r}.")
    if len(names) != num_classes:
        raise ValueError(f"pretrained_cfg['label_names'] has {len(names)} names but the classifier has "
                         f"{num_classes} classes; give one name per class.")
    return list(names)


def write_native(model: nn.Module, folder: Path, *, refuse_plain_loading: str | None = None) -> str:
    """Write ``model`` in its library's format into ``folder`` (a fresh staging folder); return the format."""
    kind = native_format(model)
    timm_wrapper = kind == "transformers" and getattr(model.config, "model_type", None) == "timm_wrapper"
    if kind == "timm" or timm_wrapper:
        # A TimmWrapper is saved as the timm model inside it (timm keys, timm's config) plus its model_type:
        # transformers' own save may keep the "timm_model." key prefix, which timm cannot read.
        from timm.models import save_for_hf

        inner = model.timm_model if timm_wrapper else model
        names = _label_names(model, timm_wrapper, inner.num_classes)
        save_for_hf(inner, folder, model_config={"label_names": names} if names else None, safe_serialization=True)
    else:
        model.save_pretrained(folder, safe_serialization=True)
    config_path = folder / CONFIG_NAME
    config = read_json_object(config_path, "model config")
    if timm_wrapper:
        config.update(model_type="timm_wrapper", do_pooling=model.config.do_pooling)
    if isinstance(config.get("model_args"), dict):
        config["model_args"].pop("num_classes", None)  # timm 1.0.31 vs transformers 5 (see module docstring)
    if refuse_plain_loading:
        config = guard(config, refuse_plain_loading, type(model.config) if kind == "transformers" else None)
        if _renames_weights(config):  # a model class called directly may ignore the guard: give it no weights
            (folder / WEIGHTS_NAME).rename(folder / GUARDED_WEIGHTS_NAME)
    config_path.write_bytes(_json_bytes(config))
    return kind


def _renames_weights(config: dict[str, Any]) -> bool:
    """A guarded transformers layout keeps its weights as ``GUARDED_WEIGHTS_NAME``."""
    return is_guarded(config) and not config.get(INCOMPLETE_KEY) and "architecture" not in _unguard(config)


def barrier(staging: Path) -> tuple[str, bytes]:
    """The guarded ``config.json`` moved first into an existing folder (see ``atomic``): the new one when it is
    guarded, else a guarded copy marked as a save in progress."""
    config = read_json_object(staging / CONFIG_NAME, "model config")
    if is_guarded(config):
        return CONFIG_NAME, _json_bytes(config)
    marked = {**guard(config, "an hf_debias save into this folder did not finish", _config_class(config)),
              INCOMPLETE_KEY: True}
    return CONFIG_NAME, _json_bytes(marked)


def _config_class(config: dict[str, Any]) -> type | None:
    from transformers import CONFIG_MAPPING

    try:
        return CONFIG_MAPPING[config["model_type"]] if "architecture" not in config else None
    except KeyError:
        return None


def save_native(model: nn.Module, save_directory: str | os.PathLike, *, refuse_plain_loading: str | None = None,
                ) -> str:
    """Write ``model`` into ``save_directory`` in its library's format, atomically; return the format's name.

    Files of an earlier hf_debias save there are replaced or removed; other files are left alone.

    Args:
        refuse_plain_loading: when set, the reason plain timm / transformers must not load this folder (e.g.
            ``"EnD changes the forward pass"``); see the module docstring.
    """
    with staging_folder(save_directory) as staging:
        kind = write_native(model, staging, refuse_plain_loading=refuse_plain_loading)
        install(staging, save_directory, owned=OWNED, barrier=barrier(staging), last=[CONFIG_NAME])
    return kind


def check_safetensors(path: Path) -> None:
    """Raise a clear error for a missing, truncated or corrupt safetensors file, before anything is built."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            handle.keys()
    except Exception as err:  # safetensors raises its own SafetensorError, or OSError
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}. Nothing was "
                         "loaded; download or save it again.") from err


def load_native(folder: str | os.PathLike) -> nn.Module:
    """Build the classifier saved in ``folder`` by ``save_native`` (or any timm / transformers Hub layout with
    safetensors weights), reading only ``config.json`` and safetensors files and running no code from the folder.

    Raises:
        ValueError: a config that needs remote code (``auto_map``), an interrupted save, a guarded config without
            its ``debias_config.json``, files that disagree with that file's record, a file outside the folder.
        FileNotFoundError: no ``config.json`` or no safetensors weights.
    """
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {CONFIG_NAME}; found {sorted(p.name for p in folder.iterdir())}.")
    config = read_json_object(inside(folder, config_path, CONFIG_NAME), "model config")
    if "auto_map" in config:
        raise ValueError(f"{config_path} has an 'auto_map': this model needs Python code shipped with the repo, and "
                         "hf_debias never runs a repo's code (trust_remote_code=False). Nothing was loaded or run.")
    if config.get(INCOMPLETE_KEY):
        raise ValueError(f"{config_path} marks a save into {str(folder)!r} that did not finish; nothing was loaded. "
                         "Save the model again.")
    check_folder(folder, guarded=is_guarded(config))
    name = GUARDED_WEIGHTS_NAME if _renames_weights(config) else WEIGHTS_NAME
    weights = folder / name
    if not weights.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {name}; hf_debias reads safetensors weights only "
                                "(never pickle files such as pytorch_model.bin).")
    check_safetensors(inside(folder, weights, name))
    config = _unguard(config)
    for key in ("architecture", "model_type"):
        if key in config and not isinstance(config[key], str):
            raise ValueError(f"{config_path}: field {key!r} must be a string, got {config[key]!r}.")
    with tempfile.TemporaryDirectory(prefix="hf_debias_load_") as staging:
        # A clean view of the folder: the restored config and the weights under their usual name, nothing else.
        staged = Path(staging)
        (staged / CONFIG_NAME).write_text(json.dumps(config))
        os.symlink(weights.resolve(), staged / WEIGHTS_NAME)
        if "model_type" in config:
            from transformers import AutoModelForImageClassification

            return AutoModelForImageClassification.from_pretrained(staged, use_safetensors=True,
                                                                   trust_remote_code=False)
        import timm

        return timm.create_model(f"local-dir:{staged}", pretrained=True)
