"""Semantic retention (SPEC §2): per-head scalar decay, as a layer ``(B, T, D) -> (B, T, D)`` with an O(1) step."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..derived_cache import inference_cache
from ..ops.backends import check_backend
from ..ops.channel_prefill import prefill_decay_attention, uses_cpu_path, without_autocast
from ..ops.decay_plan import HeadDecay, prepare_decay_attention
from ..ops.dtypes import cast, compute_dtype
from ..ops.fused_block_step import fused_block_step
from ..ops.step_channel import StepChannel
from ..utils import check_int
from .layer_inputs import (check_lengths, check_sequence, check_state, check_step_input, final_positions,
                           mask_padding, pack_rows, packs_rows, state_dtype, unpack_rows)
from .norms import layer_norm
from .projection import ProjectionLayout
from .states import RetentionState


class Retention(nn.Module):
    """Gated multi-head retention with the FuXi decay (SPEC §2), a drop-in for attention on ``(B, T, D)``.

    ``x_hat = LN(x)``; ``[u, q, k, v] = SiLU(x_hat W_uvqk)`` (``u, v: D``, ``q, k: H x dqk``); per head
    ``o_i = sum_{j<=i} d_h^(i-j+1) (q_i . k_j) v_j`` with ``d_h = exp(-r_h)``, ``r_h = exp(-sum_{m<=h}
    softplus(a_m))`` (strictly decreasing over heads: about 1/2, 1/4, 1/8, ... at init); ``y = W_o (u * LN(o))``.
    No residual: the caller adds it (``x + retention(x)``).

    Args:
        dim: D, the width of ``x`` and ``y``.
        num_heads: H; the value width of a head is D / H.
        qk_dim: dqk, the width of q and k per head (default D / H).
        backend: ``"auto"`` (Triton kernels for CUDA tensors, the PyTorch CPU path otherwise), ``"triton"``
            or ``"cpu"`` (``"reference"``, the former name of ``"cpu"``, is deprecated).

    Parameters: ``uvqk (D, 2D + 2 H dqk)`` (stored (in, out)), ``decay_logits (H,)`` (``a``), ``out_proj``
    (D -> D, no bias); all N(0, 0.02). Decode state: :class:`RetentionState`, ``H x dqk x dv`` per user.

    Inside :class:`~fuxi_linear.layers.FuXiLinearBlock` the block projects q, k and v with its own fused
    ``u | q | k | v`` matrix (the released model's layout) and gates and mixes all three channels: there this
    module holds only the decay and runs the operator.
    """

    def __init__(self, dim: int, num_heads: int, qk_dim: Optional[int] = None, *, backend: str = "auto"):
        super().__init__()
        self._init_channel(dim, num_heads, qk_dim, backend)
        self.uvqk_layout = ProjectionLayout.of_retention(dim, self.num_heads, self.qk_dim)
        self.uvqk = nn.Parameter(torch.randn(dim, self.uvqk_layout.width) * 0.02)
        self.out_proj = nn.Linear(dim, dim, bias=False)
        nn.init.normal_(self.out_proj.weight, std=0.02)

    @classmethod
    def _channel_of_block(cls, dim: int, num_heads: int, qk_dim: Optional[int], backend: str) -> "Retention":
        """The channel inside a :class:`~fuxi_linear.layers.FuXiLinearBlock`: the decay only (the block owns the
        projections and the gate)."""
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer._init_channel(dim, num_heads, qk_dim, backend)
        layer.register_parameter("uvqk", None)
        layer.register_module("out_proj", None)
        return layer

    def _init_channel(self, dim: int, num_heads: int, qk_dim: Optional[int], backend: str) -> None:
        check_int("dim", dim)
        check_int("num_heads", num_heads)
        check_int("qk_dim", qk_dim, allow_none=True)
        if dim % num_heads:
            raise ValueError(f"dim={dim} must be divisible by num_heads={num_heads}")
        self.dim, self.num_heads = dim, num_heads
        self.qk_dim = dim // num_heads if qk_dim is None else qk_dim
        self.backend = check_backend(backend, stacklevel=3)
        self.decay_logits = nn.Parameter(torch.randn(num_heads) * 0.02)  # "a" of SPEC §2

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, qk_dim={self.qk_dim}"

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
        """``x (B, T, D)`` -> ``y (B, T, D)`` in x's dtype, or ``(y, RetentionState)`` with ``return_state``.

        ``lengths (B,)`` int64: right-padded rows (``y`` is zero past a row's length; its state is taken at
        ``lengths - 1``). ``timestamps`` / ``query_timestamps`` are accepted for a uniform call and not used.
        """
        self._require_projections()
        B, T = check_sequence(x, self.dim, self.uvqk)
        lengths = check_lengths(lengths, B, T, x.device)
        u, q, k, v = self._project(layer_norm(x))
        if packs_rows(self.backend, x.device, lengths, return_state):
            rows = pack_rows(lengths, T)
            o, s = self._attend(q[rows.valid][None], k[rows.valid][None], v[rows.valid][None],
                                cu_seqlens=rows.cu_seqlens, output_final_state=True, backend=self.backend)
            o = unpack_rows(o, rows)
        else:
            o, s = self._attend(q, k, v, output_final_state=return_state, backend=self.backend, lengths=lengths)
        y = mask_padding(self._output(u, o.flatten(-2)), lengths)
        if not return_state:
            return y
        return y, RetentionState(retention=s, position=final_positions(lengths, B, T, x.device))

    def step(
        self,
        x_t: torch.Tensor,
        state: RetentionState,
        *,
        timestamps: Optional[torch.Tensor] = None,
        query_timestamps: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, RetentionState]:
        """One new event per user: ``x_t (N, D)`` -> ``(y_t (N, D), state)``; ``state`` (N users) is advanced in
        place, O(1) in the history. Equals the last row of :meth:`forward` on the history plus this event.
        Inference only: no autograd graph is recorded (train with :meth:`forward`)."""
        self._require_projections()
        N = check_step_input(x_t, self.dim, self.uvqk)
        check_state(state, RetentionState, self._state_layout(N), x_t.device)
        with torch.no_grad():
            u, q, k, v = self._project(layer_norm(x_t))
            g_gamma, d = self.step_decay()
            q = q * cast(d, q.dtype).unsqueeze(-1)  # the inclusive decay, as in the prefill
            o = fused_block_step([retention_step_channel(q, k, v, state.retention, g_gamma)],
                                 backend=self.backend, validate=False)
            y = self._output(u, o)
            state.position.add_(1)
        return y, state

    def empty_state(self, num_users: int, device: Optional[torch.device] = None) -> RetentionState:
        """All-zero state of ``num_users`` users who have seen nothing yet (steps from it equal a forward)."""
        w = self.decay_logits
        device = w.device if device is None else torch.device(device)
        H, K, V = self.num_heads, self.qk_dim, self.dim // self.num_heads
        return RetentionState(retention=torch.zeros(num_users, H, K, V, dtype=state_dtype(w), device=device),
                              position=torch.zeros(num_users, dtype=torch.int64, device=device))

    def _state_layout(self, N: int) -> tuple:
        H, K, V = self.num_heads, self.qk_dim, self.dim // self.num_heads
        return (("retention", (N, H, K, V), "float"), ("position", (N,), "int"))

    def _require_projections(self) -> None:
        if self.uvqk is None:
            raise RuntimeError("this Retention is the channel of a FuXiLinearBlock (the block projects its q, k, "
                               "v); call the block, or build a Retention(dim, num_heads) of its own")

    def _project(self, x_hat: torch.Tensor):
        """``x_hat (..., D)`` -> ``u (..., D)``, ``q, k (..., H, dqk)``, ``v (..., H, D / H)``."""
        return self.uvqk_layout.split(F.silu(x_hat @ cast(self.uvqk, x_hat.dtype)))

    def _output(self, u: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        """``W_o (u * LN(o))`` for ``u, o (..., D)``."""
        return self.out_proj(u * layer_norm(o))

    # ------------------------------------------------------------------ the channel
    def rates(self) -> torch.Tensor:
        """Per-step decay rates ``r: (H,)`` (so the per-step decay is ``exp(-r)``)."""
        a = self.decay_logits
        a = a if a.dtype == torch.float64 else a.float()  # half-precision models still get float32 decays
        return torch.exp(-torch.cumsum(nn.functional.softplus(a), 0))

    def _attend(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        cu_seqlens: Optional[torch.Tensor] = None,
        output_final_state: bool = False,
        backend: str = "auto",
        lengths: Optional[torch.Tensor] = None,
        outputs: str = "all",
    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """The channel on projected heads: ``q, k: (B, T, H, dqk)``, ``v: (B, T, H, dv)`` -> ``(o: (B, T, H, dv),
        state: (N, H, dqk, dv) | None)``.

        ``lengths (B,)``: right-padded rows (final states at ``lengths - 1``); ``outputs="last"``: ``o (B, H, dv)``
        at each sequence's last token only (see :func:`fuxi_linear.ops.channel_prefill.prefill_decay_attention`); on the
        CPU path ``q`` may then hold the last tokens' queries only, ``(B, H, dqk)``.
        """
        T = k.shape[1]
        if uses_cpu_path(backend, v.device, cu_seqlens):  # the decay factors depend on the parameters and T only
            cdt = compute_dtype(v.dtype)
            d, decay = inference_cache(self, "decay", (self.decay_logits,), (T, q.shape[-1], cdt, v.device),
                                       lambda: self._decays(T, q.shape[-1], cdt))
        else:
            d, decay = self._decays(T, q.shape[-1], None)
        q = q * cast(d, q.dtype)
        if q.dim() == 3:  # last-token queries: the output is q . S with S the final state
            return self._last_from_queries(q, k, v, decay, lengths, output_final_state)
        return prefill_decay_attention(q, k, v, g_gamma=decay, lengths=lengths, cu_seqlens=cu_seqlens,
                                       output_final_state=output_final_state, outputs=outputs, backend=backend)

    @without_autocast
    def _last_from_queries(self, q, k, v, decay, lengths, output_final_state):
        """CPU path, ``outputs="last"`` with the last tokens' queries ``q (B, H, dqk)`` (already decayed):
        ``o = q . S`` with S each sequence's final state."""
        cdt = compute_dtype(v.dtype)
        k = cast(k, cdt)
        plan = prepare_decay_attention(k, k, g_gamma=decay, lengths=lengths, all_outputs=False,
                                       final_state=True, value_dim=v.shape[-1])  # reads k only
        _, S = plan.apply(cast(v, cdt), output_final_state=True, outputs="none")
        o = (cast(q, cdt).unsqueeze(-2) @ S).squeeze(-2)
        return cast(o, v.dtype), (S if output_final_state else None)

    def _decays(self, T: int, K: int, cdt: Optional[torch.dtype]):
        """Per-step decay ``d = exp(-r)`` (repeated over the key width: ``(H, K)``) and the log-decay ``-r``: as a
        :class:`HeadDecay` over T tokens for the CPU path (compute dtype ``cdt``), as a tensor otherwise (``cdt``
        None)."""
        log_decay = -self.rates()
        # d repeated over the key width K, (H, K): broadcasting a (H, 1) factor is several times slower on a CPU
        d = torch.exp(log_decay).unsqueeze(-1).repeat(1, K)
        return d, (log_decay if cdt is None else HeadDecay(log_decay, T, cdt))

    def step_decay(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(g_gamma = -r, d = exp(-r))``, both ``(H,)``: the operator's per-head log-decay and the inclusive
        decay folded into q (the decode step's operands, cached by :meth:`fuxi_linear.FuXiLinear.step_operands`)."""
        r = self.rates()
        return -r, torch.exp(-r)


def retention_step_channel(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor,
                           g_gamma: torch.Tensor) -> StepChannel:
    """The retention channel as a fused-decode-step channel: ``q, k (N, H, dqk)``, ``v (N, H, dv)``, the state
    pool ``(P, H, dqk, dv)`` and the heads' log-decay ``g_gamma (H,)``."""
    return StepChannel(q, k, v, state, g_gamma=g_gamma)
