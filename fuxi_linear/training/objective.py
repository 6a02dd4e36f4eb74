"""The training objective as one module: encode the batch, then the sampled-softmax *sum* over the predicted
positions with negatives that are a function of the example, not of a random stream.

Why a sum and example-keyed negatives: a data-parallel step must equal one process stepping on the whole global
batch. Each rank therefore returns ``(sum of its positions' losses, number of its positions)`` and the training
loop divides by the global number of positions (ranks hold different numbers of valid positions, so averaging
per-rank means would weight them wrongly). The negatives of position ``t`` of example ``e`` at epoch ``p`` are a
hash of ``(seed, p, e, t, k)`` (:func:`example_keys`, :func:`hashed_negatives`), so whichever rank holds ``e``
draws the same ones as a single process would, on any device.
"""
from __future__ import annotations

import contextlib
from typing import Tuple

import torch
import torch.nn as nn

from ..embedding_scoring_loss import next_item_targets, sampled_softmax_loss

_MASK32 = 0xFFFFFFFF


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """``(x * c) mod 2^32`` for int64 ``x`` in ``[0, 2^32)`` without int64 overflow (16-bit halves)."""
    return ((x & 0xFFFF) * c + ((((x >> 16) * c) & 0xFFFF) << 16)) & _MASK32


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer finaliser (xorshift-multiply, the "lowbias32" constants) on int64 tensors."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


def example_keys(seed: int, epoch: int, example_ids: torch.Tensor) -> torch.Tensor:
    """32-bit keys ``(B,)`` int64 of the training examples ``example_ids (B,)`` (global dataset indices) at
    ``epoch``: the per-example part of the negatives' hash, computed outside the (compiled) forward so that
    the epoch never becomes a compile-time constant."""
    h = _mix32(torch.full_like(example_ids, (int(seed) ^ 0x5BD1E995) & _MASK32, dtype=torch.int64))
    h = _mix32(h ^ (int(epoch) & _MASK32))
    return _mix32(h ^ (example_ids.long() & _MASK32))


def hashed_negatives(keys: torch.Tensor, positions: torch.Tensor, num_negatives: int, num_items: int) -> torch.Tensor:
    """Uniform-looking negatives ``(M, K)`` int64 in ``[1, num_items]``, a pure function of the inputs.

    Args:
        keys: ``(M,)`` int64 :func:`example_keys` of each row's example.
        positions: ``(M,)`` int64 position of the row inside its example.
        num_negatives: K. num_items: N.
    The modulo bias is below ``N / 2^32`` (negligible for catalogues far below 4e9 items).
    """
    if keys.shape != positions.shape or keys.ndim != 1:
        raise ValueError(f"keys and positions must be (M,) of one shape, got {tuple(keys.shape)} and "
                         f"{tuple(positions.shape)}")
    h = _mix32(keys ^ (positions.long() & _MASK32))
    k = torch.arange(num_negatives, device=keys.device, dtype=torch.int64)
    h = _mix32(_mul32(h[:, None] ^ k[None, :], 0x9E3779B1) ^ k[None, :])
    return h % num_items + 1


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class SampledSoftmaxObjective(nn.Module):
    """``forward(batch tensors) -> (loss sum, number of predicted positions)`` for any recommender here.

    The encoder runs under ``autocast`` (bf16 when ``autocast_dtype`` is set; the master weights stay float32
    and the operator keeps its states in float32); the scores and the loss are computed in (at least) float32
    with autocast off, since bf16 logits divided by tau = 0.05 would carry errors of ~0.1.

    Args:
        model: a recommender with ``encode``, ``item_vectors`` and ``config`` (num_items, num_negatives,
            temperature).
        autocast_dtype: None (full precision) or ``torch.bfloat16``.
    """

    def __init__(self, model: nn.Module, autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.model = model
        self.autocast_dtype = autocast_dtype

    def _autocast(self, device: torch.device, enabled: bool):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=self.autocast_dtype, enabled=enabled)

    def forward(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor,
        lengths: torch.Tensor,
        query_timestamps: torch.Tensor,
        target_ids: torch.Tensor,
        keys: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """``item_ids, timestamps (B, T)``, ``lengths, query_timestamps, target_ids (B,)`` int64 and the
        examples' :func:`example_keys` ``keys (B,)``.

        Returns ``(loss_sum: () float32, count: () int64)``: position i predicts item i+1, the last event
        predicts ``target_ids``.
        """
        device = item_ids.device
        with self._autocast(device, True):
            users = self.model.encode(item_ids, timestamps, lengths, query_timestamps)
        cfg = self.model.config
        targets = next_item_targets(item_ids, lengths, target_ids, cfg.num_items)
        mask = targets != 0
        rows, cols = mask.nonzero(as_tuple=True)
        negatives = hashed_negatives(keys[rows], cols, cfg.num_negatives, cfg.num_items)
        with self._autocast(device, False):
            # the same row-major order as mask-indexing, without computing the nonzeros twice more
            loss_sum = sampled_softmax_loss(_at_least_fp32(users[rows, cols]), targets[rows, cols],
                                            _at_least_fp32(self.model.item_vectors()),
                                            cfg.num_negatives, cfg.temperature, negative_ids=negatives,
                                            reduction="sum")
        return loss_sum, mask.sum()
