"""Small timm models that hf_debias registers (``timm.create_model(name)`` works once hf_debias is imported)."""

from .simple_convnet import SimpleConvNet, simple_convnet

__all__ = ["SimpleConvNet", "simple_convnet"]
