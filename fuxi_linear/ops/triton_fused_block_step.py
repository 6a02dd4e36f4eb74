"""Triton backend of the fused block decode step: launcher and ``torch.library`` operator.

:func:`fused_block_step_triton` (called by :func:`fuxi_linear.ops.fused_block_step` after validation) runs
``fuxi_linear.kernels.fused_block_step.fused_block_step_kernel`` once for all channels. It goes through the
custom operator ``torch.ops.fuxi_linear.fused_block_step`` (mutating the states, with a fake
implementation) when ``torch.compile`` traces it, so a compiled graph holds it as one node; in eager mode the
launcher is called directly, which skips the custom operator's Python dispatch (tens of microseconds).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import triton

from fuxi_linear.kernels.decay_mode import DecayMode
from fuxi_linear.kernels.fused_block_step import fused_block_step_kernel

from .step_channel import MAX_CHANNELS, StepChannel

__all__ = ["fused_block_step_triton", "channel_tiles", "TILE_ELEMENTS", "NUM_WARPS"]

#: State elements per program (see the kernel's docstring): a tile of (BR, BK, BV) covers about this many.
TILE_ELEMENTS = 2048
#: Warps per program: 16 fp32 state elements per thread at TILE_ELEMENTS (not yet tuned on a GPU).
NUM_WARPS = 4
#: Test hook: allocate the output filled with NaN, so an element the kernel fails to write shows up.
POISON_OUTPUTS = False


def channel_tiles(H: int, K: int, V: int, N: int) -> Tuple[int, int, int, int]:
    """``(BR, BK, BV, programs)`` of a channel with N users: ``BK`` covers K, ``BV`` the rest of a tile of
    :data:`TILE_ELEMENTS`, ``BR`` (user, head) rows fill it (tiny heads, like the temporal 2 x 8, are batched
    many to a program). Independent of N except for the program count."""
    BK = triton.next_power_of_2(K)
    BV = min(triton.next_power_of_2(V), max(1, TILE_ELEMENTS // BK))
    BR = max(1, TILE_ELEMENTS // (BK * BV))
    programs = triton.cdiv(N * H, BR) * triton.cdiv(V, BV)
    return BR, BK, BV, programs


def _rows_contiguous(x: torch.Tensor) -> torch.Tensor:
    """``(N, H, X)`` with each user's ``H x X`` block contiguous (any user stride), copying only if not
    (a single head's stride is never used)."""
    if x.stride(-1) == 1 and (x.shape[-2] == 1 or x.stride(-2) == x.shape[-1]):
        return x
    return x.contiguous()


def _unit_last(x: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if x is None or x.stride(-1) == 1:
        return x
    return x.contiguous()


def _channel_args(c: int, q, k, v, g, g_gamma, state, scale, k_scale, N: int, column: int) -> Tuple[dict, int]:
    """The kernel's keyword arguments of channel ``c`` (its parameter names with the suffix c) and the
    channel's program count. q, k, v are read with any user stride (each user's block contiguous), g with a
    unit head stride, the state through its own strides."""
    q, k, v = _rows_contiguous(q), _rows_contiguous(k), _rows_contiguous(v)
    g = _unit_last(g)
    H, K, V = v.shape[1], q.shape[2], v.shape[2]
    BR, BK, BV, programs = channel_tiles(H, K, V, N)
    sn, sh, sk, sv = state.stride()
    args = dict(q=q, k=k, v=v, g=g, gamma=None if g_gamma is None else g_gamma.contiguous(), s=state,
                stride_q=q.stride(0), stride_k=k.stride(0), stride_v=v.stride(0),
                stride_g=g.stride(0) if g is not None else 0,
                stride_sn=sn, stride_sh=sh, stride_sk=sk, stride_sv=sv, scale=float(scale), kscale=float(k_scale),
                H=H, K=K, V=V, BR=BR, BK=BK, BV=BV, DECAY=int(DecayMode.of(g, g_gamma)), OCOL=column)
    return {f"{name}{c}": value for name, value in args.items()}, programs


def _absent_channel_args(c: int) -> dict:
    """Placeholders of an absent channel ``c`` (never reached: ``NUM_CHANNELS`` prunes its code)."""
    args = dict(q=None, k=None, v=None, g=None, gamma=None, s=None, stride_q=0, stride_k=0, stride_v=0,
                stride_g=0, stride_sn=0, stride_sh=0, stride_sk=0, stride_sv=0, scale=1.0, kscale=1.0,
                H=1, K=1, V=1, BR=1, BK=1, BV=1, DECAY=int(DecayMode.NONE), OCOL=0)
    return {f"{name}{c}": value for name, value in args.items()}


def _launch(qs, ks, vs, states, gs, g_gammas, scales, k_scales, state_indices):
    C = len(vs)
    N = vs[0].shape[0]
    width = sum(v.shape[1] * v.shape[2] for v in vs)
    if POISON_OUTPUTS:
        o = torch.full((N, width), float("nan"), dtype=vs[0].dtype, device=vs[0].device)
    else:
        o = torch.empty((N, width), dtype=vs[0].dtype, device=vs[0].device)
    channels = {}
    ends, end, column = [], 0, 0
    for c in range(MAX_CHANNELS):
        if c < C:
            args, programs = _channel_args(c, qs[c], ks[c], vs[c], gs[c], g_gammas[c], states[c], scales[c],
                                           k_scales[c], N, column)
            end += programs
            column += vs[c].shape[1] * vs[c].shape[2]
        else:
            args = _absent_channel_args(c)
        ends.append(end)
        channels.update(args)
    if N == 0:
        return o
    fused_block_step_kernel[(ends[-1],)](
        N=N, state_indices=state_indices, o=o, stride_on=o.stride(0), END0=ends[0], END1=ends[1], **channels,
        NUM_CHANNELS=C, USE_INDICES=state_indices is not None, num_warps=NUM_WARPS,
    )
    return o


@torch.library.custom_op("fuxi_linear::fused_block_step", mutates_args=("states",))
def _fused_step_op(
    qs: List[torch.Tensor], ks: List[torch.Tensor], vs: List[torch.Tensor], states: List[torch.Tensor],
    gs: List[Optional[torch.Tensor]], g_gammas: List[Optional[torch.Tensor]],
    scales: List[float], k_scales: List[float], state_indices: Optional[torch.Tensor],
) -> torch.Tensor:
    """Advances ``states`` in place; returns the channel outputs side by side ``(N, sum_c H_c V_c)``."""
    return _launch(qs, ks, vs, states, gs, g_gammas, scales, k_scales, state_indices)


@_fused_step_op.register_fake
def _(qs, ks, vs, states, gs, g_gammas, scales, k_scales, state_indices):
    return vs[0].new_empty((vs[0].shape[0], sum(v.shape[1] * v.shape[2] for v in vs)))


def fused_block_step_triton(
    channels: Sequence[StepChannel], state_indices: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """One launch for all channels; same contract as :func:`fuxi_linear.ops.fused_block_step` (inputs
    assumed validated). Returns ``(N, sum_c H_c V_c)`` in v's dtype; the states are advanced in place."""
    args = (
        [c.q for c in channels], [c.k for c in channels], [c.v for c in channels], [c.state for c in channels],
        [c.g for c in channels], [c.g_gamma for c in channels],
        [float(c.scale) for c in channels], [float(c.k_scale) for c in channels],
        state_indices,
    )
    if torch.compiler.is_compiling():
        return _fused_step_op(*args)
    return _launch(*args)
