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
    "operand_class",
    "programs_per_work_item",
    "segment_length",
    "summary_chunk",
    "PROGRAMS_PER_SM",
    "MIN_SEGMENT_CHUNKS",
    "MAX_K",
    "check_head_dims",
    "state_config",
]

#: Largest q/k head dim of the general kernels: the whole K fits one block (K = 2 or 32 in FuXi).
MAX_K = 128
#: Tiny heads (K <= SMALL_K and V <= SMALL_V) take the small-head kernels (several heads per program,
#: CUDA-core products): the temporal channel (K = 2, V = 8).
SMALL_K = 4
SMALL_V = 16
#: The split plan aims at this many programs per SM (a few resident per SM plus waves to balance the tail).
PROGRAMS_PER_SM = 4
#: A segment holds at least this many chunks. One is enough: a one-chunk segment moves one boundary state
#: (K x V, written by the scan, read by the main kernel) per chunk, the regime of chunk-parallel kernels.
MIN_SEGMENT_CHUNKS = 1


@dataclass(frozen=True)
class LaunchConfig:
    """One kernel's blocks and launch options: ``BT`` chunk length, ``BK``/``BV`` blocks of K/V (padded),
    ``HB`` heads per program (small-head kernels; 1 otherwise), ``num_warps``, ``num_stages``, and whether it
    is a small-head kernel. ``NV`` V-blocks (always 1 for the small-head kernels)."""

    BT: int
    BK: int
    BV: int
    HB: int
    num_warps: int
    num_stages: int
    small: bool
    NV: int


def _pow2(x: int) -> int:
    return 1 << max(0, (x - 1).bit_length())


def uses_small_heads(K: int, V: int) -> bool:
    """True when the small-head kernels run this head shape."""
    return K <= SMALL_K and V <= SMALL_V


#: General kernels: (kernel, operands) -> (BT, BV, num_warps) with BV = 32 and, where a second entry is
#: given, the one for V > 32. "wide": float32 inputs with "tf32x3"/"ieee" products (three TF32 products per dot
#: hold more fragments live); "tf32": float32 inputs with "tf32" products; "half": bf16/fp16 inputs. Each is
#: the largest chunk with no spills on sm_90 under both triton 3.6 and 3.9 (registers in benchmarks/RESULTS.md),
#: except the float32 "wide" dk/dv kernel at V <= 32, which spills at every candidate (least: BT=16, 4 warps).
_GENERAL = {
    ("fwd", "wide"): ((32, 32, 4), (32, 64, 8)),
    ("fwd", "tf32"): ((32, 32, 4),),
    ("fwd", "half"): ((64, 32, 4),),
    ("bwd_dq", "wide"): ((16, 32, 8),),
    ("bwd_dq", "tf32"): ((32, 32, 4),),
    ("bwd_dq", "half"): ((32, 32, 4),),
    ("bwd_dkv", "wide"): ((16, 32, 4), (16, 32, 8)),
    ("bwd_dkv", "tf32"): ((16, 32, 4),),
    ("bwd_dkv", "half"): ((32, 32, 4),),
    ("summary", "wide"): ((64, 32, 8), (64, 64, 8)),
    ("summary", "tf32"): ((64, 32, 8), (64, 64, 8)),
    ("summary", "half"): ((64, 32, 4), (64, 64, 4)),
}
#: Small-head kernels (no tensor cores, so the same for every dtype): BT=16, 4 heads per program, 4 warps.
_SMALL = (16, 4, 4)


def operand_class(precision: str, half_inputs: bool) -> str:
    """"half" (bf16/fp16 inputs), "tf32" (float32 inputs, TF32 products) or "wide" (float32 inputs with
    "tf32x3" or "ieee" products; also float64)."""
    if half_inputs:
        return "half"
    return "tf32" if precision == "tf32" else "wide"


def prefill_config(kernel: str, H: int, K: int, V: int, precision: str, half_inputs: bool = False,
                   small_heads: Optional[bool] = None, chunk_size: int = 0) -> LaunchConfig:
    """Configuration of one prefill kernel for ``H`` heads of shape (K, V).

    ``kernel``: "fwd", "bwd_dq", "bwd_dkv" (the main kernels), "summary" (the split-T summary kernel) or
    "scan"; ``precision``: the ``tl.dot`` precision of float32 products ("ieee", "tf32x3", "tf32");
    ``half_inputs``: bf16/fp16 q/k/v. ``small_heads`` (default: :func:`uses_small_heads`) picks the small-head
    main kernels; ``chunk_size`` > 0 overrides the chunk length.
    """
    if kernel not in ("fwd", "bwd_dq", "bwd_dkv", "summary", "scan"):
        raise ValueError(f"unknown prefill kernel {kernel!r}")
    check_head_dims(K)
    small = (uses_small_heads(K, V) if small_heads is None else small_heads) and kernel in ("fwd", "bwd_dq", "bwd_dkv")
    if small:
        BT, HB, warps = _SMALL
        return LaunchConfig(chunk_size or BT, _pow2(K), _pow2(V), min(HB, _pow2(H)), warps, 2, True, 1)
    if kernel == "scan":
        return state_config(K, V)
    BK = max(16, _pow2(K))
    choices = _GENERAL[(kernel, operand_class(precision, half_inputs))]
    BT, BV, warps = choices[-1] if V > 32 else choices[0]
    BV = min(BV, max(16, _pow2(V)))
    return LaunchConfig(chunk_size or BT, BK, BV, 1, warps, 2, False, -(-V // BV))


def check_head_dims(K: int) -> None:
    """Raises ``ValueError`` for a q/k head dim the kernels do not support (K > :data:`MAX_K`)."""
    if K > MAX_K:
        raise ValueError(f"the Triton kernels support q/k head dims K <= {MAX_K}, got K={K}")


def state_config(K: int, V: int) -> LaunchConfig:
    """Blocks of the kernels that walk a (K, V) state one token at a time: the decode step and the split-T
    scan over segment states (one program per head and V-block)."""
    check_head_dims(K)
    BK, BV = max(16, _pow2(K)), min(64, max(16, _pow2(V)))
    return LaunchConfig(1, BK, BV, 1, 1 if BK * BV <= 1024 else 4, 1, False, -(-V // BV))


def programs_per_work_item(cfg: LaunchConfig, H: int) -> int:
    """Programs a main kernel launches per work item (sequence or segment): head blocks, or heads x V-blocks."""
    return -(-H // cfg.HB) if cfg.small else H * cfg.NV


def segment_length(programs: int, T: int, BT: int, sm_count: int) -> Optional[int]:
    """Segment length (tokens, a multiple of BT) that splits sequences of ~T tokens so that ``programs``
    (the launch's programs per segment position: sequences x heads x V-blocks, or head blocks) times the
    segment count reaches ``PROGRAMS_PER_SM * sm_count``; None when no split is needed or possible.

    The longest such length: ``ceil(T / L) >= n`` segments (n = ``ceil(target / programs)``) holds exactly when
    ``L < T / (n - 1)``. Where even segments of ``MIN_SEGMENT_CHUNKS`` chunks are too few, those (the most
    segments allowed)."""
    target = PROGRAMS_PER_SM * sm_count
    if programs <= 0 or programs >= target or T <= MIN_SEGMENT_CHUNKS * BT:
        return None
    n_segments = math.ceil(target / programs)  # >= 2
    longest = (math.ceil(T / (n_segments - 1)) - 1) // BT * BT  # the largest multiple of BT below T / (n - 1)
    L = max(longest, MIN_SEGMENT_CHUNKS * BT)
    return L if L < T else None


def summary_chunk(main: LaunchConfig, summary: LaunchConfig) -> int:
    """Chunk length of the split-T summary kernel in a launch whose main kernel runs ``main``: its configured
    one, or the main kernel's when that is shorter. Segments are multiples of the main kernel's chunk (powers of
    two), so the summary's chunks tile every segment; and the length depends on the configurations only, never
    on T or the segment length (a T-dependent block size would compile the summary again for new lengths)."""
    return min(summary.BT, main.BT)
