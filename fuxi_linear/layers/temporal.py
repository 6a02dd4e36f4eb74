"""Temporal retention (SPEC §3) as a layer: ``(B, T, D)`` and int64 timestamps in, ``(B, T, D)`` out, with an
O(1) step.

Its query, key and decay come from the timestamps (:mod:`fuxi_linear.layers.temporal_encoding`; in a decode
step :mod:`fuxi_linear.layers.temporal_step`); the layer owns the value projection and the ``alpha o + beta v``
output, and runs the operator on them (on the CPU path, as the paired heads of
:class:`~fuxi_linear.layers.temporal_encoding.PairedHeadsPlan`).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..derived_cache import inference_cache
from ..ops.backends import check_backend
from ..ops.channel_prefill import last_tokens, prefill_decay_attention, without_autocast
from ..ops.dtypes import cast
from ..ops.fused_block_step import fused_block_step
from ..utils import check_int
from .layer_inputs import (check_lengths, check_sequence, check_state, check_step_input, check_times,
                           final_positions, last_times, mask_padding, pack_rows, packs_rows, state_dtype,
                           unpack_rows)
from .norms import layer_norm
from .states import TemporalRetentionState
from .temporal_encoding import PairedHeadsPlan, TemporalEncoding, TemporalFeatures, resolve_periods
from .temporal_step import temporal_step_channel, temporal_step_constants, temporal_step_features

__all__ = ["TemporalRetention"]


def _pair_outputs(query: torch.Tensor, Z: torch.Tensor) -> torch.Tensor:
    """Each head's output ``sum_k q[k, r] Z[k, r, :]`` from its pair's state-valued sum ``Z (..., 2 x 2 x w)``
    (key dim, head of the pair, value) and the repeated queries of :class:`PairedHeadsPlan` -> ``(..., 2 x w)``."""
    P = query * Z
    half = P.shape[-1] // 2
    return P[..., :half] + P[..., half:]


class TemporalRetention(nn.Module):
    """Temporal retention (SPEC §3) as a layer: ``(B, T, D)`` and int64 times in, ``(B, T, D)`` out.

    ``v = W_v LN(x)`` split into 2Ht heads of width D / 2Ht; heads m and Ht + m score ``sin`` and ``cos`` of
    ``omega_m (t_{i+1} - t_j)``, the phase difference between event i's query time (the next event's time;
    ``query_timestamps`` after a row's last event) and event j's time, weighted by the decay
    ``gamma_m^(omega_m (t_{i+1} - t_j))`` from the time gaps (``gamma = sigmoid(b)``); the output is
    ``y_h = alpha_h o_h + beta_h v_h`` (``skip=True``, the released ``aug_current``) or ``y_h = o_h``
    (``skip=False``: no ``alpha``/``beta`` parameters, the released ML-20M configuration). Periods
    ``omega_m = 2 pi / T_m`` are in the timestamps' unit; phases and gaps are taken in int64.

    Args:
        dim: D (divisible by 2 x num_periods).
        num_periods: Ht (default: the most periods up to 8 that divide D into 2Ht heads).
        periods: explicit int periods in the timestamps' unit (instead of the ``timestamp_unit`` rule).
        timestamp_unit: ``"s"`` (periods 16^0 .. 16^(Ht-1) s) or ``"ms"`` (2^10, 2^13, ... ms), SPEC §3.
        learn_decay: learn ``b`` (init N(0, 0.02)); False: ``b = 0``, gamma = 0.5 (a buffer).
        skip: the ``alpha o + beta v`` output. max_log_decay: clamp of a gap's log-decay.
        backend: ``"auto"``, ``"triton"`` or ``"cpu"`` (as :class:`~fuxi_linear.layers.Retention`).

    Parameters: ``encoding`` (:class:`TemporalEncoding`: the periods and ``b``), ``proj_v`` (D -> D, no bias),
    ``alpha (2Ht)`` N(0, 0.02), ``beta (2Ht)`` ones. Decode state: :class:`TemporalRetentionState`,
    ``2Ht x 2 x D / 2Ht`` plus the last event time per user.

    Inside :class:`~fuxi_linear.FuXiLinear` the query, key and decay depend only on the timestamps and ``b``, so
    the model owns one encoding and its blocks' channels have none (SPEC §3: computed once per forward).
    """

    def __init__(self, dim: int, num_periods: Optional[int] = None, *, periods: Optional[Sequence[int]] = None,
                 timestamp_unit: str = "s", learn_decay: bool = True, skip: bool = True,
                 max_log_decay: float = 20.0, backend: str = "auto"):
        super().__init__()
        check_int("dim", dim)
        resolved = resolve_periods(dim, num_periods, periods, timestamp_unit)
        self._init_channel(dim, int(resolved.numel()), skip, backend)
        if not isinstance(learn_decay, bool):
            raise TypeError(f"learn_decay must be a bool, got {learn_decay!r}")
        self.encoding = TemporalEncoding(resolved, learn_decay, max_log_decay)

    @classmethod
    def _channel_of_block(cls, dim: int, num_periods: int, skip: bool, backend: str) -> "TemporalRetention":
        """The channel of a block whose temporal operands come from elsewhere (FuXiLinear's one encoding): no
        encoding of its own."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._init_channel(dim, num_periods, skip, backend)
        return layer

    def _init_channel(self, dim: int, num_periods: int, skip: bool, backend: str) -> None:
        check_int("num_periods", num_periods)
        if dim % (2 * num_periods):
            raise ValueError(f"dim={dim} must be divisible by 2 * num_periods={2 * num_periods}")
        if not isinstance(skip, bool):
            raise TypeError(f"skip must be a bool, got {skip!r}")
        self.dim, self.num_periods = dim, num_periods
        self.num_heads = 2 * num_periods
        self.skip = skip
        self.backend = check_backend(backend)
        self.register_module("encoding", None)
        self.proj_v = nn.Linear(dim, dim, bias=False)
        if self.skip:
            self.alpha = nn.Parameter(torch.randn(self.num_heads) * 0.02)
            self.beta = nn.Parameter(torch.ones(self.num_heads))
        else:  # registered as None so that the attributes exist and the state dict has no entries for them
            self.register_parameter("alpha", None)
            self.register_parameter("beta", None)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_periods={self.num_periods}, skip={self.skip}"

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
        """``x (B, T, D)``, ``timestamps (B, T)`` int64, ``query_timestamps (B,)`` int64 (the time of the request
        after each row's last event) -> ``y (B, T, D)``, or ``(y, TemporalRetentionState)`` with
        ``return_state``.

        Event i's query time is event i + 1's time. ``lengths (B,)``: right-padded rows (timestamps past a
        row's length are ignored, ``y`` is zero there, the state is taken at ``lengths - 1``). Decreasing
        times are legal: a negative gap clamps to 0 (no decay).
        """
        encoding = self._require_encoding()
        B, T = check_sequence(x, self.dim, self.proj_v.weight)
        timestamps, query_timestamps = check_times(timestamps, query_timestamps, (B, T), x.device,
                                                   "TemporalRetention")
        lengths = check_lengths(lengths, B, T, x.device)
        x_hat = layer_norm(x)
        if packs_rows(self.backend, x.device, lengths, return_state):
            rows = pack_rows(lengths, T)
            feats = encoding(timestamps, lengths, query_timestamps).select_rows(rows.valid)
            y, s = self._forward_features(x_hat[rows.valid][None], feats, cu_seqlens=rows.cu_seqlens,
                                          output_final_state=True, backend=self.backend)
            y = unpack_rows(y, rows)
        else:
            full = lengths if lengths is not None else torch.full((B,), T, dtype=torch.int64, device=x.device)
            feats = encoding.prefill_features(timestamps, full, query_timestamps, x_hat.dtype, self.backend,
                                              ends=lengths if return_state else None, final_state=return_state,
                                              ragged=lengths is not None, head_width=self.dim // self.num_heads)
            y, s = self._forward_features(x_hat, feats, output_final_state=return_state, backend=self.backend,
                                          lengths=lengths if return_state else None)
            y = mask_padding(y, lengths)
        if not return_state:
            return y
        return y, TemporalRetentionState(temporal=s, last_timestamp=last_times(timestamps, lengths),
                                         position=final_positions(lengths, B, T, x.device))

    def step(
        self,
        x_t: torch.Tensor,
        state: TemporalRetentionState,
        *,
        timestamps: Optional[torch.Tensor] = None,
        query_timestamps: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, TemporalRetentionState]:
        """One new event per user: ``x_t (N, D)``, its time ``timestamps (N,)`` int64 and the time of the
        request after it ``query_timestamps (N,)`` int64 -> ``(y_t (N, D), state)``; ``state`` is advanced in
        place, O(1) in the history (the decay from the previous event uses ``state.last_timestamp``). Equals the
        last row of :meth:`forward` on the history plus this event. Inference only (no autograd graph)."""
        encoding = self._require_encoding()
        N = check_step_input(x_t, self.dim, self.proj_v.weight)
        timestamps, query_timestamps = check_times(timestamps, query_timestamps, (N,), x_t.device,
                                                   "TemporalRetention.step")
        check_state(state, TemporalRetentionState, self._state_layout(N), x_t.device)
        with torch.no_grad():
            v = self._values(layer_norm(x_t))  # (N, 2Ht, w)
            feats = temporal_step_features(temporal_step_constants(encoding), state.last_timestamp, timestamps,
                                           query_timestamps, v.dtype)
            o = fused_block_step([temporal_step_channel(v, feats, state.temporal)], backend=self.backend,
                                 validate=False)
            y = self._augment(o.view_as(v), v)
            state.last_timestamp.copy_(timestamps)
            state.position.add_(1)
        return y, state

    def empty_state(self, num_users: int, device: Optional[torch.device] = None) -> TemporalRetentionState:
        """All-zero state of ``num_users`` users who have seen nothing yet (their first step's gap decays the
        zero state only, so steps from it equal a forward)."""
        w = self.proj_v.weight
        device = w.device if device is None else torch.device(device)
        zeros = torch.zeros(num_users, dtype=torch.int64, device=device)
        return TemporalRetentionState(
            temporal=torch.zeros(num_users, self.num_heads, 2, self.dim // self.num_heads, dtype=state_dtype(w),
                                 device=device),
            last_timestamp=zeros, position=zeros.clone())

    def _state_layout(self, N: int) -> tuple:
        return (("temporal", (N, self.num_heads, 2, self.dim // self.num_heads), "float"),
                ("last_timestamp", (N,), "int"), ("position", (N,), "int"))

    def _require_encoding(self) -> "TemporalEncoding":
        if self.encoding is None:
            raise RuntimeError("this TemporalRetention is a channel of a FuXiLinear block, whose temporal operands "
                               "the model computes once for all blocks; call the model, or build a "
                               "TemporalRetention(dim, num_periods) of its own")
        return self.encoding

    # ------------------------------------------------------------------ the channel
    def zero_state(self, num_sequences: int, like: torch.Tensor) -> torch.Tensor:
        """An all-zero state ``(N, 2Ht, 2, D / 2Ht)`` on ``like``'s device: float64 for a float64 layer, float32
        otherwise (the dtype of the other channels' states, so that the model's states stack)."""
        dim = self.proj_v.weight.shape[0]
        return torch.zeros(num_sequences, self.num_heads, 2, dim // self.num_heads, device=like.device,
                           dtype=state_dtype(self.proj_v.weight))

    def _values(self, x_hat: torch.Tensor) -> torch.Tensor:
        return F.linear(x_hat, self.proj_v.weight).unflatten(-1, (self.num_heads, -1))

    def _augment(self, o: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """``alpha_h o_h + beta_h v_h`` (``o_h`` without the skip connection) for ``o, v (..., 2Ht, w)``, flattened
        to ``(..., D)``."""
        if not self.skip:
            return o.flatten(-2)
        if o.dtype == v.dtype == self.alpha.dtype:
            # alpha, beta repeated over w: a CPU is several times slower at broadcasting a (2Ht, 1) weight
            alpha, beta = inference_cache(self, "augment", (self.alpha, self.beta), (v.shape[-1],), lambda: (
                self.alpha.unsqueeze(-1).repeat(1, v.shape[-1]), self.beta.unsqueeze(-1).repeat(1, v.shape[-1])))
            return torch.addcmul(beta * v, alpha, o).flatten(-2)
        alpha, beta = self.alpha.unsqueeze(-1), self.beta.unsqueeze(-1)
        return (alpha.to(o.dtype) * o + beta.to(v.dtype) * v).flatten(-2)

    def _forward_features(
        self,
        x_hat: torch.Tensor,
        feats: TemporalFeatures,
        cu_seqlens: Optional[torch.Tensor] = None,
        output_final_state: bool = False,
        backend: str = "auto",
        lengths: Optional[torch.Tensor] = None,
        outputs: str = "all",
    ):
        """The channel on the block's normalised input with the shared temporal operands: ``x_hat: (B, T, D)``,
        features ``(B, T, 2Ht, ...)`` (or a :class:`PairedHeadsPlan`) -> ``(y: (B, T, D), state | None)``;
        ``outputs="last"``: ``y (B, D)`` at each sequence's last token (``lengths``: right-padded rows)."""
        if feats.plan is not None and outputs == "last":
            return self._last_from_inputs(x_hat, feats.plan, lengths, output_final_state)
        v = self._values(x_hat)
        if feats.plan is not None:
            o, state = self._paired_heads(v, feats, output_final_state, outputs, lengths)
        else:
            o, state = prefill_decay_attention(
                feats.q.to(v.dtype), feats.k.to(v.dtype), v, g=feats.g, lengths=lengths, cu_seqlens=cu_seqlens,
                output_final_state=output_final_state, outputs=outputs, backend=backend,
            )
        if outputs == "last":
            v = last_tokens(v, lengths, cu_seqlens)
        return self._augment(o, v), state

    @without_autocast
    def _paired_heads(self, v, feats: TemporalFeatures, output_final_state, outputs, lengths):
        """The operator on the plan of :meth:`TemporalEncoding.prepare`: heads m and Ht + m share key and decay,
        so ``o_{r Ht + m, t} = q_{r Ht + m, t} . Z_{m, t}[:, r]`` with ``Z_m = sum_s exp(G_t - G_s) k_s (x)
        [v_m, v_{Ht + m}]_s``: ``v (B, T, 2Ht, w)`` -> ``(o, state (B, 2Ht, 2, w) | None)`` as the operator."""
        Ht, w = self.num_heads // 2, v.shape[-1]
        B, T = v.shape[:2]
        plan = feats.plan
        pairs = v.unflatten(2, (2, Ht)).permute(0, 3, 1, 2, 4).reshape(B, Ht, T, 2 * w)  # [v_m, v_Ht+m]
        k = plan.key
        U = torch.cat([k[..., :1] * pairs, k[..., 1:] * pairs], dim=-1)  # (B, Ht, T, 2 x 2 x w): k (x) pair
        Z, S = plan.decay.apply(U, output_final_state=output_final_state, outputs=outputs, head_major=True)
        if outputs == "all":  # (B, Ht, T, 2 heads, w) -> (B, T, 2Ht, w)
            o = _pair_outputs(plan.query, Z).unflatten(-1, (2, w)).permute(0, 2, 3, 1, 4).flatten(2, 3)
        else:
            o = _pair_outputs(plan.last_query, Z).unflatten(-1, (2, w)).transpose(1, 2).flatten(1, 2)
        if S is not None:  # (B, Ht, 1, 2 x 2 x w) -> per head (B, 2Ht, 2, w)
            S = S.squeeze(2).unflatten(-1, (2, 2, w)).permute(0, 3, 1, 2, 4).flatten(1, 2)
        return (o if o.dtype == v.dtype else o.to(v.dtype)), S

    @without_autocast
    def _last_from_inputs(self, x_hat, plan: PairedHeadsPlan, lengths, output_final_state):
        """``outputs="last"`` on the CPU path: as the value projection is linear, each pair's final state
        ``sum_s w_s k_s (x) [v_m, v_Ht+m]_s`` is ``(sum_s w_s k_s (x) x_hat_s)`` times the pair's rows of W_v,
        built from the inputs in one product instead of projecting every event."""
        Ht, D = self.num_heads // 2, x_hat.shape[-1]
        w = D // self.num_heads
        cdt = plan.key.dtype
        Zx = (plan.final_key @ cast(x_hat, cdt)).unflatten(1, (Ht, 2))  # (B, Ht, 2, D)
        W = inference_cache(self, "pair_weights", (self.proj_v.weight,), (cdt,), lambda: cast(
            self.proj_v.weight, cdt).view(2, Ht, w, D).permute(1, 3, 0, 2).reshape(Ht, D, 2 * w))
        Z = (Zx @ W).flatten(-2)  # (B, Ht, 2 (key dim) x 2 heads x w): the state is the output at the last event
        o = _pair_outputs(plan.last_query, Z).unflatten(-1, (2, w)).transpose(1, 2).flatten(1, 2)  # (B, 2Ht, w)
        v_last = self._values(last_tokens(x_hat, lengths))
        y = self._augment(cast(o, v_last.dtype), v_last)
        state = Z.unflatten(-1, (2, 2, w)).permute(0, 3, 1, 2, 4).flatten(1, 2) if output_final_state else None
        return y, state
