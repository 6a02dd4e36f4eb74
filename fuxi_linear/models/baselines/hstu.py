"""HSTU (Zhai et al., 2024, "Actions Speak Louder than Words"), research form.

Per block, with ``x: (B, T, D)``:

    x̂ = LN(x);  u, v, q, k = split(SiLU(x̂ W_uvqk))            u, v: D;  q, k: H·dqk
    A[h, i, j] = SiLU(q_i·k_j + w_pos[i - j] + w_time[bucket(qt_i - t_j)]) / N   for j <= i, else 0
    y = LN(A v) ⊙ u;   out = x + W_o dropout(y)

LayerNorms have no affine weights (eps 1e-6). There is no 1/sqrt(dqk) and no softmax: the pointwise SiLU
weights are not normalised across keys, N only fixes the scale. Choices:

- N = ``max_seq_len`` by default (HSTU divides by the padded length n, which its pipeline fixes at the
  maximum length); ``attention_norm="count"`` divides by i + 1 instead.
- The time bias of query i uses the NEXT event's time ``qt_i = t_{i+1}`` (the request time for a user's last
  event), as HSTU does: the representation that predicts event i+1 knows how long ago each past event was
  at the moment of event i+1.
- The bias tables are shared by all heads and separate per block, as in HSTU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...layers.norms import layer_norm
from .base import PointwiseAttentionRecommender, SequentialRecommenderBase, StepWindow, query_chunks
from .kv_cache import KVCache
from .relative_bias import PointwiseAttentionConfig, RelativeBias, attention_divisor


@dataclass
class HSTUConfig(PointwiseAttentionConfig):
    """Configuration of :class:`HSTU` (all fields from :class:`PointwiseAttentionConfig`)."""


class HSTUBlock(nn.Module):
    """One HSTU block. ``forward``: ``x (B, T, D)``; ``step``: ``x (N, D)`` for one new event per user."""

    def __init__(self, config: HSTUConfig):
        super().__init__()
        c = config
        D, H = c.embedding_dim, c.num_heads
        self.num_heads, self.qk_dim, self.value_dim = H, c.qk_dim, c.value_dim
        self.attention_norm, self.max_seq_len = c.attention_norm, c.max_seq_len
        self.uvqk = nn.Linear(D, 2 * D + 2 * H * c.qk_dim, bias=False)
        nn.init.normal_(self.uvqk.weight, std=0.02)
        self.out = nn.Linear(D, D)
        self.bias = RelativeBias(c.max_positions, c.max_time_bucket)
        self.dropout = nn.Dropout(c.dropout)

    def _uvqk(self, x: torch.Tensor):
        """``x (..., D)`` -> u ``(..., D)``, v ``(..., H, dv)``, q, k ``(..., H, dqk)``."""
        H, dqk, dv = self.num_heads, self.qk_dim, self.value_dim
        u, v, q, k = F.silu(self.uvqk(layer_norm(x))).split([H * dv, H * dv, H * dqk, H * dqk], dim=-1)
        return u, v.unflatten(-1, (H, dv)), q.unflatten(-1, (H, dqk)), k.unflatten(-1, (H, dqk))

    def _finish(self, x: torch.Tensor, u: torch.Tensor, av: torch.Tensor) -> torch.Tensor:
        """``x + W_o dropout(LN(A v) ⊙ u)``; ``av, u, x: (..., D)`` (LN over all heads together, as HSTU)."""
        return x + self.out(self.dropout(layer_norm(av) * u))

    def forward(self, x: torch.Tensor, timestamps: torch.Tensor, query_times: torch.Tensor,
                cache: Optional[KVCache], layer: int, chunk: int) -> torch.Tensor:
        """``x (B, T, D)``, ``timestamps``/``query_times (B, T)`` int64 -> ``(B, T, D)``.

        Queries run in blocks of ``chunk`` rows; block [s, e) only needs keys [0, e) (causal), which halves
        the work of a full T×T map and bounds the score tensor to ``(B, H, chunk, e)``.
        """
        B, T, _ = x.shape
        u, v, q, k = self._uvqk(x)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, d)
        if cache is not None:
            cache.keys[layer, :, :, :T] = k
            cache.values[layer, :, :, :T] = v
        outs = []
        for s, e in query_chunks(T, chunk):
            rel, bucket = self.bias.block_indices(query_times, timestamps, s, e)
            pos_map, time_map = self.bias.maps(rel, bucket)  # (c, e), (B, c, e)
            scores = q[:, :, s:e] @ k[:, :, :e].transpose(-1, -2) + (pos_map + time_map)[:, None]  # (B, H, c, e)
            causal = torch.arange(s, e, device=x.device)[:, None] >= torch.arange(e, device=x.device)[None, :]
            div = attention_divisor(self.attention_norm, self.max_seq_len, torch.arange(s, e, device=x.device),
                                    x.dtype)
            weights = F.silu(scores).masked_fill(~causal, 0.0) / div
            outs.append(weights @ v[:, :, :e])  # (B, H, c, dv)
        av = torch.cat(outs, dim=2).transpose(1, 2).flatten(2)  # (B, T, D)
        return self._finish(x, u, av)

    def step(self, x: torch.Tensor, window: StepWindow, layer: int, rel: torch.Tensor,
             bucket: torch.Tensor) -> torch.Tensor:
        """``x (N, D)`` -> ``(N, D)``: write k/v at slot ``lengths[n]``, then one batched matmul over the window's
        M slots against the cache. ``rel, bucket: (N, M)`` bias indices (shared by the blocks)."""
        u, v, q, k = self._uvqk(x)
        SequentialRecommenderBase._write_step(window, layer, k, v)
        keys, values = SequentialRecommenderBase._cached(window, layer)  # (N, H, M, d)
        pos_map, time_map = self.bias.maps(rel, bucket)  # (N, M)
        scores = (keys @ q[..., None]).squeeze(-1) + (pos_map + time_map)[:, None]  # (N, H, M)
        div = attention_divisor(self.attention_norm, self.max_seq_len, window.lengths, x.dtype)
        if isinstance(div, torch.Tensor):
            div = div[:, None]  # (N, 1, 1)
        weights = F.silu(scores).masked_fill(~window.mask[:, None], 0.0) / div
        av = (weights[:, :, None] @ values).flatten(1)  # (N, H, 1, dv) -> (N, D)
        return self._finish(x, u, av)


class HSTU(PointwiseAttentionRecommender):
    """HSTU with FuXi-Linear's input layer, loss, scoring and serving interface (see
    :class:`fuxi_linear.models.baselines.base.SequentialRecommenderBase`). The user vector is the last block's
    output, L2-normalised (no final norm, as HSTU)."""

    config_class = HSTUConfig
    block_class = HSTUBlock
