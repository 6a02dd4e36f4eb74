"""fuxi-linear: FuXi-Linear (arXiv 2602.23671) with Triton kernels for long, time-aware user sequences."""
from .config import FuXiLinearConfig
from .decoding.decode_state import DecodeState
from .model import FuXiLinear

__version__ = "0.1.0"
__all__ = ["FuXiLinear", "FuXiLinearConfig", "DecodeState", "__version__"]
