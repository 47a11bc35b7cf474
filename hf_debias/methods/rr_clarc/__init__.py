"""RR-ClArC: Right-Reason Class Artifact Compensation (Dreyer et al., "From Hope to Safety", AAAI 2024)."""

from .config import RRClArCConfig
from .method import RRClArC

__all__ = ["RRClArC", "RRClArCConfig"]
