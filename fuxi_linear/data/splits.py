"""Leave-one-out train / validation / test splits over an :class:`InteractionLog`.

For a user with events ``e_0 .. e_{n-1}`` (sorted by time, ties in file order):

* ``test``: target ``e_{n-1}``; history = the most recent ``max_seq_len``
  events of ``e_0 .. e_{n-2}``; query timestamp ``t_{n-1}``.
* ``valid`` (``mode="3way"`` only): target ``e_{n-2}``; history from
  ``e_0 .. e_{n-3}``.
* ``train``: the train part is ``e_0 .. e_{n-3}`` (3way) or ``e_0 .. e_{n-2}``
  (2way). Its most recent ``max_seq_len + 1`` events form the window: the
  first ``<= max_seq_len`` are the input, the last one is ``target_ids`` and
  ``train_targets`` is the input shifted by one (next-item targets at every
  position). With ``train_stride`` more windows, ending ``train_stride``
  events apart, are added so long histories are fully used.

Every example is therefore "the events in ``[start, target)``" plus the
target event ``target`` (global event indices into the log); history never
contains the target or anything after it, also when timestamps tie.

Users with fewer than 3 (3way) / 2 (2way) events are dropped from all splits;
their number is reported in :attr:`LeaveOneOutSplits.num_dropped_users` and in
a ``UserWarning``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Dict, Union

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .interactions import InteractionLog

__all__ = [
    "LeaveOneOutSplits",
    "SequenceDataset",
    "collate_batch",
    "leave_one_out",
    "make_loader",
]

Example = Dict[str, Union[np.ndarray, int]]


class SequenceDataset(Dataset):
    """Next-item examples ``(history window, target)`` drawn from one log.

    Example ``i`` uses the log events ``[starts[i], targets[i])`` as input and
    event ``targets[i]`` as the target (global event indices, all of one user).

    ``__getitem__`` returns a dict of numpy values:

    * ``item_ids``: ``(L,)`` int64 input items, oldest first (``1 <= L``);
    * ``timestamps``: ``(L,)`` int64;
    * ``train_targets``: ``(L,)`` int64, the item that follows each input
      position (the last one equals ``target_id``);
    * ``target_id``, ``query_timestamp``, ``user_id``: ints;
    * ``history_ids``: ``(H,)`` int64 sorted distinct items of *all* the
      user's events before the target (not only the window), for excluding
      already-seen items at evaluation time.
    """

    def __init__(
        self,
        log: InteractionLog,
        starts: np.ndarray,
        targets: np.ndarray,
        split: str = "",
    ) -> None:
        starts = np.asarray(starts, dtype=np.int64)
        targets = np.asarray(targets, dtype=np.int64)
        if starts.shape != targets.shape or starts.ndim != 1:
            raise ValueError(
                f"starts and targets must be 1-D arrays of equal length, got {starts.shape} and {targets.shape}"
            )
        if starts.size:
            if np.any(starts >= targets):
                raise ValueError("every example needs at least one input event (starts < targets)")
            if starts.min() < 0 or targets.max() >= log.num_events:
                raise ValueError("starts/targets must be valid event indices of log")
            if np.any(log.user_ids[starts] != log.user_ids[targets]):
                raise ValueError("an example's window and target must belong to the same user")
        self.log = log
        self.starts = starts
        self.targets = targets
        self.split = split

    def __len__(self) -> int:
        return int(self.targets.size)

    @property
    def lengths(self) -> np.ndarray:
        """``(len(self),)`` int64 input length of every example."""
        return self.targets - self.starts

    @property
    def user_ids(self) -> np.ndarray:
        """``(len(self),)`` int64 user of every example."""
        return self.log.user_ids[self.targets]

    def __getitem__(self, index: int) -> Example:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        lo = int(self.starts[index])
        hi = int(self.targets[index])
        log = self.log
        user = int(log.user_ids[hi])
        assert log.user_offsets is not None
        first = int(log.user_offsets[user])
        return {
            "item_ids": log.item_ids[lo:hi],
            "timestamps": log.timestamps[lo:hi],
            "train_targets": log.item_ids[lo + 1 : hi + 1],
            "target_id": int(log.item_ids[hi]),
            "query_timestamp": int(log.timestamps[hi]),
            "user_id": user,
            "history_ids": np.unique(log.item_ids[first:hi]),
        }


def collate_batch(examples: Sequence[Example]) -> dict[str, torch.Tensor]:
    """Pad a list of :class:`SequenceDataset` examples into a batch.

    Right-pads with 0 to the longest sequence of the batch ``T`` (and the
    longest seen-item list ``H``).

    Returns:
        dict of int64 tensors: ``item_ids (B, T)``, ``timestamps (B, T)``,
        ``train_targets (B, T)`` (0 at padding), ``lengths (B,)``,
        ``query_timestamps (B,)``, ``target_ids (B,)``, ``user_ids (B,)``,
        ``history_ids (B, H)`` (0-padded; 0 is the padding item, which
        evaluation never ranks anyway).
    """
    if len(examples) == 0:
        raise ValueError("examples must be a non-empty sequence")
    b = len(examples)
    lengths = np.array([len(ex["item_ids"]) for ex in examples], dtype=np.int64)
    t_max = max(1, int(lengths.max()))
    h_max = max(1, max(len(ex["history_ids"]) for ex in examples))
    item_ids = np.zeros((b, t_max), dtype=np.int64)
    timestamps = np.zeros((b, t_max), dtype=np.int64)
    train_targets = np.zeros((b, t_max), dtype=np.int64)
    history_ids = np.zeros((b, h_max), dtype=np.int64)
    for row, ex in enumerate(examples):
        n = int(lengths[row])
        item_ids[row, :n] = ex["item_ids"]
        timestamps[row, :n] = ex["timestamps"]
        train_targets[row, :n] = ex["train_targets"]
        hist = ex["history_ids"]
        history_ids[row, : len(hist)] = hist
    return {
        "item_ids": torch.from_numpy(item_ids),
        "timestamps": torch.from_numpy(timestamps),
        "train_targets": torch.from_numpy(train_targets),
        "lengths": torch.from_numpy(lengths),
        "query_timestamps": torch.tensor([ex["query_timestamp"] for ex in examples], dtype=torch.int64),
        "target_ids": torch.tensor([ex["target_id"] for ex in examples], dtype=torch.int64),
        "user_ids": torch.tensor([ex["user_id"] for ex in examples], dtype=torch.int64),
        "history_ids": torch.from_numpy(history_ids),
    }


@dataclass
class LeaveOneOutSplits:
    """Result of :func:`leave_one_out`.

    Attributes:
        train, valid, test: the datasets (``valid`` is None for 2way).
        mode: ``"3way"`` or ``"2way"``.
        max_seq_len: maximum input length ``L``.
        num_items: catalogue size (item ids ``1..num_items``).
        num_dropped_users: users with too few events, absent from all splits.
        num_users_without_train: kept users whose train part has a single
            event (so no train example; they still appear in valid/test).
    """

    train: SequenceDataset
    valid: SequenceDataset | None
    test: SequenceDataset
    mode: str
    max_seq_len: int
    num_items: int
    num_dropped_users: int
    num_users_without_train: int


def _windows(
    first: np.ndarray, end: np.ndarray, max_seq_len: int, stride: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Train windows of segments ``[first, end)`` (per user).

    The target of the latest window is ``end - 1``; with ``stride`` further
    targets at ``end - 1 - stride, end - 1 - 2 * stride, ...`` while at least
    one input event precedes them. Each input starts ``max_seq_len`` events
    before its target (clipped at ``first``).

    Returns:
        ``(starts, targets)`` int64 arrays.
    """
    valid = end - first >= 2
    first, end = first[valid], end[valid]
    last_target = end - 1
    if stride is None:
        targets = last_target
        firsts = first
    else:
        # Targets must be >= first + 1; count windows per user.
        counts = (last_target - (first + 1)) // stride + 1
        owner = np.repeat(np.arange(counts.size), counts)
        # Position of each window inside its user's run: 0, 1, 2, ...
        run_start = np.cumsum(counts) - counts
        rank = np.arange(owner.size) - run_start[owner]
        targets = last_target[owner] - rank * stride
        firsts = first[owner]
    starts = np.maximum(firsts, targets - max_seq_len)
    return starts.astype(np.int64), targets.astype(np.int64)


def leave_one_out(
    log: InteractionLog,
    max_seq_len: int,
    mode: str = "3way",
    *,
    train_stride: int | None = None,
) -> LeaveOneOutSplits:
    """Build leave-one-out splits (see the module docstring for the exact windows).

    Args:
        log: the interaction log.
        max_seq_len: maximum number of input events per example (``>= 1``).
        mode: ``"3way"`` (train / valid / test) or ``"2way"`` (train / test).
        train_stride: None for one training window per user (the most recent
            ``max_seq_len + 1`` events of the train part); an int ``>= 1`` adds
            windows whose targets are ``train_stride`` events apart
            (``train_stride = max_seq_len`` tiles the whole train part).

    Returns:
        :class:`LeaveOneOutSplits`.
    """
    if not isinstance(log, InteractionLog):
        raise TypeError(f"log must be an InteractionLog, got {type(log).__name__}")
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, (int, np.integer)) or max_seq_len < 1:
        raise ValueError(f"max_seq_len must be an int >= 1, got {max_seq_len!r}")
    max_seq_len = int(max_seq_len)
    if mode not in ("3way", "2way"):
        raise ValueError(f"mode must be '3way' or '2way', got {mode!r}")
    if train_stride is not None and (
        isinstance(train_stride, bool) or not isinstance(train_stride, (int, np.integer)) or train_stride < 1
    ):
        raise ValueError(f"train_stride must be None or an int >= 1, got {train_stride!r}")

    held_out = 2 if mode == "3way" else 1
    min_events = held_out + 1
    assert log.user_offsets is not None
    first = log.user_offsets[:-1]
    end = log.user_offsets[1:]
    kept = (end - first) >= min_events
    num_dropped = int(log.num_users - kept.sum())
    if num_dropped:
        warnings.warn(
            f"leave_one_out({mode}): dropped {num_dropped} of {log.num_users} users with "
            f"fewer than {min_events} events",
            UserWarning,
            stacklevel=2,
        )
    first = first[kept]
    end = end[kept]

    test_targets = end - 1
    test = SequenceDataset(
        log, np.maximum(first, test_targets - max_seq_len), test_targets, split="test"
    )
    valid: SequenceDataset | None = None
    if mode == "3way":
        valid_targets = end - 2
        valid = SequenceDataset(
            log, np.maximum(first, valid_targets - max_seq_len), valid_targets, split="valid"
        )
    train_end = end - held_out
    starts, targets = _windows(first, train_end, max_seq_len, None if train_stride is None else int(train_stride))
    train = SequenceDataset(log, starts, targets, split="train")
    return LeaveOneOutSplits(
        train=train,
        valid=valid,
        test=test,
        mode=mode,
        max_seq_len=max_seq_len,
        num_items=log.num_items,
        num_dropped_users=num_dropped,
        num_users_without_train=int(np.sum(train_end - first < 2)),
    )


def make_loader(
    dataset: SequenceDataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader:
    """A ``DataLoader`` over ``dataset`` using :func:`collate_batch`.

    ``seed`` fixes the shuffling order (a private ``torch.Generator``), so two
    loaders with the same seed yield identical batches.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
    generator = None
    if seed is not None:
        generator = torch.Generator()
        generator.manual_seed(int(seed))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        drop_last=drop_last,
        num_workers=num_workers,
        collate_fn=collate_batch,
        generator=generator,
    )
