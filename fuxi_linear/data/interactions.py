"""In-memory container for a preprocessed user-item interaction log.

An :class:`InteractionLog` is the common currency between the dataset loaders
(:mod:`fuxi_linear.data.loaders`), the synthetic generator
(:mod:`fuxi_linear.data.synthetic`) and the leave-one-out splitter
(:mod:`fuxi_linear.data.splits`).

Invariants (checked on construction):

* ``user_ids``, ``item_ids`` and ``timestamps`` are 1-D ``int64`` arrays of the
  same length ``E`` (number of events);
* users are dense ids ``0 .. num_users - 1``; items are dense ids
  ``1 .. num_items`` because id ``0`` is reserved for padding;
* events are sorted by ``(user, timestamp)``; among equal keys the original
  file order is kept (loaders sort stably with the file row as the last key),
  so "the event before" is well defined even for equal timestamps;
* ``user_offsets`` is a CSR-style ``(num_users + 1,)`` ``int64`` array: the
  events of user ``u`` are the half-open range
  ``[user_offsets[u], user_offsets[u + 1])``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..utils import atomic_write

__all__ = ["InteractionLog", "VALID_TIMESTAMP_UNITS"]

VALID_TIMESTAMP_UNITS: tuple[str, ...] = ("s", "ms")

# Bumped whenever the on-disk layout written by ``InteractionLog.save`` changes.
_FORMAT_VERSION = 1

# Raw integer ids up to this value are remapped with an O(E) bincount table;
# larger (or negative) ids fall back to np.unique, which sorts.
_MAX_TABLE_REMAP_ID = 1 << 26


def _as_int64_1d(name: str, value: object) -> np.ndarray:
    """Convert ``value`` to a contiguous 1-D int64 array, rejecting non-integers."""
    arr = np.asarray(value)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array, got shape {arr.shape}")
    if arr.size and not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"{name} must have an integer dtype, got {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _dense_remap(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Map arbitrary raw ids to dense ids ``0 .. K-1`` preserving sort order.

    Args:
        raw: ``(E,)`` array of raw ids (any integer dtype, or unicode strings).

    Returns:
        ``(dense, uniques)``: ``dense`` is ``(E,)`` int64 with
        ``uniques[dense] == raw``; ``uniques`` is the sorted ``(K,)`` array of
        distinct raw ids (same dtype as ``raw``).
    """
    if raw.size and np.issubdtype(raw.dtype, np.integer):
        lo = int(raw.min())
        hi = int(raw.max())
        if lo >= 0 and hi <= _MAX_TABLE_REMAP_ID:
            # Linear-time path; the common case for numeric dataset ids.
            present = np.bincount(raw, minlength=hi + 1) > 0
            table = np.cumsum(present, dtype=np.int64) - 1
            uniques = np.flatnonzero(present).astype(raw.dtype, copy=False)
            return table[raw], uniques
    uniques, dense = np.unique(raw, return_inverse=True)
    return dense.astype(np.int64, copy=False).reshape(-1), uniques


def _stable_order(users: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
    """Permutation sorting events by (user, timestamp, original position).

    Args:
        users: ``(E,)`` int64 dense user ids (``>= 0``).
        timestamps: ``(E,)`` int64.

    Returns:
        ``(E,)`` int64 permutation.
    """
    if users.size == 0:
        return np.zeros(0, dtype=np.int64)
    t_min = int(timestamps.min())
    span = int(timestamps.max()) - t_min + 1
    n_users = int(users.max()) + 1
    if span * n_users < (1 << 62):
        # One packed key + a stable sort is several times faster than lexsort
        # and keeps the file order for ties because the sort is stable.
        key = users * span + (timestamps - t_min)
        return np.argsort(key, kind="stable").astype(np.int64, copy=False)
    rows = np.arange(users.size, dtype=np.int64)
    return np.lexsort((rows, timestamps, users)).astype(np.int64, copy=False)


@dataclass(eq=False)
class InteractionLog:
    """Preprocessed interaction log sorted by (user, timestamp, file row).

    Attributes:
        user_ids: ``(E,)`` int64, dense user ids in ``[0, num_users)``.
        item_ids: ``(E,)`` int64, dense item ids in ``[1, num_items]``
            (0 is the padding id and never occurs here).
        timestamps: ``(E,)`` int64 in ``timestamp_unit``.
        num_users: number of users ``U``.
        num_items: number of items ``N`` (the item vocabulary has ``N + 1``
            rows including padding).
        timestamp_unit: ``"s"`` or ``"ms"``.
        name: free-form dataset name (used in logs / cache files).
        user_offsets: ``(U + 1,)`` int64 CSR offsets; computed when ``None``.
        user_raw_ids: optional ``(U,)`` array; ``user_raw_ids[u]`` is the id of
            user ``u`` in the source file (int64 or unicode strings).
        item_raw_ids: optional ``(N,)`` array; ``item_raw_ids[i - 1]`` is the
            source id of item ``i``.
    """

    user_ids: np.ndarray
    item_ids: np.ndarray
    timestamps: np.ndarray
    num_users: int
    num_items: int
    timestamp_unit: str = "s"
    name: str = ""
    user_offsets: np.ndarray | None = field(default=None)
    user_raw_ids: np.ndarray | None = field(default=None)
    item_raw_ids: np.ndarray | None = field(default=None)

    def __post_init__(self) -> None:
        self.user_ids = _as_int64_1d("user_ids", self.user_ids)
        self.item_ids = _as_int64_1d("item_ids", self.item_ids)
        self.timestamps = _as_int64_1d("timestamps", self.timestamps)
        n = self.user_ids.size
        if self.item_ids.size != n or self.timestamps.size != n:
            raise ValueError(
                "user_ids, item_ids and timestamps must have the same length, got "
                f"{n}, {self.item_ids.size}, {self.timestamps.size}"
            )
        for attr in ("num_users", "num_items"):
            value = getattr(self, attr)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise TypeError(f"{attr} must be a non-negative int, got {value!r}")
            setattr(self, attr, int(value))
        if self.timestamp_unit not in VALID_TIMESTAMP_UNITS:
            raise ValueError(
                f"timestamp_unit must be one of {VALID_TIMESTAMP_UNITS}, got {self.timestamp_unit!r}"
            )
        if not isinstance(self.name, str):
            raise TypeError(f"name must be a str, got {type(self.name).__name__}")
        if n:
            if self.user_ids.min() < 0 or self.user_ids.max() >= self.num_users:
                raise ValueError(f"user_ids must lie in [0, num_users={self.num_users})")
            if self.item_ids.min() < 1 or self.item_ids.max() > self.num_items:
                raise ValueError(
                    f"item_ids must lie in [1, num_items={self.num_items}] (0 is padding)"
                )
            du = np.diff(self.user_ids)
            dt = np.diff(self.timestamps)
            if np.any(du < 0) or np.any((du == 0) & (dt < 0)):
                raise ValueError("events must be sorted by (user_ids, timestamps)")
        counts = np.bincount(self.user_ids, minlength=self.num_users)
        expected = np.zeros(self.num_users + 1, dtype=np.int64)
        np.cumsum(counts, out=expected[1:])
        if self.user_offsets is None:
            self.user_offsets = expected
        else:
            offsets = _as_int64_1d("user_offsets", self.user_offsets)
            if offsets.shape != expected.shape or not np.array_equal(offsets, expected):
                raise ValueError(
                    "user_offsets must be the (num_users + 1,) CSR offsets of user_ids"
                )
            self.user_offsets = offsets
        if self.user_raw_ids is not None:
            self.user_raw_ids = np.asarray(self.user_raw_ids)
            if self.user_raw_ids.shape != (self.num_users,):
                raise ValueError(
                    f"user_raw_ids must have shape ({self.num_users},), got {self.user_raw_ids.shape}"
                )
        if self.item_raw_ids is not None:
            self.item_raw_ids = np.asarray(self.item_raw_ids)
            if self.item_raw_ids.shape != (self.num_items,):
                raise ValueError(
                    f"item_raw_ids must have shape ({self.num_items},), got {self.item_raw_ids.shape}"
                )

    # ------------------------------------------------------------------ build
    @classmethod
    def from_arrays(
        cls,
        user_ids: np.ndarray,
        item_ids: np.ndarray,
        timestamps: np.ndarray,
        *,
        timestamp_unit: str = "s",
        name: str = "",
    ) -> InteractionLog:
        """Build a log from raw, unsorted events given in file order.

        Args:
            user_ids: ``(E,)`` raw user ids, integer dtype or unicode strings.
            item_ids: ``(E,)`` raw item ids, integer dtype or unicode strings.
            timestamps: ``(E,)`` integer timestamps in ``timestamp_unit``.
            timestamp_unit: ``"s"`` or ``"ms"``.
            name: dataset name.

        Returns:
            A log with users remapped to ``0..U-1`` and items to ``1..N`` (both
            in ascending raw-id order) and events stably sorted by
            (user, timestamp); events with equal keys keep their input order.
        """
        users_raw = np.asarray(user_ids)
        items_raw = np.asarray(item_ids)
        for arg, arr in (("user_ids", users_raw), ("item_ids", items_raw)):
            if arr.ndim != 1:
                raise ValueError(f"{arg} must be a 1-D array, got shape {arr.shape}")
            if arr.size and not (
                np.issubdtype(arr.dtype, np.integer) or arr.dtype.kind == "U"
            ):
                raise TypeError(f"{arg} must hold integers or str, got dtype {arr.dtype}")
        ts = _as_int64_1d("timestamps", timestamps)
        if not (users_raw.size == items_raw.size == ts.size):
            raise ValueError(
                "user_ids, item_ids and timestamps must have the same length, got "
                f"{users_raw.size}, {items_raw.size}, {ts.size}"
            )
        users, user_uniques = _dense_remap(users_raw)
        items, item_uniques = _dense_remap(items_raw)
        order = _stable_order(users, ts)
        return cls(
            user_ids=users[order],
            item_ids=items[order] + 1,
            timestamps=ts[order],
            num_users=int(user_uniques.size),
            num_items=int(item_uniques.size),
            timestamp_unit=timestamp_unit,
            name=name,
            user_raw_ids=user_uniques,
            item_raw_ids=item_uniques,
        )

    # -------------------------------------------------------------- accessors
    @property
    def num_events(self) -> int:
        """Total number of events ``E``."""
        return int(self.user_ids.size)

    def __len__(self) -> int:
        return self.num_events

    @property
    def sequence_lengths(self) -> np.ndarray:
        """``(U,)`` int64 number of events per user."""
        assert self.user_offsets is not None
        return np.diff(self.user_offsets)

    def user_events(self, user: int) -> tuple[np.ndarray, np.ndarray]:
        """Return ``(item_ids, timestamps)`` of one user, each ``(n_u,)`` int64 views."""
        if not 0 <= user < self.num_users:
            raise ValueError(f"user must lie in [0, {self.num_users}), got {user}")
        assert self.user_offsets is not None
        lo, hi = int(self.user_offsets[user]), int(self.user_offsets[user + 1])
        return self.item_ids[lo:hi], self.timestamps[lo:hi]

    def summary(self) -> dict[str, float | int | str]:
        """Basic statistics (counts, sequence length quantiles, density)."""
        lengths = self.sequence_lengths
        stats: dict[str, float | int | str] = {
            "name": self.name,
            "num_users": self.num_users,
            "num_items": self.num_items,
            "num_events": self.num_events,
            "timestamp_unit": self.timestamp_unit,
        }
        if lengths.size:
            stats.update(
                mean_seq_len=float(lengths.mean()),
                median_seq_len=float(np.median(lengths)),
                max_seq_len=int(lengths.max()),
                min_seq_len=int(lengths.min()),
            )
        if self.num_users and self.num_items:
            stats["density"] = self.num_events / (self.num_users * self.num_items)
        return stats

    # ------------------------------------------------------------- filtering
    def _subset(self, keep: np.ndarray) -> InteractionLog:
        """Keep the events where ``keep`` is True and re-densify the ids.

        Both remaps are order preserving, so the (user, timestamp, file row)
        order survives without re-sorting.
        """
        users = self.user_ids[keep]
        items = self.item_ids[keep]
        user_present = np.bincount(users, minlength=self.num_users) > 0
        item_present = np.bincount(items, minlength=self.num_items + 1) > 0
        item_present[0] = False
        user_table = np.cumsum(user_present, dtype=np.int64) - 1
        # Items are 1-based: the first kept item maps to 1.
        item_table = np.cumsum(item_present, dtype=np.int64)
        return InteractionLog(
            user_ids=user_table[users],
            item_ids=item_table[items],
            timestamps=self.timestamps[keep],
            num_users=int(user_present.sum()),
            num_items=int(item_present.sum()),
            timestamp_unit=self.timestamp_unit,
            name=self.name,
            user_raw_ids=None if self.user_raw_ids is None else self.user_raw_ids[user_present],
            item_raw_ids=None
            if self.item_raw_ids is None
            else self.item_raw_ids[item_present[1:]],
        )

    def k_core(self, min_user: int, min_item: int) -> InteractionLog:
        """Iteratively drop users/items with too few events until stable.

        Removing a user can push an item below ``min_item`` and vice versa, so
        the filter repeats until a fixed point where every remaining user has
        ``>= min_user`` events and every remaining item ``>= min_item``.

        Args:
            min_user: minimum number of events per user (``>= 0``).
            min_item: minimum number of events per item (``>= 0``).

        Returns:
            A new, re-densified log (possibly empty).
        """
        for arg, value in (("min_user", min_user), ("min_item", min_item)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{arg} must be a non-negative int, got {value!r}")
        keep = np.ones(self.num_events, dtype=bool)
        while True:
            users = self.user_ids[keep]
            items = self.item_ids[keep]
            user_ok = np.bincount(users, minlength=self.num_users) >= min_user
            item_ok = np.bincount(items, minlength=self.num_items + 1) >= min_item
            ok = user_ok[users] & item_ok[items]
            if ok.all():
                break
            idx = np.flatnonzero(keep)
            keep[idx[~ok]] = False
        return self._subset(keep)

    def drop_short_users(self, min_events: int) -> tuple[InteractionLog, int]:
        """Drop users with fewer than ``min_events`` events (items are re-densified).

        Returns:
            ``(new_log, num_dropped_users)``.
        """
        if isinstance(min_events, bool) or not isinstance(min_events, (int, np.integer)) or min_events < 0:
            raise ValueError(f"min_events must be a non-negative int, got {min_events!r}")
        user_ok = self.sequence_lengths >= min_events
        dropped = int(self.num_users - user_ok.sum())
        return self._subset(user_ok[self.user_ids]), dropped

    # ------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the log to ``path`` as an uncompressed ``.npz`` (exact file name).

        The file is written to a temporary sibling first and renamed, so a
        crash never leaves a truncated file under ``path``.
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, np.ndarray] = {
            "format_version": np.array(_FORMAT_VERSION, dtype=np.int64),
            "user_ids": self.user_ids,
            "item_ids": self.item_ids,
            "timestamps": self.timestamps,
            "num_users": np.array(self.num_users, dtype=np.int64),
            "num_items": np.array(self.num_items, dtype=np.int64),
            "timestamp_unit": np.array(self.timestamp_unit),
            "name": np.array(self.name),
        }
        if self.user_raw_ids is not None:
            arrays["user_raw_ids"] = self.user_raw_ids
        if self.item_raw_ids is not None:
            arrays["item_raw_ids"] = self.item_raw_ids

        def write(tmp: Path) -> None:
            with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
                np.savez(fh, **arrays)

        atomic_write(path, write)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> InteractionLog:
        """Read a log written by :meth:`save` (no pickle is ever loaded)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"interaction log file not found: {path}")
        with np.load(path, allow_pickle=False) as data:
            try:
                version = int(data["format_version"])
            except KeyError as exc:
                raise ValueError(f"{path} is not an InteractionLog file") from exc
            if version != _FORMAT_VERSION:
                raise ValueError(
                    f"{path}: unsupported InteractionLog format version {version} "
                    f"(expected {_FORMAT_VERSION})"
                )
            return cls(
                user_ids=data["user_ids"],
                item_ids=data["item_ids"],
                timestamps=data["timestamps"],
                num_users=int(data["num_users"]),
                num_items=int(data["num_items"]),
                timestamp_unit=str(data["timestamp_unit"]),
                name=str(data["name"]),
                user_raw_ids=data["user_raw_ids"] if "user_raw_ids" in data.files else None,
                item_raw_ids=data["item_raw_ids"] if "item_raw_ids" in data.files else None,
            )
