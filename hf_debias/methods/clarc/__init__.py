"""The ClArC baselines: P-ClArC (projection at the layer) and A-ClArC (augmentation along the CAV)."""

from .config import AClArCConfig, PClArCConfig
from .method import AClArC, PClArC

__all__ = ["AClArC", "AClArCConfig", "PClArC", "PClArCConfig"]
