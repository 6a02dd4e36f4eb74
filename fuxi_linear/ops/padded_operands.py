"""The operator's inputs as the PyTorch forms compute them: the compute dtype, and packed sequences padded into
rows of their own (and the outputs packed back). Shared by the readable definition
(:mod:`fuxi_linear.ops.definition`) and the CPU path (:mod:`fuxi_linear.ops.cpu_decay_attention`).
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from .decay_plan import Output
from .dtypes import compute_dtype

__all__ = ["PaddedOperands", "pad_operands", "unpad_output"]


class PaddedOperands(NamedTuple):
    """Padded ``q, k: (N, T, H, K)``, ``v: (N, T, H, V)``, the decay (``g``, ``g_gamma``), ``h0``, all in the
    compute dtype; when the input was packed, ``index`` (the ``(seq_index, pos_index)`` pair that maps the
    packed rows back) and the sequence ``lengths (N,)`` (else None, None)."""

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    g: Optional[torch.Tensor]
    g_gamma: Optional[torch.Tensor]
    h0: Optional[torch.Tensor]
    index: Optional[Tuple[torch.Tensor, torch.Tensor]]
    lengths: Optional[torch.Tensor]


def pad_operands(q, k, v, g, g_gamma, initial_state, cu_seqlens, dense_decay=True) -> PaddedOperands:
    """Common normalisation: compute dtype, per-token log-decay, packed -> padded.

    ``dense_decay`` (the recurrent and parallel forms): q/k are broadcast to the batch and ``g`` is always a
    tensor ``(N or 1, T, H)`` (``g_gamma`` None); otherwise shared q/k keep batch 1 and a per-head or absent
    decay stays as it is.
    """
    B, T, H, _ = v.shape
    cdt = compute_dtype(v.dtype)
    q, k, v = q.to(cdt), k.to(cdt), v.to(cdt)
    if g is not None:
        g = g.to(cdt)
    if g_gamma is not None:
        g_gamma = g_gamma.to(cdt)
    if dense_decay:
        # A decay shared by all sequences keeps batch size 1, so the decay tensors are built once, not per sequence.
        if g is None:
            g = g_gamma.view(1, 1, H).expand(1, T, H) if g_gamma is not None else v.new_zeros(1, T, H)
        g_gamma = None
        if q.shape[0] != B:  # shared q/k: broadcast as a view, autograd sums the gradient over the batch
            q = q.expand(B, *q.shape[1:])
            k = k.expand(B, *k.shape[1:])
    h0 = initial_state.to(cdt) if initial_state is not None else None
    if cu_seqlens is None:
        return PaddedOperands(q, k, v, g, g_gamma, h0, None, None)
    # Pad each packed segment into its own row; padding is k = v = 0 and g = 0 (decay 1), so a row's state
    # after its padding equals its state at its last real token.
    cu = cu_seqlens.to(device=v.device, dtype=torch.long)
    lengths = cu[1:] - cu[:-1]
    N, Tmax = lengths.numel(), int(lengths.max())
    seq_index = torch.repeat_interleave(torch.arange(N, device=v.device), lengths)
    pos_index = torch.arange(T, device=v.device) - cu[:-1][seq_index]

    def pad(x):
        if x is None:
            return None
        out = x.new_zeros(N, Tmax, *x.shape[2:])
        return out.index_put((seq_index, pos_index), x[0])

    return PaddedOperands(pad(q), pad(k), pad(v), pad(g), g_gamma, h0, (seq_index, pos_index), lengths)


def unpad_output(o, final_state, index, out_dtype, output_final_state) -> Output:
    """``(o, final_state or None)`` with ``o`` packed back (when ``index`` is given) and in ``out_dtype``."""
    if index is not None:
        o = o[index].unsqueeze(0)
    o = o.to(out_dtype)
    return o, (final_state if output_final_state else None)
