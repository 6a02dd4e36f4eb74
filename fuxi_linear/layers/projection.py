"""The column layout of a fused input projection, stated once: ``[u | q | k | v] = SiLU(x_hat W_uvqk)``.

One matrix projects the normalised input to the gate ``u``, the queries and keys of the H heads and the values
(the released model's ``_uvqk``, stored (in, out)):

    columns:  [ u: gate | q: H x dqk | k: H x dqk | v: D ]

The gate is 3D wide in a :class:`~fuxi_linear.layers.FuXiLinearBlock` (one D-wide gate per channel) and D in a
:class:`~fuxi_linear.layers.Retention`. A block's decode step multiplies by one matrix that appends the temporal
and positional channels' value projections (D each, no SiLU) to these columns
(:class:`~fuxi_linear.layers.block_step.StepWeights`): ``[u | q | k | v | v_t | v_p]``.
"""
from __future__ import annotations

from typing import List, NamedTuple, Tuple

import torch

__all__ = ["ProjectionLayout"]


class ProjectionLayout(NamedTuple):
    """Widths of ``[u | q | k | v]``: ``gate`` (u), ``qk`` (H x dqk, each of q and k), ``value`` (D), and the
    ``heads`` H that q, k and v are split into."""

    gate: int
    qk: int
    value: int
    heads: int

    @classmethod
    def of_block(cls, dim: int, num_heads: int, qk_dim: int) -> "ProjectionLayout":
        """A FuXi-Linear block's ``uvqk (D, 3D + 2 H dqk + D)``: a D-wide gate per channel."""
        return cls(3 * dim, num_heads * qk_dim, dim, num_heads)

    @classmethod
    def of_retention(cls, dim: int, num_heads: int, qk_dim: int) -> "ProjectionLayout":
        """A stand-alone :class:`~fuxi_linear.layers.Retention`'s ``uvqk (D, 2D + 2 H dqk)``."""
        return cls(dim, num_heads * qk_dim, dim, num_heads)

    @classmethod
    def of_block_width(cls, width: int, dim: int, num_heads: int) -> "ProjectionLayout":
        """A block's layout from its ``uvqk`` width (dqk follows); ``ValueError`` when the width does not fit
        ``4D + 2 H dqk``."""
        qk_total = width - 4 * dim
        if qk_total <= 0 or qk_total % (2 * num_heads):
            raise ValueError(f"uvqk width {width} does not fit 4D + 2*H*dqk with D={dim}, H={num_heads}")
        return cls.of_block(dim, num_heads, qk_total // (2 * num_heads))

    @property
    def width(self) -> int:
        """Columns of ``[u | q | k | v]``."""
        return self.gate + 2 * self.qk + self.value

    @property
    def sizes(self) -> List[int]:
        """``[u, q, k, v]`` widths, for ``torch.split``."""
        return [self.gate, self.qk, self.qk, self.value]

    @property
    def step_sizes(self) -> List[int]:
        """``[u, q, k, v, v_t, v_p]`` widths of the decode-step matrix's columns."""
        return self.sizes + [self.value, self.value]

    @property
    def gate_and_q(self) -> slice:
        """Columns of ``[u | q]``."""
        return slice(0, self.gate + self.qk)

    @property
    def k_and_v(self) -> slice:
        """Columns of ``[k | v]``."""
        return slice(self.gate + self.qk, self.width)

    @property
    def qkv(self) -> slice:
        """Columns of ``[q | k | v]``."""
        return slice(self.gate, self.width)

    def heads_of(self, x: torch.Tensor) -> torch.Tensor:
        """``(..., H * d)`` -> ``(..., H, d)``."""
        return x.unflatten(-1, (self.heads, -1))

    def split(self, proj: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``proj (..., width)`` -> ``u (..., gate)`` and ``q, k (..., H, dqk)``, ``v (..., H, D / H)``."""
        u, q, k, v = torch.split(proj, self.sizes, dim=-1)
        return u, self.heads_of(q), self.heads_of(k), self.heads_of(v)
