"""SASRec (Kang & McAuley, 2018): causal softmax self-attention with a ReLU feed-forward network.

Pre-LN blocks ``x += Drop(W_o Attn(LN1 x)); x += FFN(LN2 x)`` with a final LayerNorm, learned absolute
positions (from the shared input layer), and no notion of time: timestamps are validated (the interface is
FuXi-Linear's) but ignored.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .base import SequentialRecommenderBase, StepWindow
from .config import BaselineConfig
from .kv_cache import KVCache

LN_EPS = 1e-6


@dataclass
class SASRecConfig(BaselineConfig):
    """:class:`BaselineConfig` plus ``ffn_multiply``: the FFN hidden width is ``D * ffn_multiply`` (the original
    SASRec uses D, i.e. 1)."""

    ffn_multiply: int = 1

    _POSITIVE_INTS = BaselineConfig._POSITIVE_INTS + ("ffn_multiply",)


class SASRecBlock(nn.Module):
    """One pre-LN transformer block. Shapes: ``x (B, T, D)`` (encode) or ``(N, D)`` (one decode event)."""

    def __init__(self, dim: int, num_heads: int, qk_dim: int, ffn_dim: int, dropout: float):
        super().__init__()
        self.num_heads, self.qk_dim, self.value_dim = num_heads, qk_dim, dim // num_heads
        self.dropout_p = dropout
        self.ln_attn = nn.LayerNorm(dim, eps=LN_EPS)
        # q and k may be narrower than v (qk_dim != D / H); SDPA accepts different q/k and v widths.
        self.qkv = nn.Linear(dim, 2 * num_heads * qk_dim + dim)
        self.out = nn.Linear(dim, dim)
        self.ln_ffn = nn.LayerNorm(dim, eps=LN_EPS)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn_dim, dim),
                                 nn.Dropout(dropout))
        self.dropout = nn.Dropout(dropout)

    def _qkv(self, x: torch.Tensor):
        """``x (..., D)`` -> q, k ``(..., H, dqk)``, v ``(..., H, dv)``."""
        H, dqk = self.num_heads, self.qk_dim
        q, k, v = self.qkv(self.ln_attn(x)).split([H * dqk, H * dqk, H * self.value_dim], dim=-1)
        return (q.unflatten(-1, (H, dqk)), k.unflatten(-1, (H, dqk)), v.unflatten(-1, (H, self.value_dim)))

    def _finish(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Residual attention output then residual FFN. ``attn (..., D)``."""
        x = x + self.dropout(self.out(attn))
        return x + self.ffn(self.ln_ffn(x))

    def forward(self, x: torch.Tensor, cache: Optional[KVCache], layer: int) -> torch.Tensor:
        """``x (B, T, D)`` -> ``(B, T, D)``; keys/values go to ``cache`` slots [0, T) when given."""
        q, k, v = (t.transpose(1, 2) for t in self._qkv(x))  # (B, H, T, d)
        if cache is not None:
            T = x.shape[1]
            cache.keys[layer, :, :, :T] = k
            cache.values[layer, :, :, :T] = v
        # Right padding: a causal mask alone keeps padded keys away from every valid query, and every row
        # (padded ones included) attends to at least itself, so no fully-masked row produces NaN.
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                           dropout_p=self.dropout_p if self.training else 0.0)
        return self._finish(x, a.transpose(1, 2).flatten(2))

    def step(self, x: torch.Tensor, window: StepWindow, layer: int) -> torch.Tensor:
        """``x (N, D)``: write this event's k/v at slot ``lengths[n]``, attend over the window's M slots with
        its ``mask (N, M)`` (True = attend), return ``(N, D)``."""
        q, k, v = self._qkv(x)  # (N, H, d)
        SequentialRecommenderBase._write_step(window, layer, k, v)
        keys, values = SequentialRecommenderBase._cached(window, layer)  # (N, H, M, d)
        a = F.scaled_dot_product_attention(q[:, :, None], keys, values, attn_mask=window.mask[:, None, None],
                                           dropout_p=self.dropout_p if self.training else 0.0)  # (N, H, 1, dv)
        return self._finish(x, a.flatten(1))


class SASRec(SequentialRecommenderBase):
    """SASRec with FuXi-Linear's input layer, loss, scoring and serving interface (see
    :class:`fuxi_linear.models.baselines.base.SequentialRecommenderBase`)."""

    uses_time = False

    def __init__(self, config: SASRecConfig):
        if not isinstance(config, SASRecConfig):
            raise TypeError(f"config must be a SASRecConfig, got {type(config).__name__}")
        super().__init__(config)
        c = config
        self.blocks = nn.ModuleList(
            SASRecBlock(c.embedding_dim, c.num_heads, c.qk_dim, c.embedding_dim * c.ffn_multiply, c.dropout)
            for _ in range(c.num_blocks)
        )
        self.final_norm = nn.LayerNorm(c.embedding_dim, eps=LN_EPS)

    def _forward(self, x, timestamps, query_times, cache):
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
        return self.final_norm(x)

    def _step(self, x, window, query_timestamps):
        for i, block in enumerate(self.blocks):
            x = block.step(x, window, i)
        return self.final_norm(x)
