"""EnD: Entangling and Disentangling deep representations (Tartaglione et al., CVPR 2021)."""

from .config import EnDConfig
from .method import EnD

__all__ = ["EnD", "EnDConfig"]
