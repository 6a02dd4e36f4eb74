"""Input checks shared by every backend of the decay-attention operator.

Each check raises ``TypeError`` (wrong kind of object or dtype) or ``ValueError`` (wrong rank, shape or
value) naming the argument and what was expected, so a bad call never reaches a kernel.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch

from ..utils import INT_DTYPES
from .value_checks import ValueChecks, add_distinct_rows_check

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_tensor(name: str, x: object, ndim: int, dtypes: Tuple[torch.dtype, ...]) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(x.shape)}")
    if x.dtype not in dtypes:
        names = ", ".join(str(d).replace("torch.", "") for d in dtypes)
        raise TypeError(f"{name} must have dtype in ({names}), got {x.dtype}")
    return x


def check_cu_seqlens(cu_seqlens: object, total: int, batch: int) -> torch.Tensor:
    """``cu_seqlens: (N+1,)`` int32/int64, starting at 0, strictly increasing, ending at ``total``."""
    cu = check_tensor("cu_seqlens", cu_seqlens, 1, INT_DTYPES)
    if batch != 1:
        raise ValueError(f"packed input (cu_seqlens given) needs batch size 1, got q/v batch size {batch}")
    if cu.numel() < 2:
        raise ValueError(f"cu_seqlens must hold at least 2 offsets (N+1 for N sequences), got {cu.numel()}")
    cpu = cu.detach().to("cpu", torch.int64)
    if int(cpu[0]) != 0:
        raise ValueError(f"cu_seqlens must start at 0, got {int(cpu[0])}")
    if not bool((cpu[1:] > cpu[:-1]).all()):
        raise ValueError(f"cu_seqlens must be strictly increasing, got {cpu.tolist()}")
    if int(cpu[-1]) != total:
        raise ValueError(f"cu_seqlens must end at the packed length T={total}, got {int(cpu[-1])}")
    return cu


def check_chunk_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: Optional[torch.Tensor],
    g_gamma: Optional[torch.Tensor],
    scale: float,
    initial_state: Optional[torch.Tensor],
    cu_seqlens: Optional[torch.Tensor],
) -> int:
    """Validate the prefill operator's inputs; returns the number of sequences N (states)."""
    check_tensor("q", q, 4, FLOAT_DTYPES)
    check_tensor("k", k, 4, FLOAT_DTYPES)
    check_tensor("v", v, 4, FLOAT_DTYPES)
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k and v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    B, T, H, V = v.shape
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape (B, T, H, K), got {tuple(q.shape)} and {tuple(k.shape)}")
    Bq, Tq, Hq, K = q.shape
    if Bq not in (1, B):
        raise ValueError(f"q/k batch size must be 1 (shared by every sequence) or B={B}, got {Bq}")
    if (Tq, Hq) != (T, H):
        raise ValueError(f"q/k (B, T, H, K)={tuple(q.shape)} and v (B, T, H, V)={tuple(v.shape)} disagree in T or H")
    if T == 0 or K == 0 or V == 0 or H == 0 or B == 0:
        raise ValueError(f"empty input: q {tuple(q.shape)}, v {tuple(v.shape)}")
    if q.device != v.device or k.device != v.device:
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    if g is not None and g_gamma is not None:
        raise ValueError("pass either g (per token) or g_gamma (per head), not both")
    if g is not None:
        check_tensor("g", g, 3, FLOAT_DTYPES)
        if tuple(g.shape) != (B, T, H):
            raise ValueError(f"g must have shape (B, T, H)={(B, T, H)}, got {tuple(g.shape)}")
    if g_gamma is not None:
        check_tensor("g_gamma", g_gamma, 1, FLOAT_DTYPES)
        if tuple(g_gamma.shape) != (H,):
            raise ValueError(f"g_gamma must have shape (H,)=({H},), got {tuple(g_gamma.shape)}")
    # a log-decay above 0 grows the state: the chunked forms' exponents would no longer be <= 0 (one host sync;
    # skipped while torch.compile traces, where it would break the graph)
    for name, decay in (("g", g), ("g_gamma", g_gamma)):
        if decay is not None and not torch.compiler.is_compiling() and bool((decay > 0).any()):
            raise ValueError(f"{name} is a log-decay and must be <= 0 everywhere, got a maximum of "
                             f"{decay.max().item():.4g}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
    if cu_seqlens is not None:
        check_cu_seqlens(cu_seqlens, T, B)
        N = cu_seqlens.numel() - 1
    else:
        N = B
    if initial_state is not None:
        check_tensor("initial_state", initial_state, 4, FLOAT_DTYPES)
        if tuple(initial_state.shape) != (N, H, K, V):
            raise ValueError(
                f"initial_state must have shape (N, H, K, V)={(N, H, K, V)}, got {tuple(initial_state.shape)}"
            )
    return N


def check_step_inputs(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    state: torch.Tensor,
    g: Optional[torch.Tensor],
    g_gamma: Optional[torch.Tensor],
    scale: float,
    state_indices: Optional[torch.Tensor],
    check_values: bool = True,
) -> None:
    """Validate the decode step's inputs (q, k: (N, H, K); v: (N, H, V); state: (P, H, K, V)).

    ``check_values=False`` checks metadata only (shapes, dtypes, devices: no host synchronisation) and leaves
    the values of ``state_indices`` (in range, distinct) to the caller; otherwise they are read back in one
    batched check (:mod:`fuxi_linear.ops.value_checks`), one synchronisation.
    """
    check_tensor("q", q, 3, FLOAT_DTYPES)
    check_tensor("k", k, 3, FLOAT_DTYPES)
    check_tensor("v", v, 3, FLOAT_DTYPES)
    check_tensor("state", state, 4, (torch.float32, torch.float64))
    N, H, V = v.shape
    if q.shape != k.shape:
        raise ValueError(f"q and k must have the same shape (N, H, K), got {tuple(q.shape)} and {tuple(k.shape)}")
    if q.shape[:2] != (N, H):
        raise ValueError(f"q/k (N, H, K)={tuple(q.shape)} and v (N, H, V)={tuple(v.shape)} disagree in N or H")
    K = q.shape[2]
    if state_indices is None:
        if tuple(state.shape) != (N, H, K, V):
            raise ValueError(f"state must have shape (N, H, K, V)={(N, H, K, V)}, got {tuple(state.shape)}")
    else:
        check_tensor("state_indices", state_indices, 1, INT_DTYPES)
        if state_indices.numel() != N:
            raise ValueError(f"state_indices must have N={N} entries, got {state_indices.numel()}")
        if tuple(state.shape[1:]) != (H, K, V):
            raise ValueError(f"state pool must have shape (P, H, K, V) with (H, K, V)={(H, K, V)}, got {tuple(state.shape)}")
        if state_indices.device != state.device:
            raise ValueError(f"state_indices must be on the state's device {state.device}, got {state_indices.device}")
        if check_values:
            # two sequences writing one pool row in place would race (and the result would depend on order)
            checks = ValueChecks()
            add_distinct_rows_check(checks, "state_indices", state_indices, state.shape[0])
            checks.run("sync")
    if g is not None and g_gamma is not None:
        raise ValueError("pass either g (per sequence and head) or g_gamma (per head), not both")
    if g is not None:
        check_tensor("g", g, 2, FLOAT_DTYPES)
        if tuple(g.shape) != (N, H):
            raise ValueError(f"g must have shape (N, H)={(N, H)}, got {tuple(g.shape)}")
    if g_gamma is not None:
        check_tensor("g_gamma", g_gamma, 1, FLOAT_DTYPES)
        if tuple(g_gamma.shape) != (H,):
            raise ValueError(f"g_gamma must have shape (H,)=({H},), got {tuple(g_gamma.shape)}")
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise TypeError(f"scale must be a float, got {type(scale).__name__}")
