"""Launch configurations of the prefill kernels per channel shape, and the split-T plan (pure Python).

Chosen from sm_90 compiles (``python -m fuxi_linear.kernels.resources`` under triton 3.6 and 3.9: registers,
spills, shared memory; table in ``benchmarks/RESULTS.md``), not from GPU timings: none has been measured.
Nothing is keyed on B or T except the split plan, so a new batch or length never recompiles.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

__all__ = [
    "LaunchConfig",
    "uses_small_heads",
    "prefill_config",
    "segment_length",
    "PROGRAMS_PER_SM",
    "MIN_SEGMENT_CHUNKS",
    "MAX_K",
]

#: Largest q/k head dim of the general kernels: the whole K fits one block (K = 2 or 32 in FuXi).
MAX_K = 128
#: Tiny heads (K <= SMALL_K and V <= SMALL_V) take the small-head kernels (several heads per program,
#: CUDA-core products): the temporal channel (K = 2, V = 8).
SMALL_K = 4
SMALL_V = 16
#: The split plan aims at this many programs per SM (a few resident per SM plus waves to balance the tail).
PROGRAMS_PER_SM = 4
#: A segment holds at least this many chunks: shorter ones cost more in boundary states than they gain.
MIN_SEGMENT_CHUNKS = 2


@dataclass(frozen=True)
class LaunchConfig:
    """``BT`` chunk length, ``BV`` V-block (general kernels), ``HB`` heads per program (small-head kernels),
    ``num_warps``, ``num_stages``."""

    BT: int
    BV: int
    HB: int
    num_warps: int
    num_stages: int


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def uses_small_heads(K: int, V: int) -> bool:
    """True when the small-head kernels run this head shape."""
    return K <= SMALL_K and V <= SMALL_V


def prefill_config(kernel: str, K: int, V: int, precision: str, small_heads: Optional[bool] = None) -> LaunchConfig:
    """Configuration of one prefill kernel for head shape (K, V).

    ``kernel``: "fwd", "bwd_dq", "bwd_dkv" (the main kernels) or "summary" (the split-T summary kernel);
    ``precision``: the ``tl.dot`` precision of float32 products ("ieee", "tf32x3", "tf32"; half inputs use
    "tf32"). ``small_heads`` (default: :func:`uses_small_heads`) picks the small-head main kernels.
    """
    if kernel not in ("fwd", "bwd_dq", "bwd_dkv", "summary"):
        raise ValueError(f"unknown prefill kernel {kernel!r}")
    small = uses_small_heads(K, V) if small_heads is None else small_heads
    if small and kernel != "summary":
        return LaunchConfig(BT=16, BV=_pow2(V), HB=4, num_warps=4, num_stages=2)
    BV = min(64, max(16, _pow2(V)))
    # three TF32 products per dot ("tf32x3") or exact float32 ("ieee") hold more fragments live than one
    # TF32 / bf16 product: 64-row chunks spill on sm_90 there, 32-row chunks do not
    wide = precision in ("tf32x3", "ieee")
    if kernel == "summary":
        return LaunchConfig(BT=64, BV=BV, HB=1, num_warps=4, num_stages=2)
    BT = 32 if wide else 64
    return LaunchConfig(BT=BT, BV=BV, HB=1, num_warps=4, num_stages=2)


def segment_length(programs: int, T: int, BT: int, sm_count: int) -> Optional[int]:
    """Segment length (tokens, a multiple of BT) that splits sequences of ~T tokens so that ``programs``
    (the launch's programs per segment position: sequences x heads x V-blocks, or head blocks) times the
    segment count reaches ``PROGRAMS_PER_SM * sm_count``; None when no split is needed or possible."""
    target = PROGRAMS_PER_SM * sm_count
    if programs <= 0 or programs >= target or T <= MIN_SEGMENT_CHUNKS * BT:
        return None
    n_segments = math.ceil(target / programs)
    L = max(math.ceil(T / n_segments), MIN_SEGMENT_CHUNKS * BT)
    L = math.ceil(L / BT) * BT
    return L if L < T else None
