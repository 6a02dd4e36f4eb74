"""Linear positional attention (SPEC §4): one head with a learnable positional kernel, no decay, as a layer
``(B, T, D) -> (B, T, D)`` with an O(1) step."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..derived_cache import inference_cache
from ..ops.backends import check_backend
from ..ops.channel_prefill import last_tokens, prefill_decay_attention, uses_cpu_path, without_autocast
from ..ops.decay_plan import prepare_decay_attention
from ..ops.dtypes import cast, compute_dtype
from ..ops.fused_block_step import fused_block_step
from ..ops.step_channel import StepChannel
from ..utils import check_int
from .layer_inputs import (check_lengths, check_positions_fit, check_sequence, check_state, check_step_input,
                           final_positions, mask_padding, pack_rows, packs_rows, state_dtype, unpack_rows)
from .norms import layer_norm
from .states import LinearPositionalState


def sinusoidal_table(num_positions: int, width: int) -> torch.Tensor:
    """Row p = ``[sin(p w_f), cos(p w_f)]`` for f < width/2, ``w_f = 10000^(-f / (width/2))``. ``(Nmax, P)``."""
    half = width // 2
    w = 10000.0 ** (-torch.arange(half, dtype=torch.float64) / half)
    angles = torch.arange(num_positions, dtype=torch.float64)[:, None] * w[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


class LinearPositional(nn.Module):
    """Linear positional attention (SPEC §4) as a layer: ``(B, T, D) -> (B, T, D)``, positions from 0 at each
    row's first event.

    ``v = W_p LN(x)``; one head of width D with a learnable positional kernel: ``o_i = sum_{j<=i}
    (E_i . E_j / (P/2)) v_j`` (no decay), ``y = alpha o + beta v``. ``E (Nmax, P)`` starts as the sinusoidal
    table (row p = ``[sin(p w_f), cos(p w_f)]``); a history may not be longer than its Nmax rows.

    Args:
        dim: D. positional_dim: P, the kernel width (even; default 32). max_positions: Nmax, the table's rows
            (default 2048): events a history (prefill plus steps) may hold.
        backend: ``"auto"``, ``"triton"`` or ``"cpu"`` (as :class:`~fuxi_linear.layers.Retention`).

    Parameters: ``table (Nmax, P)``, ``proj_p`` (D -> D, no bias), ``alpha (1)`` N(0, 0.02), ``beta (1)`` one.
    Decode state: :class:`LinearPositionalState`, ``P x D`` plus the position per user. q and k are the same for
    every user, so the padded path passes them with batch size 1.
    """

    def __init__(self, dim: int, positional_dim: int = 32, max_positions: int = 2048, *, backend: str = "auto"):
        super().__init__()
        check_int("dim", dim)
        check_int("positional_dim", positional_dim)
        check_int("max_positions", max_positions)
        if positional_dim < 2 or positional_dim % 2:
            raise ValueError(f"positional_dim must be an even int >= 2, got {positional_dim}")
        self.dim = dim
        self.width = positional_dim
        self.num_positions = max_positions
        self.backend = check_backend(backend)
        self.table = nn.Parameter(sinusoidal_table(max_positions, positional_dim))
        self.proj_p = nn.Linear(dim, dim, bias=False)
        self.alpha = nn.Parameter(torch.randn(1) * 0.02)
        self.beta = nn.Parameter(torch.ones(1))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, positional_dim={self.width}, max_positions={self.num_positions}"

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
        """``x (B, T, D)`` -> ``y (B, T, D)``, or ``(y, LinearPositionalState)`` with ``return_state``; T at most
        ``max_positions``. ``lengths (B,)``: right-padded rows (``y`` is zero past a row's length, the state is
        taken at ``lengths - 1``). ``timestamps`` / ``query_timestamps`` are accepted and not used."""
        B, T = check_sequence(x, self.dim, self.proj_p.weight)
        lengths = check_lengths(lengths, B, T, x.device)
        check_positions_fit(T - 1, self.num_positions, "x")
        x_hat = layer_norm(x)
        if packs_rows(self.backend, x.device, lengths, return_state):
            rows = pack_rows(lengths, T)
            y, s = self._forward_normed(x_hat[rows.valid][None], rows.positions, cu_seqlens=rows.cu_seqlens,
                                        output_final_state=True, backend=self.backend)
            y = unpack_rows(y, rows)
        else:
            y, s = self._forward_normed(x_hat, output_final_state=return_state, backend=self.backend,
                                        lengths=lengths if return_state else None)
            y = mask_padding(y, lengths)
        if not return_state:
            return y
        return y, LinearPositionalState(positional=s, position=final_positions(lengths, B, T, x.device))

    def step(
        self,
        x_t: torch.Tensor,
        state: LinearPositionalState,
        *,
        timestamps: Optional[torch.Tensor] = None,
        query_timestamps: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, LinearPositionalState]:
        """One new event per user at position ``state.position``: ``x_t (N, D)`` -> ``(y_t (N, D), state)``;
        ``state`` is advanced in place, O(1) in the history. Equals the last row of :meth:`forward` on the history
        plus this event. Inference only (no autograd graph)."""
        N = check_step_input(x_t, self.dim, self.proj_p.weight)
        check_state(state, LinearPositionalState, self._state_layout(N), x_t.device)
        check_positions_fit(state.position, self.num_positions, "a step")
        with torch.no_grad():
            v = F.linear(layer_norm(x_t), self.proj_p.weight)
            o = fused_block_step([positional_step_channel(self.table, v.view(N, 1, self.dim), state.position,
                                                          state.positional)], backend=self.backend, validate=False)
            y = self._augment(o, v)
            state.position.add_(1)
        return y, state

    def empty_state(self, num_users: int, device: Optional[torch.device] = None) -> LinearPositionalState:
        """All-zero state of ``num_users`` users who have seen nothing yet (steps from it equal a forward)."""
        w = self.proj_p.weight
        device = w.device if device is None else torch.device(device)
        return LinearPositionalState(
            positional=torch.zeros(num_users, 1, self.width, self.dim, dtype=state_dtype(w), device=device),
            position=torch.zeros(num_users, dtype=torch.int64, device=device))

    def _state_layout(self, N: int) -> tuple:
        return (("positional", (N, 1, self.width, self.dim), "float"), ("position", (N,), "int"))

    # ------------------------------------------------------------------ the channel
    def _qk_from_start(self, T: int, dtype: torch.dtype):
        """q, k of positions 0..T-1 ``(1, T, 1, P)``: the table's first T rows."""
        e = cast(self.table[:T], dtype).unsqueeze(0).unsqueeze(-2)
        return e, e / (self.width // 2)

    def _qk(self, positions: torch.Tensor, dtype: torch.dtype):
        e = self.table[positions].to(dtype).unsqueeze(-2)  # (..., 1, P)
        return e, e / (self.width // 2)

    def _forward_normed(
        self,
        x_hat: torch.Tensor,
        positions: Optional[torch.Tensor] = None,
        cu_seqlens: Optional[torch.Tensor] = None,
        output_final_state: bool = False,
        backend: str = "auto",
        lengths: Optional[torch.Tensor] = None,
        outputs: str = "all",
    ):
        """The channel on the normalised input ``x_hat: (B, T, D)`` (the block's, shared by its channels).
        ``positions: (1, T)`` int64 for packed input; None means 0..T-1 for every row.

        Returns ``(y: (B, T, D), state: (N, 1, P, D) | None)``; ``outputs="last"``: ``y (B, D)`` at each
        sequence's last token (``lengths``: right-padded rows, as in the retention channel).
        """
        T = x_hat.shape[1]
        if outputs == "last" and positions is None and uses_cpu_path(backend, x_hat.device, cu_seqlens):
            return self._last_from_inputs(x_hat, lengths, output_final_state)
        v = F.linear(x_hat, self.proj_p.weight).unsqueeze(-2)
        if positions is None and lengths is None and uses_cpu_path(backend, x_hat.device, cu_seqlens):
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
