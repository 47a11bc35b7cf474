"""hf_debias: remove known biases from timm / Hugging Face image classifiers while fine-tuning."""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# Public name -> the module that defines it. Imported on first use (PEP 562), so that `hf-debias --help`, which
# imports this package first, does not wait for torch / timm / transformers.
_EXPORTS = {
    "DebiasConfig": "config", "available_methods": "config",
    "LayerInfo": "layers", "find_classifier": "layers", "list_layers": "layers", "resolve_layer": "layers",
    "CAV": "cav", "compute_cav": "cav",
    "AClArCConfig": "methods", "ComposedConfig": "methods", "EnDConfig": "methods", "PClArCConfig": "methods",
    "RRClArCConfig": "methods", "RRRConfig": "methods",
    "DebiasModel": "model", "DebiasOutput": "model", "get_debias_model": "model",
    "ModelCardInfo": "hub", "load_model": "hub", "push_folder": "hub",
    "DebiasTrainer": "trainer", "DebiasTrainingArguments": "training_args",
    "attribute": "attribution", "save_heatmap_grid": "heatmaps",
    "RelevanceComparison": "relevance_report", "compare_artifact_relevance": "relevance_report",
    "PseudoLabelConfig": "pseudo_labels", "PseudoLabels": "pseudo_labels", "pseudo_bias_labels": "pseudo_labels",
}
_SUBMODULES = ("functional", "models")

__all__ = sorted([*_EXPORTS, "__version__", "functional"])


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'hf_debias' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS, *_SUBMODULES])


class _RegisterModelsAfterTimm(importlib.abc.MetaPathFinder):
    """Registers hf_debias' timm models (``simple_convnet``) as soon as timm is imported, whatever the order of
    ``import hf_debias`` and ``import timm``, without importing timm (and torch) to start the command line."""

    _searching = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "timm" or self._searching:
            return None
        self._searching = True  # find timm's real spec with the other finders (a look-up alone imports nothing)
        try:
            spec = importlib.util.find_spec("timm")
        finally:
            self._searching = False
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return spec
        finder, exec_module = self, spec.loader.exec_module

        def exec_then_register(module):
            exec_module(module)
            if finder in sys.meta_path:
                sys.meta_path.remove(finder)
            importlib.import_module(".models", __name__)

        spec.loader.exec_module = exec_then_register
        return spec


if "timm" in sys.modules:  # timm is loaded already: registering the models costs nothing
    from . import models  # noqa: E402,F401
else:
    sys.meta_path.insert(0, _RegisterModelsAfterTimm())
