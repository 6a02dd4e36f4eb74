"""The FuXi-Linear block (SPEC §5): three linear-complexity channels, gated, then the multi-stage FFN."""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.prefill import cast, last_tokens, uses_plan
from .ffn import MultiStageFFN
from ..ops.fused_block_step import fused_block_step
from .norms import layer_norm, rms_norm
from .positional import LinearPositionalChannel, positional_step_channel
from .retention import RetentionChannel, retention_step_channel
from .temporal import TemporalFeatures, TemporalRetentionChannel, temporal_step_channel

ChannelStates = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # retention, temporal, positional


class StepWeights(NamedTuple):
    """Everything a block's decode step reads besides its input and states: the block's weights in the layout
    a step multiplies by (cached between steps, :meth:`FuXiLinearBlock.step_weights`).

    ``w_in (D, 4D + 2 H dqk + 2D)``: ``[W_uvqk | W_v^T | W_p^T]``, every input projection of the block in one
    matrix (SiLU applies to the first ``4D + 2 H dqk`` columns only); ``w0 (3D, D)``, ``w31 (D, 2F)``
    (``[W3^T | W1^T]``) and ``w2 (F, D)``: the FFN's, transposed for ``x @ w``; all (in, out) contiguous,
    the layout in which small-batch CPU products are fastest. ``gain, skip (3D,)``: the channels' outputs
    become ``gain * o + skip * v`` per column -- the retention heads' inclusive decay ``d_h`` (skip 0), the
    temporal ``alpha_h``/``beta_h`` and the positional ``alpha``/``beta``; ``gain_ablation, skip_ablation``
    the same with the temporal columns zero (``use_temporal=False``). ``g_gamma (H,)``: the retention heads'
    log-decay; ``positional_table (Nmax, P)``: the positional channel's table (its q and k).
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

    Every size comes from the operands' shapes and nothing is cached or checked here, so that
    ``torch.compile`` traces it without a graph break (:mod:`fuxi_linear.step_graph`).
    """
    N, D = x.shape
    H = w.g_gamma.shape[0]
    Hq = (w.w_in.shape[1] - 6 * D) // 2
    proj = layer_norm(x) @ w.w_in
    F.silu(proj[:, : 4 * D + 2 * Hq], inplace=True)  # u, q, k, v; the channel values W_v, W_p are linear
    u, q, k, v, v_t, v_p = proj.split([3 * D, Hq, Hq, D, D, D], dim=1)
    channels = [retention_step_channel(q.view(N, H, -1), k.view(N, H, -1), v.view(N, H, -1), states[0], w.g_gamma)]
    if temporal is not None:
        channels.append(temporal_step_channel(v_t.view(N, states[1].shape[-3], -1), temporal, states[1]))
    channels.append(positional_step_channel(w.positional_table, v_p.view(N, 1, D), positions, states[2]))
    o = fused_block_step(channels, state_indices, backend=backend, validate=validate)
    if temporal is None:  # the ablation's temporal output is zero (its state stays as it is)
        o = torch.cat([o[:, :D], torch.zeros_like(o[:, :D]), o[:, D:]], dim=1)
        gain, skip = w.gain_ablation, w.skip_ablation
    else:
        gain, skip = w.gain, w.skip
    v_all = proj[:, 3 * D + 2 * Hq:]  # [v | v_t | v_p], the skip terms
    # fresh intermediates are updated in place: a CPU step is bound by its calls and allocations
    y = layer_norm(o.mul_(gain).addcmul_(v_all, skip).view(N, 3, D))  # the three output norms in one call
    h = torch.addmm(x, y.view(N, 3 * D).mul_(u), w.w0)
    up_gate = rms_norm(h) @ w.w31
    # SiLU(W1 z) * W3 z = (W3 z * sigmoid(W1 z)) * W1 z: GLU over [W3 z | W1 z], times W1 z
    hidden = F.glu(up_gate, dim=1).mul_(up_gate[:, w.w2.shape[0]:])
    return torch.addmm(h, hidden, w.w2)


class FuXiLinearBlock(nn.Module):
    """``x -> LN -> SiLU(x_hat W_uvqk) = [u, q, k, v]``; ``a = u * [LN(y_s), LN(y_t), LN(y_p)]``; MFFN.

    Args:
        dim: D. num_heads: H retention heads. qk_dim: dqk (value width is D / H). ffn_hidden_dim: F.
        num_periods: Ht (2Ht temporal heads). positional_dim: P. positional_table_size: Nmax.
        dropout: rate of the FFN dropouts.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_dim: int,
        ffn_hidden_dim: int,
        num_periods: int,
        positional_dim: int,
        positional_table_size: int,
        dropout: float = 0.0,
        temporal_skip: bool = True,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding_dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.qk_dim = dim, num_heads, qk_dim
        self.uvqk = nn.Parameter(torch.randn(dim, 3 * dim + 2 * num_heads * qk_dim + dim) * 0.02)  # (in, out)
        self.retention = RetentionChannel(num_heads)
        self.temporal = TemporalRetentionChannel(dim, num_periods, temporal_skip)
        self.positional = LinearPositionalChannel(dim, positional_dim, positional_table_size)
        self.ffn = MultiStageFFN(dim, ffn_hidden_dim, dropout)

    def _project(self, x: torch.Tensor):
        """``x: (..., D)`` -> ``x_hat (..., D)``, ``u (..., 3D)``, ``q, k (..., H, dqk)``, ``v (..., H, D/H)``."""
        x_hat = layer_norm(x)
        D, Hq = self.dim, self.num_heads * self.qk_dim
        u, q, k, v = torch.split(F.silu(x_hat @ self.uvqk.to(x_hat.dtype)), [3 * D, Hq, Hq, D], dim=-1)
        heads = (self.num_heads, -1)
        return x_hat, u, q.unflatten(-1, heads), k.unflatten(-1, heads), v.unflatten(-1, heads)

    def _mix(self, x, u, y_s, y_t, y_p) -> torch.Tensor:
        # one LayerNorm over the stacked channels normalises each channel's D values on its own
        a = u * layer_norm(torch.stack([y_s.flatten(-2), y_t, y_p], dim=-2)).flatten(-2)
        return self.ffn(a, x)

    def forward(
        self,
        x: torch.Tensor,
        temporal: Optional[TemporalFeatures],
        positions: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        output_final_state: bool = False,
        backend: str = "auto",
        lengths: Optional[torch.Tensor] = None,
        outputs: str = "all",
    ) -> Tuple[torch.Tensor, Optional[ChannelStates]]:
        """``x: (B, T, D)`` (or packed ``(1, total, D)`` with ``cu_seqlens`` and ``positions: (1, total)``).

        ``temporal=None`` switches the temporal channel off. ``lengths (B,)``: right-padded rows whose final
        states are taken at ``lengths - 1`` (None: all rows full). ``outputs="last"``: only each sequence's
        last token goes through the gate and the FFN (what a prefill needs from its last block): the output is
        ``(B, D)``. Returns the block output and, if asked, the channel states after each sequence.
        """
        if outputs == "last":  # u, the gate and the FFN are only needed at the last tokens
            x_hat = layer_norm(x)
            D, Hq, heads = self.dim, self.num_heads * self.qk_dim, (self.num_heads, -1)
            w = cast(self.uvqk, x_hat.dtype)
            x = last_tokens(x, lengths, cu_seqlens)
            x_hat_last = last_tokens(x_hat, lengths, cu_seqlens)
            if uses_plan(backend, x.device, cu_seqlens):  # the CPU path reads q at the last tokens only
                u, q = torch.split(F.silu(x_hat_last @ w[:, :3 * D + Hq]), [3 * D, Hq], dim=-1)
                k, v = torch.split(F.silu(x_hat @ w[:, 3 * D + Hq:]), [Hq, D], dim=-1)
            else:
                u = F.silu(x_hat_last @ w[:, :3 * D])
                q, k, v = torch.split(F.silu(x_hat @ w[:, 3 * D:]), [Hq, Hq, D], dim=-1)
            q, k, v = q.unflatten(-1, heads), k.unflatten(-1, heads), v.unflatten(-1, heads)
        else:
            x_hat, u, q, k, v = self._project(x)
        kw = dict(cu_seqlens=cu_seqlens, output_final_state=output_final_state, backend=backend, lengths=lengths,
                  outputs=outputs)
        y_s, s_s = self.retention(q, k, v, **kw)
        if temporal is not None:
            y_t, s_t = self.temporal(x_hat, temporal, **kw)
        else:  # temporal channel switched off (ablation): it feeds zeros to the gate and keeps a zero state
            y_t = x.new_zeros(x.shape)
            s_t = self.temporal.zero_state(s_s.shape[0], x) if output_final_state else None
        y_p, s_p = self.positional(x_hat, positions, **kw)
        return self._mix(x, u, y_s, y_t, y_p), ((s_s, s_t, s_p) if output_final_state else None)

    def step_sources(self) -> Tuple[torch.Tensor, ...]:
        """The parameters :meth:`step_weights` derives from."""
        f, t, p = self.ffn, self.temporal, self.positional
        sources = (self.uvqk, t.proj_v.weight, p.proj_p.weight, f.lin0.weight, f.lin1.weight, f.lin2.weight,
                   f.lin3.weight, self.retention.decay_logits, t.alpha, t.beta, p.alpha, p.beta, p.table)
        return tuple(s for s in sources if s is not None)  # no temporal alpha/beta without the skip connection

    def step_weights(self) -> StepWeights:
        """:class:`StepWeights` of this block's current weights (:meth:`step_sources`; cached with the other
        decode-step operands by :meth:`fuxi_linear.FuXiLinear.step_operands`)."""
        f, t, p = self.ffn, self.temporal, self.positional
        D = self.dim
        w_in = torch.cat([self.uvqk, t.proj_v.weight.t(), p.proj_p.weight.t()], dim=1)
        w31 = torch.cat([f.lin3.weight, f.lin1.weight], dim=0).t()
        g_gamma, d = self.retention.step_decay()
        d = d.to(w_in.dtype)
        per_column = lambda per_head, width: per_head.to(w_in.dtype).repeat_interleave(width)  # noqa: E731
        # without the temporal skip connection its output is o itself: gain 1, skip 0
        t_alpha = t.alpha if t.skip else w_in.new_ones(t.num_heads)
        t_beta = t.beta if t.skip else w_in.new_zeros(t.num_heads)
        gain = torch.cat([per_column(d, D // self.num_heads), per_column(t_alpha, D // t.num_heads),
                          per_column(p.alpha, D)])
        skip = torch.cat([torch.zeros_like(d).repeat_interleave(D // self.num_heads),
                          per_column(t_beta, D // t.num_heads), per_column(p.beta, D)])
        ablation = torch.ones_like(gain)
        ablation[D:2 * D] = 0.0
        return StepWeights(w_in=w_in.contiguous(), w0=f.lin0.weight.t().contiguous(), w31=w31.contiguous(),
                           w2=f.lin2.weight.t().contiguous(), gain=gain, skip=skip,
                           gain_ablation=gain * ablation, skip_ablation=skip * ablation,
                           g_gamma=g_gamma, positional_table=p.table)
