"""The whole model's decode step as one pure tensor function, :func:`decode_step`.

:meth:`fuxi_linear.FuXiLinear.step` checks its inputs, reads the parameter-derived operands from the step
caches (:class:`ModelStepOperands`) and calls :func:`decode_step`: eagerly, or compiled
(:mod:`fuxi_linear.decoding.compiled_step`). Everything the step reads is an argument, every size comes from a shape,
and nothing inside looks at tensor values on the host or keeps Python-side state, so ``torch.compile``
traces it as one graph (on a CPU, inductor fuses the layer norms, SiLU, the gates and the state updates into
a handful of C++ loops around the matrix products).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn.functional as F

from ..embedding_scoring_loss import l2_normalize
from ..layers.block_step import StepWeights, block_step, block_step_cpu
from ..layers.temporal_step import TemporalStepConstants, temporal_cpu_operands, temporal_step_features
from ..ops.backends import resolve_backend

__all__ = ["ModelStepOperands", "decode_step"]


class ModelStepOperands(NamedTuple):
    """What a decode step reads besides the events and the states.

    ``item_table (num_items + 1, D)`` and ``position_table (Nabs, D)``: the input layer's embeddings;
    ``temporal``: the temporal encoding's :class:`~fuxi_linear.layers.temporal_step.TemporalStepConstants` (None:
    the temporal channel is switched off); ``blocks``: each block's
    :class:`~fuxi_linear.layers.block_step.StepWeights`, in order.
    """

    item_table: torch.Tensor
    position_table: torch.Tensor
    temporal: Optional[TemporalStepConstants]
    blocks: Tuple[StepWeights, ...]


def decode_step(
    operands: ModelStepOperands,
    item_ids: torch.Tensor,
    timestamps: torch.Tensor,
    query_timestamps: torch.Tensor,
    retention: torch.Tensor,
    temporal: torch.Tensor,
    positional: torch.Tensor,
    last_timestamp: torch.Tensor,
    position: torch.Tensor,
    state_indices: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> torch.Tensor:
    """One event per user through every block; the states are advanced in place.

    Args:
        operands: :class:`ModelStepOperands` of the model.
        item_ids: ``(N,)`` int64 (or int32) real items; timestamps, query_timestamps: ``(N,)`` int64.
        retention, temporal, positional: the state pools of a :class:`~fuxi_linear.DecodeState`,
            ``(L, P, ...)``; last_timestamp, position: its ``(P,)`` int64 counters.
        state_indices: ``(N,)`` int64 distinct rows of the pools; None: row n is user n (N = P).
        backend: the fused step operator's backend (:func:`fuxi_linear.ops.fused_block_step`).
    Returns:
        ``(N, D)`` L2-normalised user vectors.

    Nothing is validated (:meth:`fuxi_linear.FuXiLinear.check_step` is the caller's business).
    """
    rows = state_indices
    if rows is None:
        positions, last = position, last_timestamp
    else:
        positions, last = position.index_select(0, rows), last_timestamp.index_select(0, rows)
    D = operands.item_table.shape[1]
    # the input layer at real items (no padding)
    x = torch.add(F.embedding(positions, operands.position_table), F.embedding(item_ids, operands.item_table),
                  alpha=math.sqrt(D))
    feats = (None if operands.temporal is None else
             temporal_step_features(operands.temporal, last, timestamps, query_timestamps, x.dtype))
    if resolve_backend(backend, x.device) == "cpu":
        # the CPU path: the users' rows of every block's states gathered (and written back) once, the temporal
        # operands laid out once for all blocks
        pools = (retention, temporal, positional)
        states = pools if rows is None else tuple(pool.index_select(1, rows) for pool in pools)
        ops = None if feats is None else temporal_cpu_operands(feats, retention.dtype)
        for i, weights in enumerate(operands.blocks):
            x = block_step_cpu(x, weights, ops, positions, (states[0][i], states[1][i], states[2][i]))
        if rows is not None:
            for pool, s in zip(pools, states):
                pool.index_copy_(1, rows, s)
    else:
        for i, weights in enumerate(operands.blocks):
            x = block_step(x, weights, feats, positions, (retention[i], temporal[i], positional[i]), rows, backend)
    if rows is None:
        last_timestamp.copy_(timestamps)
        position.add_(1)
    else:
        last_timestamp.index_copy_(0, rows, timestamps)
        position.index_copy_(0, rows, positions + 1)
    return l2_normalize(x)
