"""Semantic retention channel (SPEC §2): per-head scalar decay on the block's q, k, v."""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn as nn

from ..ops.fused_block_step import StepChannel
from ..ops.prefill import cast, compute_dtype, prefill_decay_attention, uses_plan, without_autocast
from ..ops.decay_plan import HeadDecay, prepare_decay_attention
from ..derived_cache import inference_cache


class RetentionChannel(nn.Module):
    """``o_i = sum_{j<=i} d_h^(i-j+1) (q_i . k_j) v_j`` with ``d_h = exp(-r_h)``,
    ``r_h = exp(-sum_{m<=h} softplus(a_m))`` (strictly decreasing over heads).

    Runs on the operator with ``g_gamma = -r`` and ``q <- d * q`` (the inclusive decay of SPEC §1).
    Decode state: ``(N, H, dqk, dv)`` float32.
    """

    def __init__(self, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.decay_logits = nn.Parameter(torch.randn(num_heads) * 0.02)  # "a" of SPEC §2

    def rates(self) -> torch.Tensor:
        """Per-step decay rates ``r: (H,)`` (so the per-step decay is ``exp(-r)``)."""
        a = self.decay_logits
        a = a if a.dtype == torch.float64 else a.float()  # half-precision models still get float32 decays
        return torch.exp(-torch.cumsum(nn.functional.softplus(a), 0))

    def forward(
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
        """``q, k: (B, T, H, dqk)``, ``v: (B, T, H, dv)`` -> ``(o: (B, T, H, dv), state: (N, H, dqk, dv) | None)``.

        ``lengths (B,)``: right-padded rows (final states at ``lengths - 1``); ``outputs="last"``: ``o (B, H, dv)``
        at each sequence's last token only (see :func:`fuxi_linear.ops.prefill.prefill_decay_attention`); on the
        CPU path ``q`` may then hold the last tokens' queries only, ``(B, H, dqk)``.
        """
        T = k.shape[1]
        if uses_plan(backend, v.device, cu_seqlens):  # the decay factors depend on the parameters and T only
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
