"""Time features of the time-aware baselines (SPEC §9): HSTU's logarithmic time buckets and the query time of
each position."""
from __future__ import annotations

import torch

#: Base of HSTU's logarithmic time buckets: ``floor(ln(max(|dt|, 1)) / TIME_BUCKET_LOG_BASE)`` (SPEC §9).
TIME_BUCKET_LOG_BASE = 0.301


def time_bucket(delta: torch.Tensor, max_bucket: int = 128) -> torch.Tensor:
    """HSTU's logarithmic time bucket ``floor(ln(max(|delta|, 1)) / 0.301)`` clamped to ``[0, max_bucket]``.

    ``delta`` is an int64 tensor of time differences (any shape, any unit). The absolute value and the
    clamp stay in int64 (an epoch-scale difference does not fit a float32 exactly, though its log does);
    the log is taken in float32 — enough, since only its integer part after /0.301 is kept. Returns int64,
    same shape. Examples: 0 or ±1 -> 0, 10 -> 7, 3600 -> 27, 10**12 -> 91, 2**62 -> max_bucket.
    """
    if not isinstance(delta, torch.Tensor) or delta.dtype != torch.int64:
        raise TypeError(f"delta must be an int64 tensor, got {getattr(delta, 'dtype', type(delta).__name__)}")
    # abs() of INT64_MIN overflows to itself: clamp(min=1) then maps it to bucket 0 instead of a crash.
    mag = delta.abs().clamp(min=1).to(torch.float32)
    return torch.floor(torch.log(mag) / TIME_BUCKET_LOG_BASE).clamp(0, max_bucket).long()


def query_times(timestamps: torch.Tensor, lengths: torch.Tensor, query_timestamps: torch.Tensor) -> torch.Tensor:
    """Time each position queries at, ``(B, T)`` int64: the NEXT event's time ``t_{i+1}``, and the request
    time ``query_timestamps[b]`` for a user's last event (and, harmlessly, for padding).

    This is HSTU's convention (its time bias compares the following event's time with each key's) and
    SPEC §3's for FuXi-Linear: the representation at event i is the one used to predict event i+1, so it
    should know when event i+1 happens. In ``step`` the new event's query time is the caller's
    ``query_timestamps``, so decode equals encode when each step's query time is the next event's time.
    """
    B, T = timestamps.shape
    qt = torch.cat([timestamps[:, 1:], query_timestamps[:, None]], dim=1)
    return qt.scatter(1, (lengths.long() - 1)[:, None], query_timestamps[:, None])
