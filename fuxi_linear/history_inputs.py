"""Checks of the model's history inputs (item ids, int64 timestamps, lengths), with clear messages."""
from __future__ import annotations

from typing import Optional

import torch

from .ops.value_checks import ValueChecks
from .utils import INT_DTYPES


def _tensor(name: str, x: object, ndim: int, shape_doc: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_doc}, got {type(x).__name__}")
    if x.ndim != ndim:
        raise ValueError(f"{name} must have shape {shape_doc}, got {tuple(x.shape)}")
    return x


def check_item_ids(name: str, item_ids: object, ndim: int, num_items: int, shape_doc: str,
                   check_values: bool = True) -> torch.Tensor:
    x = _tensor(name, item_ids, ndim, shape_doc)
    if x.dtype not in INT_DTYPES:
        raise TypeError(f"{name} must be an int64 (or int32) tensor, got {x.dtype}")
    if check_values and x.numel() and (int(x.min()) < 0 or int(x.max()) > num_items):
        raise ValueError(f"{name} must lie in [0, num_items={num_items}] (0 = padding), "
                         f"got values in [{int(x.min())}, {int(x.max())}]")
    return x


def check_timestamps(name: str, timestamps: object, shape: tuple, shape_doc: str) -> torch.Tensor:
    x = _tensor(name, timestamps, len(shape), shape_doc)
    if x.dtype != torch.int64:
        raise TypeError(
            f"{name} must be int64 (seconds or milliseconds since the epoch; float32 cannot hold them exactly), "
            f"got {x.dtype}"
        )
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {shape_doc}={tuple(shape)}, got {tuple(x.shape)}")
    return x


def _value_ranges(*tensors: torch.Tensor) -> list:
    """``[min, max]`` of each non-empty int tensor as Python ints, with one device read for all of them."""
    return torch.stack([v for x in tensors for v in torch.aminmax(x)]).tolist()


def check_history(item_ids, timestamps, lengths, query_timestamps, num_items: int, max_positions: int) -> tuple:
    """Padded histories: ``item_ids (B, T)``, ``timestamps (B, T)`` int64, ``lengths (B,)`` in [1, T],
    ``query_timestamps (B,)`` int64; T at most ``max_positions``. Returns the shortest and the longest length."""
    x = _tensor("item_ids", item_ids, 2, "(B, T)")
    if x.dtype not in INT_DTYPES:
        raise TypeError(f"item_ids must be an int64 (or int32) tensor, got {x.dtype}")
    B, T = item_ids.shape
    if B == 0 or T == 0:
        raise ValueError(f"item_ids must be non-empty (B, T), got {tuple(item_ids.shape)}")
    check_timestamps("timestamps", timestamps, (B, T), "(B, T)")
    check_timestamps("query_timestamps", query_timestamps, (B,), "(B,)")
    lengths = _tensor("lengths", lengths, 1, "(B,)")
    if lengths.dtype not in INT_DTYPES:
        raise TypeError(f"lengths must be an int64 (or int32) tensor, got {lengths.dtype}")
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"lengths must have shape (B,)=({B},), got {tuple(lengths.shape)}")
    devices = {t.device for t in (item_ids, timestamps, lengths, query_timestamps)}
    if len(devices) != 1:
        raise ValueError(f"item_ids, timestamps, lengths and query_timestamps must be on one device, got {devices}")
    lo, hi, shortest, longest = _value_ranges(item_ids, lengths)
    if lo < 0 or hi > num_items:
        raise ValueError(f"item_ids must lie in [0, num_items={num_items}] (0 = padding), got values in [{lo}, {hi}]")
    if shortest < 1 or longest > T:
        raise ValueError(f"lengths must lie in [1, T={T}], got values in [{shortest}, {longest}]")
    if longest > max_positions:
        raise ValueError(
            f"histories of {longest} events exceed the model's position tables ({max_positions} positions); "
            f"truncate to the most recent events or build the model with a larger max_seq_len"
        )
    return shortest, longest


def check_step_events(item_ids, timestamps, query_timestamps, num_users: int, num_items: int, holder: str,
                      device: torch.device, checks: Optional[ValueChecks] = None) -> None:
    """One new event per user for a decode step: ``item_ids (N,)`` real items (no padding),
    ``timestamps (N,)`` and ``query_timestamps (N,)`` int64, all on ``device``; ``holder`` names what holds the
    N users ("state", "cache") in messages.

    Shapes, dtypes and devices are checked on the host at once. The one value check (item ids in
    ``[1, num_items]``) is added to ``checks`` when given, for the caller to settle with its other value checks
    (:class:`fuxi_linear.ops.value_checks.ValueChecks`: one host synchronisation, or none); otherwise it is
    read back here.
    """
    N = num_users
    check_item_ids("item_ids", item_ids, 1, num_items, "(N,)", check_values=False)
    if tuple(item_ids.shape) != (N,):
        raise ValueError(f"item_ids must have shape (N,)=({N},) for a {holder} of {N} users, got {tuple(item_ids.shape)}")
    check_timestamps("timestamps", timestamps, (N,), "(N,)")
    check_timestamps("query_timestamps", query_timestamps, (N,), "(N,)")
    devices = {t.device for t in (item_ids, timestamps, query_timestamps)} | {device}
    if len(devices) != 1:
        raise ValueError(f"item_ids, timestamps, query_timestamps and the {holder} must be on one device, got {devices}")
    batch = ValueChecks() if checks is None else checks
    add_step_item_check(batch, item_ids, num_items)
    if checks is None:
        batch.run("sync")


def add_step_item_check(checks: ValueChecks, item_ids: torch.Tensor, num_items: int) -> None:
    """Add "``item_ids (N,)`` are real items in [1, num_items]" to a batch of value checks."""
    if item_ids.numel() == 0:
        return
    low, high = torch.aminmax(item_ids)

    def message(values) -> str:
        low, high = values
        if low < 0 or high > num_items:
            return (f"item_ids must lie in [0, num_items={num_items}] (0 = padding), "
                    f"got values in [{low}, {high}]")
        return "item_ids of a decode step must be real items in [1, num_items], got padding id 0"

    checks.add([low, high], 1, num_items, message,
               f"item_ids of a decode step must be real items in [1, num_items={num_items}]")
