"""One channel of a fused decode step (:func:`fuxi_linear.ops.fused_block_step`): its operands, shared by the
dispatch, the CPU path and the Triton launcher."""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

__all__ = ["StepChannel", "MAX_CHANNELS"]

#: Channels one launch advances (the three of a FuXi-Linear block).
MAX_CHANNELS = 3


class StepChannel(NamedTuple):
    """One channel of a fused decode step.

    Attributes:
        q, k: ``(N, H, K)`` float (bf16/fp16/fp32/fp64); v: ``(N, H, V)``, the same dtype.
        state: ``(N, H, K, V)``, or a pool ``(P, H, K, V)`` addressed by the step's ``state_indices``;
            float32 or float64, any strides; advanced in place.
        g: optional log-decay per (user, head) ``(N, H)``; or g_gamma: per head ``(H,)``; or neither.
        scale: multiplies ``q S``. k_scale: multiplies ``k`` in the state update.
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    state: torch.Tensor
    g: Optional[torch.Tensor] = None
    g_gamma: Optional[torch.Tensor] = None
    scale: float = 1.0
    k_scale: float = 1.0
