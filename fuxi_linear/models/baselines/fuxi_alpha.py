"""FuXi-α (Ye et al., 2025): HSTU-like attention split into three channels that share the values, gated by u,
followed by the multi-stage FFN of the FuXi block.

Per block, with ``x: (B, T, D)``:

    x̂ = LN(x);  u, v, q, k = split(SiLU(x̂ W_uvqk))          u: 3D;  v: D;  q, k: H·dqk
    semantic  S[h, i, j] = SiLU(q_i·k_j) / N                  per head
    temporal  Tm[i, j]   = w_time[bucket(qt_i - t_j)]         shared by the heads
    position  P[i, j]    = w_pos[i - j]                       shared by the heads
    (all zero for j > i)
    a = u ⊙ concat[LN(S v), LN(Tm v), LN(P v)]                each LN over D, no affine, eps 1e-6
    out = MultiStageFFN(a, x)                                  (fuxi_linear.layers.ffn, reused as is)

The bias maps weight the values directly (no SiLU, no 1/N): their scale is learned and the LayerNorm that
follows removes it anyway. Channel order and per-channel LayerNorm mirror the FuXi-Linear block (SPEC §5),
so the two models differ only in how each channel mixes the past. Time convention and N: as
:mod:`fuxi_linear.models.baselines.hstu` (query i uses the next event's time; N = max_seq_len by default).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers.ffn import MultiStageFFN
from ...layers.norms import layer_norm
from .base import PointwiseAttentionRecommender, SequentialRecommenderBase, StepWindow, query_chunks
from .kv_cache import KVCache
from .relative_bias import PointwiseAttentionConfig, RelativeBias, attention_divisor


@dataclass
class FuXiAlphaConfig(PointwiseAttentionConfig):
    """:class:`PointwiseAttentionConfig` plus ``ffn_multiply``: hidden width of the multi-stage FFN is
    ``D * ffn_multiply`` (default 4; FuXi-Linear's default is 1, as released; ``fuxi-linear bench`` builds both
    with the paper's width)."""

    ffn_multiply: int = 4

    _POSITIVE_INTS = PointwiseAttentionConfig._POSITIVE_INTS + ("ffn_multiply",)


class FuXiAlphaBlock(nn.Module):
    """One FuXi-α block. ``forward``: ``x (B, T, D)``; ``step``: ``x (N, D)`` for one new event per user."""

    def __init__(self, config: FuXiAlphaConfig):
        super().__init__()
        c = config
        D, H = c.embedding_dim, c.num_heads
        self.dim, self.num_heads, self.qk_dim, self.value_dim = D, H, c.qk_dim, c.value_dim
        self.attention_norm, self.max_seq_len = c.attention_norm, c.max_seq_len
        self.uvqk = nn.Linear(D, 3 * D + D + 2 * H * c.qk_dim, bias=False)
        nn.init.normal_(self.uvqk.weight, std=0.02)
        self.bias = RelativeBias(c.max_positions, c.max_time_bucket)
        self.ffn = MultiStageFFN(D, D * c.ffn_multiply, c.dropout)

    def _uvqk(self, x: torch.Tensor):
        """``x (..., D)`` -> u ``(..., 3D)``, v ``(..., D)``, q, k ``(..., H, dqk)``."""
        H, dqk, D = self.num_heads, self.qk_dim, self.dim
        u, v, q, k = F.silu(self.uvqk(layer_norm(x))).split([3 * D, D, H * dqk, H * dqk], dim=-1)
        return u, v, q.unflatten(-1, (H, dqk)), k.unflatten(-1, (H, dqk))

    def _finish(self, x: torch.Tensor, u: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
        """``channels (..., 3, D)`` = [semantic, temporal, positional] outputs; gate, then the MFFN."""
        a = u * layer_norm(channels).flatten(-2)  # (..., 3D)
        return self.ffn(a, x)

    def forward(self, x: torch.Tensor, timestamps: torch.Tensor, query_times: torch.Tensor,
                cache: Optional[KVCache], layer: int, chunk: int) -> torch.Tensor:
        """``x (B, T, D)``, ``timestamps``/``query_times (B, T)`` int64 -> ``(B, T, D)`` (query blocks of
        ``chunk`` rows against keys [0, e), as in HSTU)."""
        B, T, D = x.shape
        u, v, q, k = self._uvqk(x)  # v: (B, T, D), used flat by the head-shared maps
        vh = v.unflatten(-1, (self.num_heads, self.value_dim)).transpose(1, 2)  # (B, H, T, dv)
        q, k = q.transpose(1, 2), k.transpose(1, 2)  # (B, H, T, dqk)
        if cache is not None:
            cache.keys[layer, :, :, :T] = k
            cache.values[layer, :, :, :T] = vh
        outs = []
        for s, e in query_chunks(T, chunk):
            rel, bucket = self.bias.block_indices(query_times, timestamps, s, e)
            pos_map, time_map = self.bias.maps(rel, bucket)  # (c, e), (B, c, e)
            causal = torch.arange(s, e, device=x.device)[:, None] >= torch.arange(e, device=x.device)[None, :]
            div = attention_divisor(self.attention_norm, self.max_seq_len, torch.arange(s, e, device=x.device),
                                    x.dtype)
            sem = F.silu(q[:, :, s:e] @ k[:, :, :e].transpose(-1, -2)).masked_fill(~causal, 0.0) / div
            sem = (sem @ vh[:, :, :e]).transpose(1, 2).flatten(2)  # (B, c, D)
            # Head-shared maps: one (c, e) x (e, D) product per user instead of H narrow ones.
            tim = time_map.masked_fill(~causal, 0.0) @ v[:, :e]  # (B, c, D)
            pos = pos_map.masked_fill(~causal, 0.0) @ v[:, :e]  # (B, c, D) by broadcasting the (c, e) map
            outs.append(torch.stack([sem, tim, pos], dim=2))  # (B, c, 3, D)
        return self._finish(x, u, torch.cat(outs, dim=1))

    def step(self, x: torch.Tensor, window: StepWindow, layer: int, rel: torch.Tensor,
             bucket: torch.Tensor) -> torch.Tensor:
        """``x (N, D)`` -> ``(N, D)``: write k/v at slot ``lengths[n]``; the three channel weights over the
        window's M slots are stacked to ``(N, H, 3, M)`` and applied to the cached values in ONE batched matmul."""
        N = x.shape[0]
        H, dv = self.num_heads, self.value_dim
        u, v, q, k = self._uvqk(x)
        SequentialRecommenderBase._write_step(window, layer, k, v.unflatten(-1, (H, dv)))
        keys, values = SequentialRecommenderBase._cached(window, layer)  # (N, H, M, d)
        M = window.size
        pos_map, time_map = self.bias.maps(rel, bucket)  # (N, M)
        div = attention_divisor(self.attention_norm, self.max_seq_len, window.lengths, x.dtype)
        if isinstance(div, torch.Tensor):
            div = div[:, None]  # (N, 1, 1)
        sem = F.silu((keys @ q[..., None]).squeeze(-1)) / div  # (N, H, M)
        weights = torch.stack([sem, time_map[:, None].expand(N, H, M), pos_map[:, None].expand(N, H, M)], dim=2)
        weights = weights.masked_fill(~window.mask[:, None, None], 0.0)  # (N, H, 3, M)
        channels = (weights @ values).transpose(1, 2).flatten(2)  # (N, H, 3, dv) -> (N, 3, D)
        return self._finish(x, u, channels)


class FuXiAlpha(PointwiseAttentionRecommender):
    """FuXi-α with FuXi-Linear's input layer, loss, scoring and serving interface (see
    :class:`fuxi_linear.models.baselines.base.SequentialRecommenderBase`)."""

    config_class = FuXiAlphaConfig
    block_class = FuXiAlphaBlock
