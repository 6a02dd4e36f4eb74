"""The most-popular baseline: rank every item by its number of training interactions."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch

from ..data.splits import LeaveOneOutSplits, make_loader
from .metrics import evaluate_full_ranking


def training_item_counts(splits: LeaveOneOutSplits) -> torch.Tensor:
    """Interactions per item ``(num_items + 1,)`` float64 over the events that training may see.

    That is every event before each kept user's held-out targets (the training windows' full history), so
    the validation and test targets never count.
    """
    train = splits.train
    log = train.log
    counts = np.zeros(splits.num_items + 1, dtype=np.float64)
    held_out = 2 if splits.mode == "3way" else 1
    test_targets = splits.test.targets
    user_first = log.user_offsets[log.user_ids[test_targets]]
    for first, last in zip(user_first, test_targets - (held_out - 1)):
        np.add.at(counts, log.item_ids[first:last], 1.0)
    counts[0] = -np.inf  # padding never ranks
    return torch.from_numpy(counts)


def most_popular_metrics(splits: LeaveOneOutSplits, split: str = "test", batch_size: int = 512,
                         exclude_history: bool | str = True, mrr_cap: Optional[int] = None) -> Dict[str, float]:
    """Full-ranking metrics of the most-popular recommender on ``split`` ("test" or "valid")."""
    dataset = splits.test if split == "test" else splits.valid
    if dataset is None:
        raise ValueError(f"split {split!r} is not available in a {splits.mode} split")
    counts = training_item_counts(splits)
    # a popularity ranking is a dot product of a constant user vector with one-dimensional item "embeddings"
    items = counts.clamp(min=-1e300)[:, None]
    ones = lambda batch: torch.ones(batch["target_ids"].shape[0], 1, dtype=torch.float64)  # noqa: E731
    return evaluate_full_ranking(ones, items, make_loader(dataset, batch_size), exclude_history=exclude_history,
                                 mrr_cap=mrr_cap)
