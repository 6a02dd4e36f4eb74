"""A FuXi-Linear block's decode step on all of its channels at once: the operator, its CPU path and
dispatch.

Each channel is a scalar-decay linear attention (SPEC §1) with one new token per user; for user n, head h::

    S <- exp(g) S + k_scale * k^T v          (the state, in place)
    o  = scale * (q S)                       (the channel output)

``k_scale`` is the positional channel's ``1 / (P/2)`` on k (so q and k can be the same table row). What the
FuXi channels do after the operator (the retention heads' inclusive decay, the augmented outputs
``alpha o + beta v``) are per-column gains the block applies to all channel outputs at once.

:func:`fused_block_step` advances up to three channels (in the FuXi block: retention, temporal,
positional) and returns their outputs side by side, ``(N, sum_c H_c V_c)``: on a GPU one Triton launch
(``fuxi_linear.kernels.fused_block_step``) instead of one per channel; on a CPU
:func:`fused_block_step_cpu`, the same math in a few PyTorch calls per channel. The operator is not
differentiable (decode only: gradients go through the prefill forms).
"""
from __future__ import annotations

from typing import Optional, Sequence

import torch

from .backends import resolve_backend
from .dtypes import cast
from .step_channel import MAX_CHANNELS, StepChannel
from .validation import check_step_inputs
from .value_checks import ValueChecks, add_distinct_rows_check

__all__ = ["StepChannel", "fused_block_step", "fused_block_step_cpu", "advance_channel_cpu", "check_fused_step_inputs",
           "MAX_CHANNELS"]

def _check_float(name: str, value: object) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}")


def check_fused_step_inputs(
    channels: Sequence[StepChannel], state_indices: Optional[torch.Tensor] = None, check_values: bool = True
) -> None:
    """The rules of :func:`fuxi_linear.ops.decay_attention_step` for every channel, plus: 1 to
    :data:`MAX_CHANNELS` channels, one N, one v dtype and one device for all of them.

    ``check_values=False`` checks metadata only (no host synchronisation): ``state_indices`` must then be
    known to be in range and distinct. Otherwise their values are read back once, for all channels.
    """
    if isinstance(channels, StepChannel) or not isinstance(channels, (list, tuple)):
        raise TypeError(f"channels must be a list or tuple of StepChannel, got {type(channels).__name__}")
    if not 1 <= len(channels) <= MAX_CHANNELS:
        raise ValueError(f"a fused step takes 1 to {MAX_CHANNELS} channels, got {len(channels)}")
    for i, c in enumerate(channels):
        if not isinstance(c, StepChannel):
            raise TypeError(f"channels[{i}] must be a StepChannel, got {type(c).__name__}")
    first = channels[0].v
    for i, c in enumerate(channels[1:], 1):
        v = c.v
        if isinstance(v, torch.Tensor) and isinstance(first, torch.Tensor) and v.ndim == first.ndim == 3 and (
                v.shape[0] != first.shape[0] or v.dtype != first.dtype or v.device != first.device):
            raise ValueError(
                f"channels[{i}] has v {tuple(v.shape)} {v.dtype} on {v.device}; every channel must share N, the "
                f"dtype and the device of channels[0] ({tuple(first.shape)} {first.dtype} on {first.device})"
            )
    for i, c in enumerate(channels):
        try:
            check_step_inputs(c.q, c.k, c.v, c.state, c.g, c.g_gamma, c.scale, state_indices, check_values=False)
            _check_float("k_scale", c.k_scale)
            for name, t in (("q", c.q), ("k", c.k), ("state", c.state), ("g", c.g), ("g_gamma", c.g_gamma)):
                if t is not None and t.device != c.v.device:
                    raise ValueError(f"{name} must be on v's device {c.v.device}, got {t.device}")
        except (TypeError, ValueError) as err:
            raise type(err)(f"channels[{i}]: {err}") from None
    if state_indices is not None and check_values:
        pool_rows = min(c.state.shape[0] for c in channels)
        checks = ValueChecks()
        add_distinct_rows_check(checks, "state_indices", state_indices, pool_rows)
        checks.run("sync")


def advance_channel_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, state: torch.Tensor,
                        decay: Optional[torch.Tensor], k_scale: float = 1.0) -> torch.Tensor:
    """One channel's step on a CPU, on operands already laid out for broadcasting, in the state's dtype:
    ``q, k (N, H, K, 1)``, ``v (N, H, 1, V)``, ``state (N, H, K, V)`` (advanced in place) and ``decay = exp(g)``
    broadcastable to ``(N, H, 1, 1)`` (None: no decay). Returns ``q S`` ``(N, H, V)``.

    Four PyTorch calls (a CPU step is bound by their overhead, not by the arithmetic): the state is updated in
    place with ``mul_`` / ``addcmul_`` and ``q S`` is a broadcast product summed over K. :func:`_channel_step_cpu`
    and the FuXi block's CPU step (:func:`fuxi_linear.layers.block_step.block_step_cpu`, which lays the operands out
    once for all its channels) both advance their channels here."""
    if decay is not None:
        state.mul_(decay)
    state.addcmul_(k, v, value=k_scale)
    return (q * state).sum(2)


def _channel_step_cpu(c: StepChannel, rows: Optional[torch.Tensor]) -> torch.Tensor:
    """One channel: advances ``c.state`` in place, returns ``o: (N, H * V)`` in v's dtype."""
    state = c.state
    cdt = state.dtype
    N, H, K = c.q.shape
    V = c.v.shape[-1]
    q, k, v = cast(c.q, cdt), cast(c.k, cdt), cast(c.v, cdt)
    S = state if rows is None else state.index_select(0, rows)
    if c.g is not None:
        decay = torch.exp(cast(c.g, cdt)).view(N, H, 1, 1)
    elif c.g_gamma is not None:
        decay = torch.exp(cast(c.g_gamma, cdt)).view(H, 1, 1)
    else:
        decay = None
    o = advance_channel_cpu(q.view(N, H, K, 1), k.view(N, H, K, 1), v.view(N, H, 1, V), S, decay, c.k_scale)
    if rows is not None:
        state.index_copy_(0, rows, S)
    if c.scale != 1.0:
        o = o * c.scale
    return cast(o, c.v.dtype).view(N, H * V)


def fused_block_step_cpu(
    channels: Sequence[StepChannel], state_indices: Optional[torch.Tensor] = None, validate: bool = True
) -> torch.Tensor:
    """The fused step in PyTorch (the CPU path, ``backend="cpu"``, and the tests' oracle); see the module
    docstring.

    Returns ``(N, sum_c H_c V_c)`` in v's dtype: channel outputs ``(N, H_c * V_c)`` side by side, in order.
    """
    if validate:
        check_fused_step_inputs(channels, state_indices)
    rows = state_indices.long() if state_indices is not None else None
    if torch.is_grad_enabled():
        with torch.no_grad():
            outputs = [_channel_step_cpu(c, rows) for c in channels]
    else:
        outputs = [_channel_step_cpu(c, rows) for c in channels]
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)


def fused_block_step(
    channels: Sequence[StepChannel],
    state_indices: Optional[torch.Tensor] = None,
    backend: str = "auto",
    validate: bool = True,
) -> torch.Tensor:
    """Advance up to three decode channels of one block in place and return their outputs.

    Args:
        channels: 1 to 3 :class:`StepChannel` (one N, v dtype and device).
        state_indices: optional ``(N,)`` int32/int64 distinct rows of every channel's state pool.
        backend: ``"auto"`` (Triton on CUDA, the CPU path elsewhere), ``"triton"`` or ``"cpu"``.
        validate: check the inputs (:func:`check_fused_step_inputs`; reading ``state_indices`` back is one
            host synchronisation). ``False`` skips every check: for callers that guarantee their inputs.
    Returns:
        ``o: (N, sum_c H_c V_c)`` in v's dtype, channel c's ``(N, H_c, V_c)`` output flattened, in order.
    """
    device = channels[0].v.device if channels and isinstance(channels[0], StepChannel) else torch.device("cpu")
    backend = resolve_backend(backend, device)
    if validate:
        check_fused_step_inputs(channels, state_indices)
    if backend == "triton":
        from .triton_fused_block_step import fused_block_step_triton

        return fused_block_step_triton(channels, state_indices)
    return fused_block_step_cpu(channels, state_indices, validate=False)
