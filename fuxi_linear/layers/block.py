"""The FuXi-Linear block (SPEC §5): three linear-complexity channels, gated, then the multi-stage FFN."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.prefill import cast, last_tokens, uses_plan
from .ffn import MultiStageFFN
from .norms import layer_norm
from .positional import LinearPositionalChannel
from .retention import RetentionChannel
from .temporal import TemporalFeatures, TemporalRetentionChannel

ChannelStates = Tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # retention, temporal, positional


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
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding_dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads, self.qk_dim = dim, num_heads, qk_dim
        self.uvqk = nn.Parameter(torch.randn(dim, 3 * dim + 2 * num_heads * qk_dim + dim) * 0.02)  # (in, out)
        self.retention = RetentionChannel(num_heads)
        self.temporal = TemporalRetentionChannel(dim, num_periods)
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

    def step(
        self,
        x: torch.Tensor,
        temporal: Optional[TemporalFeatures],
        positions: torch.Tensor,
        states: ChannelStates,
        backend: str = "auto",
    ) -> torch.Tensor:
        """One event per user: ``x: (N, D)``, ``positions: (N,)``; advances the three states in place."""
        x_hat, u, q, k, v = self._project(x)
        y_s = self.retention.step(q, k, v, states[0], backend=backend)
        y_t = torch.zeros_like(x_hat) if temporal is None else self.temporal.step(x_hat, temporal, states[1], backend=backend)
        y_p = self.positional.step(x_hat, positions, states[2], backend=backend)
        return self._mix(x, u, y_s, y_t, y_p)
