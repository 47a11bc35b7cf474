"""RRR: Right for the Right Reasons (Ross et al., IJCAI 2017), the input-gradient baseline of the RR-ClArC paper."""

from .config import RRRConfig
from .method import RRR

__all__ = ["RRR", "RRRConfig"]
