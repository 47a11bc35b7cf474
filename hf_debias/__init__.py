"""hf_debias: remove known biases from timm / Hugging Face image classifiers while fine-tuning."""

from __future__ import annotations

import importlib
import sys

__version__ = "0.1.0"

# Public name -> the module that defines it. Imported on first use (PEP 562), so that `hf-debias --help`, which
# imports this package first, does not wait for torch / timm / transformers.
_EXPORTS = {
    "DebiasConfig": "config", "available_methods": "config",
    "LayerInfo": "layers", "find_classifier": "layers", "list_layers": "layers", "resolve_layer": "layers",
    "CAV": "cav", "compute_cav": "cav",
    "AClArCConfig": "methods", "EnDConfig": "methods", "PClArCConfig": "methods", "RRClArCConfig": "methods",
    "DebiasModel": "model", "DebiasOutput": "model", "get_debias_model": "model",
    "ModelCardInfo": "hub", "load_model": "hub", "push_folder": "hub",
    "DebiasTrainer": "trainer", "DebiasTrainingArguments": "trainer",
}
_SUBMODULES = ("functional", "models")

__all__ = sorted([*_EXPORTS, "__version__", "functional"])


def __getattr__(name: str):
    if name in _EXPORTS:
        importlib.import_module(".models", __name__)  # registers hf_debias' timm models (simple_convnet)
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'hf_debias' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])


# ``simple_convnet`` is registered with timm when ``hf_debias.models`` is imported: on first use of any public name
# above, or here when timm is loaded already. After only ``import hf_debias`` and then ``import timm``, import
# ``hf_debias.models`` before ``timm.create_model("simple_convnet")``.
if "timm" in sys.modules:  # timm is loaded already: registering the models costs nothing
    from . import models  # noqa: E402,F401
