"""Parameter-free normalisations used by the FuXi-Linear block (SPEC §5)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

NORM_EPS = 1e-6


def layer_norm(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """LayerNorm over the last dimension without affine weights. ``x: (..., D)``."""
    return F.layer_norm(x, x.shape[-1:], eps=eps)


def rms_norm(x: torch.Tensor, eps: float = NORM_EPS) -> torch.Tensor:
    """RMSNorm over the last dimension without a weight: ``x / sqrt(mean(x^2) + eps)``. ``x: (..., D)``."""
    if x.dtype in (torch.float32, torch.float64):  # no cast calls (a CPU decode step is bound by its calls)
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps).to(x.dtype)  # half precision
