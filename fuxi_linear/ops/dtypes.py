"""The operator's two dtype rules, shared by the definition, the CPU path, the decode step and the launchers."""
from __future__ import annotations

import torch


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``x`` in ``dtype`` (no call at all when it already is: these paths are overhead-bound on a CPU)."""
    return x if x.dtype == dtype else x.to(dtype)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """What the operator computes and accumulates in for inputs of ``dtype``: float64 for float64, float32
    otherwise (half inputs accumulate in float32, as the kernels do)."""
    return torch.float64 if dtype == torch.float64 else torch.float32
