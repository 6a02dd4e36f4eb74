"""Learning-rate warm-up and early stopping of a training run (both pure functions of the run's history, so a
resumed run and every data-parallel rank take the same decisions)."""
from __future__ import annotations

from typing import Any, Dict, Optional


def warmup_lr(base_lr: float, step: int, warmup_steps: int) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up ``base_lr * (step + 1) / warmup_steps``
    over the first ``warmup_steps`` steps, then ``base_lr`` (``warmup_steps = 0``: no warm-up)."""
    if warmup_steps <= 0 or step >= warmup_steps:
        return base_lr
    return base_lr * (step + 1) / warmup_steps


def epochs_without_improvement(best: Optional[Dict[str, Any]], epoch: int) -> int:
    """Epochs since the best validation epoch, after ``epoch`` (1-based) finished; ``best["epoch"]`` is
    1-based, as stored in the history."""
    if best is None or "epoch" not in best:
        return 0
    return epoch - int(best["epoch"])


def should_stop_early(best: Optional[Dict[str, Any]], epoch: int, patience: Optional[int]) -> bool:
    """True when validation NDCG@10 has not improved for ``patience`` epochs after ``epoch`` (None: never)."""
    return patience is not None and epochs_without_improvement(best, epoch) >= patience
