"""fuxi-linear: FuXi-Linear (arXiv 2602.23671) with Triton kernels for long, time-aware user sequences."""
__version__ = "0.1.0"
