"""The FuXi-Linear block (SPEC §5): three linear-complexity channels, gated, then the multi-stage FFN; as a layer
``(B, T, D) -> (B, T, D)`` with an O(1) step (:func:`~fuxi_linear.layers.block_step.block_step`, also the
model's decode step per block)."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..derived_cache import DerivedCache
from ..ops.channel_prefill import last_tokens, uses_cpu_path
from ..ops.dtypes import cast
from ..utils import check_int
from .block_step import ChannelStates, StepWeights, block_step
from .ffn import MultiStageFFN
from .layer_inputs import (check_lengths, check_optional_times, check_positions_fit, check_sequence, check_state,
                           check_step_input, check_times, final_positions, last_times, mask_padding, pack_rows,
                           packs_rows, state_dtype, unpack_rows)
from .norms import layer_norm
from .positional import LinearPositional
from .projection import ProjectionLayout
from .retention import Retention, check_backend
from .states import FuXiLinearBlockState
from .temporal import TemporalRetention
from .temporal_encoding import TemporalEncoding, TemporalFeatures, resolve_periods
from .temporal_step import temporal_step_constants, temporal_step_features


class FuXiLinearBlock(nn.Module):
    """The FuXi-Linear block (SPEC §5) as a layer: ``(B, T, D)`` and int64 times in, ``(B, T, D)`` out.

    ``x_hat = LN(x)``; ``[u, q, k, v] = SiLU(x_hat W_uvqk)`` (u: 3D; the columns: ``uvqk_layout``, a
    :class:`~fuxi_linear.layers.projection.ProjectionLayout`); the three channels -- retention on q, k, v
    (:class:`~fuxi_linear.layers.Retention`'s decay), temporal retention and linear positional attention on
    ``x_hat`` (:class:`~fuxi_linear.layers.TemporalRetention`, :class:`~fuxi_linear.layers.LinearPositional`);
    ``a = u * [LN(y_s), LN(y_t), LN(y_p)]``; then the multi-stage FFN with its residuals
    (``h = W0 a + x``, ``out = W2 (SiLU(W1 z) * W3 z) + h``, ``z = RMSNorm(h)``). The output includes the
    residual stream: stack blocks as ``x = block(x, ...)``.

    Args:
        dim: D. num_heads: H retention heads (value width D / H). qk_dim: dqk (default D / H).
        ffn_dim: F, the FFN's hidden width (default D, as released).
        num_periods, periods, timestamp_unit, learn_temporal_decay, temporal_skip, temporal_max_log_decay: the
            temporal channel's (:class:`~fuxi_linear.layers.TemporalRetention`; default periods: seconds).
        use_temporal: False switches the temporal channel off (an ablation: it feeds zeros to the gate, needs
            no timestamps and keeps a zero state).
        positional_dim: P (default 32). max_positions: Nmax, the positional table's rows (default 2048).
        dropout: the FFN's dropouts. backend: ``"auto"``, ``"triton"`` or ``"cpu"``.

    Parameters: ``uvqk (D, 3D + 2 H dqk + D)`` ((in, out), N(0, 0.02)), ``retention``, ``temporal``,
    ``positional``, ``ffn``. Decode state: :class:`~fuxi_linear.layers.FuXiLinearBlockState`.

    Inside :class:`~fuxi_linear.FuXiLinear` the blocks' temporal channels share the model's one encoding (SPEC §3):
    they have none of their own.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qk_dim: Optional[int] = None,
        *,
        ffn_dim: Optional[int] = None,
        num_periods: Optional[int] = None,
        periods: Optional[Sequence[int]] = None,
        timestamp_unit: str = "s",
        learn_temporal_decay: bool = True,
        temporal_skip: bool = True,
        temporal_max_log_decay: float = 20.0,
        use_temporal: bool = True,
        positional_dim: int = 32,
        max_positions: int = 2048,
        dropout: float = 0.0,
        backend: str = "auto",
    ):
        super().__init__()
        check_int("dim", dim)
        resolved = resolve_periods(dim, num_periods, periods, timestamp_unit)
        self._build(dim, num_heads, qk_dim, ffn_dim, int(resolved.numel()), temporal_skip, use_temporal,
                    positional_dim, max_positions, dropout, backend)
        if not isinstance(learn_temporal_decay, bool):
            raise TypeError(f"learn_temporal_decay must be a bool, got {learn_temporal_decay!r}")
        self.temporal.encoding = TemporalEncoding(resolved, learn_temporal_decay, temporal_max_log_decay)

    @classmethod
    def _sharing_temporal_encoding(cls, dim: int, num_heads: int, qk_dim: int, ffn_dim: int, num_periods: int,
                                   temporal_skip: bool, use_temporal: bool, positional_dim: int,
                                   max_positions: int, dropout: float, backend: str) -> "FuXiLinearBlock":
        """A block of :class:`~fuxi_linear.FuXiLinear`: its temporal channel has no encoding (the model owns the
        one encoding of all blocks and passes the operands to :meth:`_forward` and the decode step)."""
        block = cls.__new__(cls)
        nn.Module.__init__(block)
        block._build(dim, num_heads, qk_dim, ffn_dim, num_periods, temporal_skip, use_temporal, positional_dim,
                     max_positions, dropout, backend)
        return block

    def _build(self, dim, num_heads, qk_dim, ffn_dim, num_periods, temporal_skip, use_temporal, positional_dim,
               max_positions, dropout, backend) -> None:
        check_int("dim", dim)
        check_int("num_heads", num_heads)
        check_int("ffn_dim", ffn_dim, allow_none=True)
        if not isinstance(use_temporal, bool):
            raise TypeError(f"use_temporal must be a bool, got {use_temporal!r}")
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) or not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {dropout!r}")
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        qk_dim = dim // num_heads if qk_dim is None else check_int("qk_dim", qk_dim)
        self.dim, self.num_heads, self.qk_dim = dim, num_heads, qk_dim
        self.use_temporal = use_temporal
        self.backend = check_backend(backend)
        self.uvqk_layout = ProjectionLayout.of_block(dim, num_heads, qk_dim)
        # parameters are drawn in this order (the released model's): a seed fixes the weights of a model
        self.uvqk = nn.Parameter(torch.randn(dim, self.uvqk_layout.width) * 0.02)  # (in, out)
        self.retention = Retention._channel_of_block(dim, num_heads, qk_dim, backend)
        self.temporal = TemporalRetention._channel_of_block(dim, num_periods, temporal_skip, backend)
        self.positional = LinearPositional(dim, positional_dim, max_positions, backend=backend)
        self.ffn = MultiStageFFN(dim, dim if ffn_dim is None else ffn_dim, dropout)
        self._step_cache = DerivedCache()  # step_weights, for the block's own steps

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, qk_dim={self.qk_dim}, use_temporal={self.use_temporal}"

    # ------------------------------------------------------------------ the layer
    def forward(
        self,
        x: torch.Tensor,
        *,
        timestamps: Optional[torch.Tensor] = None,
        query_timestamps: Optional[torch.Tensor] = None,
        lengths: Optional[torch.Tensor] = None,
        return_state: bool = False,
    ):
        """``x (B, T, D)``, ``timestamps (B, T)`` int64 and ``query_timestamps (B,)`` int64 (the request after
        each row's last event; both optional with ``use_temporal=False``) -> ``y (B, T, D)``, or
        ``(y, FuXiLinearBlockState)`` with ``return_state``. T at most ``max_positions``.

        ``lengths (B,)``: right-padded rows (timestamps past a row's length are ignored, ``y`` is zero there,
        the state is taken at ``lengths - 1``). Event i's temporal query time is event i + 1's time.
        """
        B, T = check_sequence(x, self.dim, self.uvqk)
        if self.use_temporal:
            encoding = self.temporal._require_encoding()
            timestamps, query_timestamps = check_times(timestamps, query_timestamps, (B, T), x.device,
                                                       "FuXiLinearBlock")
        else:
            timestamps = check_optional_times(timestamps, (B, T), x.device)
        lengths = check_lengths(lengths, B, T, x.device)
        check_positions_fit(T - 1, self.positional.num_positions, "x")
        if packs_rows(self.backend, x.device, lengths, return_state):
            rows = pack_rows(lengths, T)
            feats = (encoding(timestamps, lengths, query_timestamps).select_rows(rows.valid) if self.use_temporal
                     else None)
            y, states = self._forward(x[rows.valid][None], feats, positions=rows.positions,
                                      cu_seqlens=rows.cu_seqlens, output_final_state=True, backend=self.backend)
            y = unpack_rows(y, rows)
        else:
            feats = None
            if self.use_temporal:
                full = lengths if lengths is not None else torch.full((B,), T, dtype=torch.int64, device=x.device)
                feats = encoding.prefill_features(timestamps, full, query_timestamps, x.dtype, self.backend,
                                                  ends=lengths if return_state else None, final_state=return_state,
                                                  ragged=lengths is not None, head_width=self.dim // self.temporal.num_heads)
            y, states = self._forward(x, feats, output_final_state=return_state, backend=self.backend,
                                      lengths=lengths if return_state else None)
            y = mask_padding(y, lengths)
        if not return_state:
            return y
        if timestamps is None:
            last = torch.zeros(B, dtype=torch.int64, device=x.device)
        else:
            last = last_times(timestamps, lengths)
        s_s, s_t, s_p = states
        return y, FuXiLinearBlockState(retention=s_s, temporal=s_t.to(s_s.dtype), positional=s_p,
                                       last_timestamp=last, position=final_positions(lengths, B, T, x.device))

    def step(
        self,
        x_t: torch.Tensor,
        state: FuXiLinearBlockState,
        *,
        timestamps: Optional[torch.Tensor] = None,
        query_timestamps: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, FuXiLinearBlockState]:
        """One new event per user: ``x_t (N, D)``, its time ``timestamps (N,)`` int64 and the time of the
        request after it ``query_timestamps (N,)`` int64 -> ``(y_t (N, D), state)``; ``state`` is advanced in
        place, O(1) in the history: the block's decode step (:func:`block_step`: one input product, then the
        three channels in one :func:`~fuxi_linear.ops.fused_block_step` on CUDA, or in a few in-place calls each on
        the CPU path). Equals the last row of :meth:`forward`
        on the history plus this event. Inference only (no autograd graph)."""
        N = check_step_input(x_t, self.dim, self.uvqk)
        if self.use_temporal:
            encoding = self.temporal._require_encoding()
            timestamps, query_timestamps = check_times(timestamps, query_timestamps, (N,), x_t.device,
                                                       "FuXiLinearBlock.step")
        else:
            timestamps = check_optional_times(timestamps, (N,), x_t.device)
        check_state(state, FuXiLinearBlockState, self._state_layout(N), x_t.device)
        check_positions_fit(state.position, self.positional.num_positions, "a step")
        with torch.no_grad():
            weights = self._cached_step_weights()
            feats = (temporal_step_features(temporal_step_constants(encoding), state.last_timestamp, timestamps,
                                            query_timestamps, x_t.dtype) if self.use_temporal else None)
            y = block_step(x_t, weights, feats, state.position, (state.retention, state.temporal, state.positional),
                           backend=self.backend)
            if timestamps is not None:
                state.last_timestamp.copy_(timestamps)
            state.position.add_(1)
        return y, state

    def empty_state(self, num_users: int, device: Optional[torch.device] = None) -> FuXiLinearBlockState:
        """All-zero state of ``num_users`` users who have seen nothing yet (steps from it equal a forward)."""
        w = self.uvqk
        device = w.device if device is None else torch.device(device)
        return FuXiLinearBlockState(**{
            name: torch.zeros(shape, dtype=state_dtype(w) if kind == "float" else torch.int64, device=device)
            for name, shape, kind in self._state_layout(num_users)})

    def _state_layout(self, N: int) -> tuple:
        D, H, Ht2 = self.dim, self.num_heads, self.temporal.num_heads
        return (("retention", (N, H, self.qk_dim, D // H), "float"), ("temporal", (N, Ht2, 2, D // Ht2), "float"),
                ("positional", (N, 1, self.positional.width, D), "float"), ("last_timestamp", (N,), "int"),
                ("position", (N,), "int"))

    def _cached_step_weights(self) -> StepWeights:
        """:meth:`step_weights`, rebuilt only when a parameter changes (built in the graph under
        ``torch.compile``)."""
        if torch.compiler.is_compiling():
            return self.step_weights()
        return self._step_cache.get(self.step_sources, self.step_weights)

    # ------------------------------------------------------------------ the model's paths
    def _project(self, x: torch.Tensor):
        """``x: (..., D)`` -> ``x_hat (..., D)``, ``u (..., 3D)``, ``q, k (..., H, dqk)``, ``v (..., H, D/H)``."""
        x_hat = layer_norm(x)
        return (x_hat, *self.uvqk_layout.split(F.silu(x_hat @ self.uvqk.to(x_hat.dtype))))

    def _mix(self, x, u, y_s, y_t, y_p) -> torch.Tensor:
        # one LayerNorm over the stacked channels normalises each channel's D values on its own
        a = u * layer_norm(torch.stack([y_s.flatten(-2), y_t, y_p], dim=-2)).flatten(-2)
        return self.ffn(a, x)

    def _forward(
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
        """The block on given temporal operands (the model's, computed once for all blocks; the CPU path's
        :class:`~fuxi_linear.layers.temporal_encoding.PairedHeadsPlan` or q, k, g): ``x: (B, T, D)`` (or packed
        ``(1, total, D)`` with ``cu_seqlens`` and ``positions: (1, total)``).

        ``temporal=None`` switches the temporal channel off. ``lengths (B,)``: right-padded rows whose final
        states are taken at ``lengths - 1`` (None: all rows full). ``outputs="last"``: only each sequence's
        last token goes through the gate and the FFN (what a prefill needs from its last block): the output is
        ``(B, D)``. Returns the block output and, if asked, the channel states after each sequence.
        """
        if outputs == "last":  # u, the gate and the FFN are only needed at the last tokens
            x_hat = layer_norm(x)
            layout = self.uvqk_layout
            w = cast(self.uvqk, x_hat.dtype)
            x = last_tokens(x, lengths, cu_seqlens)
            x_hat_last = last_tokens(x_hat, lengths, cu_seqlens)
            if uses_cpu_path(backend, x.device, cu_seqlens):  # the CPU path reads q at the last tokens only
                u, q = torch.split(F.silu(x_hat_last @ w[:, layout.gate_and_q]), [layout.gate, layout.qk], dim=-1)
                k, v = torch.split(F.silu(x_hat @ w[:, layout.k_and_v]), [layout.qk, layout.value], dim=-1)
            else:
                u = F.silu(x_hat_last @ w[:, :layout.gate])
                q, k, v = torch.split(F.silu(x_hat @ w[:, layout.qkv]), layout.sizes[1:], dim=-1)
            q, k, v = layout.heads_of(q), layout.heads_of(k), layout.heads_of(v)
        else:
            x_hat, u, q, k, v = self._project(x)
        kw = dict(cu_seqlens=cu_seqlens, output_final_state=output_final_state, backend=backend, lengths=lengths,
                  outputs=outputs)
        y_s, s_s = self.retention._attend(q, k, v, **kw)
        if temporal is not None:
            y_t, s_t = self.temporal._forward_features(x_hat, temporal, **kw)
        else:  # temporal channel switched off (ablation): it feeds zeros to the gate and keeps a zero state
            y_t = x.new_zeros(x.shape)
            s_t = self.temporal.zero_state(s_s.shape[0], x) if output_final_state else None
        y_p, s_p = self.positional._forward_normed(x_hat, positions, **kw)
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
        sdt = state_dtype(w_in)
        layout = self.uvqk_layout
        return StepWeights(w_in=w_in.contiguous(), w0=f.lin0.weight.t().contiguous(), w31=w31.contiguous(),
                           w2=f.lin2.weight.t().contiguous(), gain=gain, skip=skip,
                           gain_ablation=gain * ablation, skip_ablation=skip * ablation,
                           g_gamma=g_gamma, positional_table=p.table,
                           decay=torch.exp(cast(g_gamma, sdt)).view(-1, 1, 1),
                           positional_keys=cast(p.table, sdt).view(p.table.shape[0], 1, -1, 1).contiguous(),
                           columns=tuple(layout.step_sizes))
