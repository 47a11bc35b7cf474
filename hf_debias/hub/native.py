"""A classifier in its own library's Hub format: timm's ``config.json`` + ``model.safetensors`` (loads with
``timm.create_model("hf-hub:<id>")`` and ``AutoModelForImageClassification``), or a transformers model's own
``save_pretrained`` layout.

Two fixes happen at save time:

- timm 1.0.31 writes ``model_args.num_classes``, which transformers' ``TimmWrapper`` passes to timm a second
  time (``got multiple values for keyword argument 'num_classes'``); it is dropped (timm still reads the
  root ``num_classes``).
- ``refuse_plain_loading``: for corrections that change the forward pass, plain timm / transformers would build
  the uncorrected network and give wrong outputs without a word. The architecture (or ``model_type``) is then
  replaced by a sentence that those loaders print in their error, the real one is kept under an
  ``hf_debias_*`` key. A transformers model class called directly ignores ``model_type``, so for those the
  weights are also renamed ``hf_debias_model.safetensors``: it finds nothing to load. ``load_native`` undoes
  both.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from torch import nn

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
GUARDED_WEIGHTS_NAME = "hf_debias_model.safetensors"
_REAL_KEY = {"architecture": "hf_debias_architecture", "model_type": "hf_debias_model_type"}


def native_format(model: nn.Module) -> str:
    """``"transformers"`` for a ``PreTrainedModel``, ``"timm"`` for a timm model; anything else is refused."""
    from transformers import PreTrainedModel

    if isinstance(model, PreTrainedModel):
        return "transformers"
    if isinstance(getattr(model, "pretrained_cfg", None), dict) and hasattr(model, "get_classifier"):
        return "timm"
    raise ValueError(f"Cannot save a {type(model).__name__} in a Hub format: hf_debias saves timm models (built "
                     "with timm.create_model) and transformers models (PreTrainedModel).")


def save_native(model: nn.Module, save_directory: str | os.PathLike, *, refuse_plain_loading: str | None = None,
                ) -> str:
    """Write ``model`` into ``save_directory`` in its library's format; return the format's name.

    Args:
        refuse_plain_loading: when set, the reason plain timm / transformers must not load this folder (e.g.
            ``"EnD changes the forward pass"``); see the module docstring.
    """
    folder = Path(save_directory)
    folder.mkdir(parents=True, exist_ok=True)
    kind = native_format(model)
    timm_wrapper = kind == "transformers" and getattr(model.config, "model_type", None) == "timm_wrapper"
    if kind == "timm" or timm_wrapper:
        # A TimmWrapper is saved as the timm model inside it (timm keys, timm's config) plus its model_type:
        # transformers' own save may keep the "timm_model." key prefix, which timm cannot read.
        from timm.models import save_for_hf

        save_for_hf(model.timm_model if timm_wrapper else model, folder, safe_serialization=True)
    else:
        model.save_pretrained(folder, safe_serialization=True)
    config_path = folder / CONFIG_NAME
    config = json.loads(config_path.read_text())
    if timm_wrapper:
        config.update(model_type="timm_wrapper", do_pooling=model.config.do_pooling)
    if isinstance(config.get("model_args"), dict):
        config["model_args"].pop("num_classes", None)  # timm 1.0.31 vs transformers 5 (see module docstring)
    if refuse_plain_loading:
        key = "architecture" if "architecture" in config else "model_type"  # timm / TimmWrapper, else transformers
        real = config[key]
        config[_REAL_KEY[key]] = real
        config[key] = (f"{real} corrected by hf_debias ({refuse_plain_loading}, so plain timm or transformers "
                       f"would build the uncorrected network) - load it with hf_debias load_model")
        if key == "model_type":  # a model class called directly ignores model_type: give it no weights either
            (folder / WEIGHTS_NAME).rename(folder / GUARDED_WEIGHTS_NAME)
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
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
    safetensors weights), reading only ``config.json`` and safetensors files."""
    folder = Path(folder)
    config_path = folder / CONFIG_NAME
    if not config_path.is_file():
        raise FileNotFoundError(f"{str(folder)!r} has no {CONFIG_NAME}; found {sorted(p.name for p in folder.iterdir())}.")
    config = json.loads(config_path.read_text())
    weights = [folder / name for name in (GUARDED_WEIGHTS_NAME, WEIGHTS_NAME) if (folder / name).is_file()]
    if not weights:
        raise FileNotFoundError(f"{str(folder)!r} has no {WEIGHTS_NAME}; hf_debias reads safetensors weights only "
                                "(never pickle files such as pytorch_model.bin).")
    check_safetensors(weights[0])
    for key, real_key in _REAL_KEY.items():
        if real_key in config:
            config[key] = config.pop(real_key)
    with tempfile.TemporaryDirectory(prefix="hf_debias_load_") as staging:
        # A clean view of the folder: the restored config and the weights under their usual name, nothing else.
        staged = Path(staging)
        (staged / CONFIG_NAME).write_text(json.dumps(config))
        os.symlink(weights[0].resolve(), staged / WEIGHTS_NAME)
        if "model_type" in config:
            from transformers import AutoModelForImageClassification

            return AutoModelForImageClassification.from_pretrained(staged, use_safetensors=True)
        import timm

        return timm.create_model(f"local-dir:{staged}", pretrained=True)
