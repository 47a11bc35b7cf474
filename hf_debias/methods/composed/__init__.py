"""Several corrections at once: one method made of parts (EnD with RR-ClArC, one RR-ClArC per CAV...)."""

from .config import ComposedConfig
from .method import ComposedMethod

__all__ = ["ComposedConfig", "ComposedMethod"]
