"""Linear positional channel (SPEC §4): one head with a learnable positional kernel, no decay."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..ops.fused_block_step import StepChannel
from ..ops.prefill import (cast, compute_dtype, last_tokens, prefill_decay_attention, uses_plan,
                           without_autocast)
from ..derived_cache import inference_cache
from ..ops.decay_plan import prepare_decay_attention


def sinusoidal_table(num_positions: int, width: int) -> torch.Tensor:
    """Row p = ``[sin(p w_f), cos(p w_f)]`` for f < width/2, ``w_f = 10000^(-f / (width/2))``. ``(Nmax, P)``."""
    half = width // 2
    w = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * w[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


class LinearPositionalChannel(nn.Module):
    """``o_i = sum_{j<=i} (E_i . E_j / (P/2)) v_j`` with ``v = W_p LN(x)``; ``y = alpha o + beta v``.

    ``E: (Nmax, P)`` is learnable. Positions count from 0 at each user's first event; q and k are the same for
    every user, so the padded path passes them with batch size 1. Decode state ``(N, 1, P, D)`` float32.
    """

    def __init__(self, dim: int, width: int, num_positions: int):
        super().__init__()
        if width < 2 or width % 2:
            raise ValueError(f"positional_dim must be an even int >= 2, got {width}")
        self.width = width
        self.num_positions = num_positions
        self.table = nn.Parameter(sinusoidal_table(num_positions, width))
        self.proj_p = nn.Linear(dim, dim, bias=False)
        self.alpha = nn.Parameter(torch.randn(1) * 0.02)
        self.beta = nn.Parameter(torch.ones(1))

    def check_positions(self, max_position: int, argument: str) -> None:
        if max_position >= self.num_positions:
            raise ValueError(
                f"{argument} reaches position {max_position}, beyond the positional table of "
                f"{self.num_positions} rows (positions 0..{self.num_positions - 1})"
            )

    def _qk_from_start(self, T: int, dtype: torch.dtype):
        """q, k of positions 0..T-1 ``(1, T, 1, P)``: the table's first T rows."""
        e = cast(self.table[:T], dtype).unsqueeze(0).unsqueeze(-2)
        return e, e / (self.width // 2)

    def _qk(self, positions: torch.Tensor, dtype: torch.dtype):
        e = self.table[positions].to(dtype).unsqueeze(-2)  # (..., 1, P)
        return e, e / (self.width // 2)

    def forward(
        self,
        x_hat: torch.Tensor,
        positions: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        output_final_state: bool = False,
        backend: str = "auto",
        lengths: Optional[torch.Tensor] = None,
        outputs: str = "all",
    ):
        """``x_hat: (B, T, D)``. ``positions: (1, T)`` int64 for packed input; None means 0..T-1 for every row.

        Returns ``(y: (B, T, D), state: (N, 1, P, D) | None)``; ``outputs="last"``: ``y (B, D)`` at each
        sequence's last token (``lengths``: right-padded rows, as in the retention channel).
        """
        T = x_hat.shape[1]
        if outputs == "last" and positions is None and uses_plan(backend, x_hat.device, cu_seqlens):
            return self._last_from_inputs(x_hat, lengths, output_final_state)
        v = F.linear(x_hat, self.proj_p.weight).unsqueeze(-2)
        if positions is None and lengths is None and uses_plan(backend, x_hat.device, cu_seqlens):
            # rows from position 0, all full: the whole plan depends on the table and T only
            cdt = compute_dtype(v.dtype)
            plan = inference_cache(self, "plan", (self.table,), (T, cdt, outputs, output_final_state),
                                   lambda: without_autocast(prepare_decay_attention)(*self._qk_from_start(T, cdt), value_dim=v.shape[-1],
                                                                   all_outputs=outputs == "all",
                                                                   last_outputs=outputs == "last",
                                                                   final_state=output_final_state))
            o, state = prefill_decay_attention(None, None, v, output_final_state=output_final_state, outputs=outputs,
                                               plan=plan)
        else:
            q, k = (self._qk_from_start(T, v.dtype) if positions is None else
                    self._qk(positions, v.dtype))  # (1, T, 1, P): shared by the batch, never expanded
            o, state = prefill_decay_attention(q, k, v, lengths=lengths, cu_seqlens=cu_seqlens,
                                               output_final_state=output_final_state, outputs=outputs, backend=backend)
        if outputs == "last":
            v = last_tokens(v, lengths, cu_seqlens)
        return self._augment(o, v).squeeze(-2), state

    def _augment(self, o: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``alpha o + beta v``."""
        if o.dtype == v.dtype == self.alpha.dtype:
            return torch.addcmul(self.beta * v, self.alpha, o)
        return self.alpha.to(o.dtype) * o + self.beta.to(v.dtype) * v

    def _keys(self, T: int, cdt: torch.dtype):
        """The table's first T rows ``(T, P)`` and the keys ``(P, T)`` (rows / (P/2), transposed)."""
        e = cast(self.table[:T], cdt)
        return e, (e / (self.width // 2)).t()

    @without_autocast
    def _last_from_inputs(self, x_hat: torch.Tensor, lengths: Optional[torch.Tensor], output_final_state: bool):
        """``outputs="last"`` on the CPU path: the value projection is linear, so the state
        ``sum_s k_s (x) W_p x_hat_s = (sum_s k_s (x) x_hat_s) W_p^T`` is built from the inputs and projected once,
        instead of projecting every event. ``x_hat (B, T, D)`` -> ``(y (B, D), state (B, 1, P, D) | None)``."""
        B, T, _ = x_hat.shape
        cdt = compute_dtype(x_hat.dtype)
        e, k_t = inference_cache(self, "keys", (self.table,), (T, cdt), lambda: self._keys(T, cdt))
        x = cast(x_hat, cdt)
        if lengths is not None:  # events past a user's length do not enter the state
            x = x * (torch.arange(T, device=x.device) < lengths[:, None]).to(cdt)[..., None]
        S = (k_t @ x) @ cast(self.proj_p.weight, cdt).t()  # (B, P, D)
        e_last = e[-1] if lengths is None else e[lengths.long() - 1]  # (P,) or (B, P)
        o = cast((e_last.unsqueeze(-2) @ S).squeeze(-2), x_hat.dtype)  # (B, D)
        v_last = F.linear(last_tokens(x_hat, lengths), self.proj_p.weight)
        return self._augment(o, v_last), (S.unsqueeze(1) if output_final_state else None)

def positional_step_channel(table: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                            state: torch.Tensor) -> StepChannel:
    """The positional channel as a fused-decode-step channel: the table ``(Nmax, P)``, values ``v (N, 1, D)``,
    ``positions (N,)`` int64 and the state pool ``(P_pool, 1, P, D)``. q and k are the same table row (k's
    ``1 / (P/2)`` is the operator's ``k_scale``), read once for both; ``alpha o + beta v`` is the caller's."""
    e = table.unsqueeze(1).index_select(0, positions)  # (N, 1, P): q and k, read once for both
    if e.dtype != v.dtype:
        e = e.to(v.dtype)
    return StepChannel(e, e, v, state, k_scale=1.0 / (table.shape[1] // 2))
