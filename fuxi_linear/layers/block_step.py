"""The FuXi-Linear block's decode step as a pure function of its operands (:func:`block_step`; on the CPU path
:func:`block_step_cpu`, written for few PyTorch calls) and the operands it reads (:class:`StepWeights`), shared by
:meth:`fuxi_linear.layers.FuXiLinearBlock.step` and the model's decode step."""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..ops.backends import resolve_backend
from ..ops.fused_block_step import advance_channel_cpu, fused_block_step
from .norms import layer_norm, rms_norm
from .positional import positional_step_channel
from .retention import retention_step_channel
from .temporal import temporal_step_channel
from .temporal_encoding import TemporalFeatures
from .temporal_step import TemporalCpuOperands, temporal_cpu_operands

__all__ = ["StepWeights", "ChannelStates", "block_step", "block_step_cpu"]

ChannelStates = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # retention, temporal, positional


class StepWeights(NamedTuple):
    """Everything a block's decode step reads besides its input and states: the block's weights in the layout
    a step multiplies by (cached between steps, :meth:`FuXiLinearBlock.step_weights`).

    ``w_in (D, 4D + 2 H dqk + 2D)``: ``[W_uvqk | W_v^T | W_p^T]``, every input projection of the block in one
    matrix, columns ``[u | q | k | v | v_t | v_p]`` (:class:`~fuxi_linear.layers.projection.ProjectionLayout`;
    SiLU applies to ``[u | q | k | v]`` only), whose widths are ``columns``; ``w0 (3D, D)``, ``w31 (D, 2F)``
    (``[W3^T | W1^T]``) and ``w2 (F, D)``: the FFN's, transposed for ``x @ w``; all (in, out) contiguous,
    the layout in which small-batch CPU products are fastest. ``gain, skip (3D,)``: the channels' outputs
    become ``gain * o + skip * v`` per column -- the retention heads' inclusive decay ``d_h`` (skip 0), the
    temporal ``alpha_h``/``beta_h`` and the positional ``alpha``/``beta``; ``gain_ablation, skip_ablation``
    the same with the temporal columns zero (``use_temporal=False``). ``g_gamma (H,)``: the retention heads'
    log-decay; ``positional_table (Nmax, P)``: the positional channel's table (its q and k). For the CPU
    path (:func:`block_step_cpu`), in the state dtype: ``decay (H, 1, 1)`` = ``exp(g_gamma)``, the retention
    state's factor per step, and ``positional_keys (Nmax, 1, P, 1)``, the table laid out as the positional
    channel's q and k.
    """

    w_in: torch.Tensor
    w0: torch.Tensor
    w31: torch.Tensor
    w2: torch.Tensor
    gain: torch.Tensor
    skip: torch.Tensor
    gain_ablation: torch.Tensor
    skip_ablation: torch.Tensor
    g_gamma: torch.Tensor
    positional_table: torch.Tensor
    decay: torch.Tensor
    positional_keys: torch.Tensor
    columns: Tuple[int, int, int, int, int, int]


def block_step(
    x: torch.Tensor,
    w: StepWeights,
    temporal: Optional[TemporalFeatures],
    positions: torch.Tensor,
    states: ChannelStates,
    state_indices: Optional[torch.Tensor] = None,
    backend: str = "auto",
    validate: bool = False,
) -> torch.Tensor:
    """A block's decode step as a pure function of its operands: ``x (N, D)``,
    the block's :class:`StepWeights`, the temporal features of the N events (None: the channel is switched
    off), ``positions (N,)`` int64 and the three state pools, advanced in place (rows ``state_indices (N,)``
    int64, if given). Returns the block output ``(N, D)``. ``validate``: check the channel operator's inputs
    (:func:`fuxi_linear.ops.fused_block_step`'s checks; off: the caller guarantees them).

    On the CPU path (unvalidated) this is :func:`block_step_cpu`; otherwise the three channels go through one
    :func:`~fuxi_linear.ops.fused_block_step` (on CUDA one Triton launch). Every size comes from the operands'
    shapes and nothing is cached or checked here, so that ``torch.compile`` traces it without a graph break
    (:mod:`fuxi_linear.decoding.decode_step`).
    """
    if not validate and resolve_backend(backend, x.device) == "cpu":
        pools = states
        if state_indices is not None:
            states = tuple(s.index_select(0, state_indices) for s in pools)
        ops = None if temporal is None else temporal_cpu_operands(temporal, states[0].dtype)
        y = block_step_cpu(x, w, ops, positions, states)
        if state_indices is not None:
            for pool, s in zip(pools, states):
                pool.index_copy_(0, state_indices, s)
        return y
    N, D = x.shape
    H = w.g_gamma.shape[0]
    proj = torch.mm(layer_norm(x), w.w_in)
    u, q, k, v, v_t, v_p = _project_step(proj, w.columns)
    channels = [retention_step_channel(q.view(N, H, -1), k.view(N, H, -1), v.view(N, H, -1), states[0], w.g_gamma)]
    if temporal is not None:
        channels.append(temporal_step_channel(v_t.view(N, states[1].shape[-3], -1), temporal, states[1]))
    channels.append(positional_step_channel(w.positional_table, v_p.view(N, 1, D), positions, states[2]))
    o = fused_block_step(channels, state_indices, backend=backend, validate=validate)
    if temporal is None:  # the ablation's temporal output is zero (its state stays as it is)
        o = torch.cat([o[:, :D], torch.zeros_like(o[:, :D]), o[:, D:]], dim=1)
    return _gate_and_ffn(x, w, u, proj, o, temporal is not None)


def block_step_cpu(
    x: torch.Tensor,
    w: StepWeights,
    temporal: Optional[TemporalCpuOperands],
    positions: torch.Tensor,
    states: ChannelStates,
) -> torch.Tensor:
    """:func:`block_step` on the CPU path, in few PyTorch calls (a CPU step of a few users is bound by their
    overhead): ``x (N, D)``, the temporal channel's operands of the step
    (:func:`~fuxi_linear.layers.temporal_step.temporal_cpu_operands`, laid out once for all blocks; None: the
    channel is switched off), ``positions (N,)`` int64 and the three channels' states of these N users
    ``(N, ...)``, advanced in place. Each channel is one
    :func:`~fuxi_linear.ops.fused_block_step.advance_channel_cpu` on views of the one input product; the
    numbers are those of :func:`~fuxi_linear.ops.fused_block_step_cpu`."""
    s_r, s_t, s_p = states
    N = x.shape[0]
    _, H, K, V = s_r.shape
    cdt = s_r.dtype
    proj = torch.mm(layer_norm(x), w.w_in)
    u, q, k, v, v_t, v_p = _project_step(proj, w.columns)
    if proj.dtype != cdt:
        q, k, v, v_t, v_p = q.to(cdt), k.to(cdt), v.to(cdt), v_t.to(cdt), v_p.to(cdt)
    decay = w.decay if w.decay.dtype == cdt else torch.exp(w.g_gamma.to(cdt)).view(H, 1, 1)
    outputs = [advance_channel_cpu(q.view(N, H, K, 1), k.view(N, H, K, 1), v.view(N, H, 1, V), s_r, decay).view(N, -1)]
    if temporal is not None:
        outputs.append(advance_channel_cpu(temporal.q, temporal.k, v_t.view(N, s_t.shape[1], 1, -1), s_t,
                                           temporal.decay).view(N, -1))
    else:  # the ablation's temporal output is zero (its state stays as it is)
        outputs.append(s_r.new_zeros(N, v_t.shape[1]))
    keys = w.positional_keys if w.positional_keys.dtype == cdt else w.positional_keys.to(cdt)
    e = keys.index_select(0, positions)  # (N, 1, P, 1): q and k, read once for both
    outputs.append(advance_channel_cpu(e, e, v_p.view(N, 1, 1, -1), s_p, None, 1.0 / (s_p.shape[2] // 2)).view(N, -1))
    o = torch.cat(outputs, dim=1)
    if o.dtype != x.dtype:
        o = o.to(x.dtype)
    return _gate_and_ffn(x, w, u, proj, o, temporal is not None)


def _project_step(proj: torch.Tensor, columns: Sequence[int]) -> Tuple[torch.Tensor, ...]:
    """``proj = LN(x) @ w_in`` ``(N, 4D + 2 H dqk + 2D)`` -> its six column groups ``u, q, k, v, v_t, v_p``
    (views), after SiLU on ``[u | q | k | v]`` in place (the channel values W_v, W_p are linear)."""
    F.silu(proj[:, :columns[0] + columns[1] + columns[2] + columns[3]], inplace=True)
    return proj.split(columns, dim=1)


def _gate_and_ffn(x: torch.Tensor, w: StepWeights, u: torch.Tensor, proj: torch.Tensor, o: torch.Tensor,
                  use_temporal: bool) -> torch.Tensor:
    """The block's output from the channel outputs ``o (N, 3D)`` (side by side, a fresh tensor: updated in
    place): the augmented outputs, the three output norms, the gate ``u (N, 3D)`` and the multi-stage FFN with
    its residuals."""
    N, D = x.shape
    gain, skip = (w.gain, w.skip) if use_temporal else (w.gain_ablation, w.skip_ablation)
    v_all = proj[:, sum(w.columns[:3]):]  # [v | v_t | v_p] (the columns after u, q, k): the skip terms
    # fresh intermediates are updated in place: a CPU step is bound by its calls and allocations
    y = layer_norm(o.mul_(gain).addcmul_(v_all, skip).view(N, 3, D))  # the three output norms in one call
    h = torch.addmm(x, y.view(N, 3 * D).mul_(u), w.w0)
    up_gate = torch.mm(rms_norm(h), w.w31)
    # SiLU(W1 z) * W3 z = (W3 z * sigmoid(W1 z)) * W1 z: GLU over [W3 z | W1 z], times W1 z
    hidden = F.glu(up_gate, dim=1).mul_(up_gate[:, w.w2.shape[0]:])
    return torch.addmm(h, hidden, w.w2)
