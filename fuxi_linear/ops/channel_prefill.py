"""The operator as the layers' channels call it in a prefill: :func:`prefill_decay_attention` runs it on whole
histories, on the CPU path (a :class:`~fuxi_linear.ops.decay_plan.DecayAttentionPlan`) or through the Triton
kernels (padded or packed input), and returns the outputs at every token or at each sequence's last token;
with the helpers the layers share around it (:func:`uses_cpu_path`, :func:`last_tokens`,
:func:`without_autocast`, :func:`repeat_last`).

The layers call it with tensors they built themselves from validated model inputs, so it does not validate
them again (the public operator, :func:`~fuxi_linear.ops.chunk_decay_attention`, does).
"""
from __future__ import annotations

import contextlib
import functools
from typing import Callable, Optional, Tuple

import torch

from .backends import resolve_backend
from .decay_plan import DecayAttentionPlan, HeadDecay, prepare_decay_attention
from .dtypes import cast, compute_dtype
from .public_api import chunk_decay_attention

__all__ = ["prefill_decay_attention", "uses_cpu_path", "last_tokens", "without_autocast", "repeat_last", "OUTPUTS"]

OUTPUTS = ("all", "last")


def last_tokens(x: torch.Tensor, lengths: Optional[torch.Tensor] = None,
                cu_seqlens: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Each sequence's last token: right-padded ``x (B, T, ...)`` -> ``(B, ...)`` at ``lengths - 1`` (T - 1 when
    ``lengths`` is None), or packed ``x (1, total, ...)`` -> ``(N, ...)`` at ``cu_seqlens[1:] - 1``."""
    if cu_seqlens is not None:
        return x[0, cu_seqlens[1:].long() - 1]
    if lengths is None:
        return x[:, -1]
    return x[torch.arange(x.shape[0], device=x.device), lengths.long() - 1]


def uses_cpu_path(backend: str, device: torch.device, cu_seqlens: Optional[torch.Tensor] = None) -> bool:
    """Whether a prefill on ``device`` with this ``backend`` runs the CPU path's plan (padded input only: packed
    input goes through :func:`~fuxi_linear.ops.chunk_decay_attention`)."""
    return cu_seqlens is None and resolve_backend(backend, device) == "cpu"


def repeat_last(x: torch.Tensor, times: int) -> torch.Tensor:
    """``x.repeat_interleave(times, dim=-1)``. On a CPU as a product with a 0/1 matrix, which is exact (each
    output is one input times 1 plus zeros) and several times faster than the strided copy."""
    if x.device.type != "cpu" or not x.is_floating_point():
        return x.repeat_interleave(times, dim=-1)
    return x @ _repeat_matrix(x.shape[-1], times, x.dtype)


@functools.lru_cache(maxsize=16)
def _repeat_matrix(n: int, times: int, dtype: torch.dtype) -> torch.Tensor:
    """``(n, n times)`` 0/1 matrix that repeats each of n columns ``times`` times (CPU, read-only; a normal
    tensor whichever mode the first call ran in, so autograd can use it)."""
    with torch.inference_mode(False):
        return torch.eye(n, dtype=dtype).repeat_interleave(times, dim=1)


def without_autocast(fn: Callable) -> Callable:
    """Runs ``fn`` with autocast switched off on its inputs' device types when it is on: the CPU path's operator
    (decay factors, state products, scores) stays in float32 under a bf16 autocast, as the kernels accumulate in
    float32 whatever their inputs; the projections around it keep autocast. Free when autocast is off."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        on = [d for d in ("cpu", "cuda") if torch.is_autocast_enabled(d)]
        if not on:
            return fn(*args, **kwargs)
        with contextlib.ExitStack() as stack:
            for device_type in on:
                stack.enter_context(torch.autocast(device_type, enabled=False))
            return fn(*args, **kwargs)

    return run


def prefill_decay_attention(
    q: Optional[torch.Tensor],
    k: Optional[torch.Tensor],
    v: torch.Tensor,
    g: Optional[torch.Tensor] = None,
    g_gamma: Optional[torch.Tensor] = None,
    *,
    lengths: Optional[torch.Tensor] = None,
    cu_seqlens: Optional[torch.Tensor] = None,
    output_final_state: bool = False,
    outputs: str = "all",
    backend: str = "auto",
    plan: Optional[DecayAttentionPlan] = None,
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = q_t S_t`` over whole sequences (scale 1, no initial state).

    Args:
        q, k: ``(Bq, T, H, K)`` (Bq = 1: shared by the batch); may be None when ``plan`` is given.
        v: ``(B, T, H, V)``, or packed ``(1, total, H, V)`` with ``cu_seqlens``.
        g: ``(B, T, H)`` or g_gamma: ``(H,)`` log-decays, or neither.
        lengths: ``(B,)`` lengths of right-padded rows, where final states and last outputs are taken (None:
            every row has T tokens).
        outputs: ``"all"`` -> ``o (B, T, H, V)``; ``"last"`` -> ``o (B, H, V)`` at each sequence's last token.
        plan: a :class:`~fuxi_linear.ops.decay_plan.DecayAttentionPlan` of these q, k, g (CPU path), reused
            instead of q/k/g.
    Returns:
        ``(o in v's dtype, final state (N, H, K, V) float32 — float64 for float64 input — or None)``.
    """
    if outputs not in OUTPUTS:
        raise ValueError(f"outputs must be one of {OUTPUTS}, got {outputs!r}")
    if plan is not None or uses_cpu_path(backend, v.device, cu_seqlens):
        return _apply_plan(q, k, v, g, g_gamma, lengths, output_final_state, outputs, plan)
    if isinstance(g_gamma, HeadDecay):
        g_gamma = g_gamma.gamma
    if resolve_backend(backend, v.device) == "triton":  # the layers' own operands: no checks, no host syncs
        from .triton_decay_attention import chunk_decay_attention_triton

        o, state = chunk_decay_attention_triton(q, k, v, g=g, g_gamma=g_gamma, output_final_state=output_final_state,
                                                cu_seqlens=cu_seqlens)
    else:
        o, state = chunk_decay_attention(q, k, v, g=g, g_gamma=g_gamma, output_final_state=output_final_state,
                                         cu_seqlens=cu_seqlens, backend=backend)
    if outputs == "last":
        o = last_tokens(o, lengths, cu_seqlens)
    return o, state


@without_autocast
def _apply_plan(q, k, v, g, g_gamma, lengths, output_final_state, outputs, plan):
    """The CPU path of :func:`prefill_decay_attention`."""
    cdt = compute_dtype(v.dtype)
    if plan is None:
        plan = prepare_decay_attention(cast(q, cdt), cast(k, cdt), g=g, g_gamma=g_gamma, lengths=lengths,
                                       all_outputs=outputs == "all", last_outputs=outputs == "last",
                                       final_state=output_final_state, value_dim=v.shape[-1])
    o, state = plan.apply(cast(v, cdt), output_final_state=output_final_state, outputs=outputs)
    return cast(o, v.dtype), state

