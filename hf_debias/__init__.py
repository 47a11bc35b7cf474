"""hf_debias: remove known biases from timm / Hugging Face image classifiers while fine-tuning."""

__version__ = "0.1.0"

from .config import DebiasConfig, available_methods  # noqa: E402
from .layers import LayerInfo, find_classifier, list_layers, resolve_layer  # noqa: E402
from .cav import CAV, compute_cav  # noqa: E402
from .methods import AClArCConfig, EnDConfig, PClArCConfig, RRClArCConfig  # noqa: E402
from .model import DebiasModel, DebiasOutput, get_debias_model  # noqa: E402
from .hub import ModelCardInfo, load_model, push_folder  # noqa: E402
from . import functional, models  # noqa: E402,F401  (models registers timm names)

__all__ = [
    "AClArCConfig",
    "CAV",
    "DebiasConfig",
    "DebiasModel",
    "DebiasOutput",
    "DebiasTrainer",
    "DebiasTrainingArguments",
    "EnDConfig",
    "LayerInfo",
    "ModelCardInfo",
    "PClArCConfig",
    "RRClArCConfig",
    "__version__",
    "available_methods",
    "compute_cav",
    "find_classifier",
    "functional",
    "get_debias_model",
    "list_layers",
    "load_model",
    "push_folder",
    "resolve_layer",
]


def __getattr__(name: str):
    # The Trainer classes import transformers.Trainer (slow); load them on first use only.
    if name in ("DebiasTrainer", "DebiasTrainingArguments"):
        from . import trainer

        return getattr(trainer, name)
    raise AttributeError(f"module 'hf_debias' has no attribute {name!r}")
