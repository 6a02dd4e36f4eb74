"""Full-catalogue ranking evaluation (rank of target, NDCG / HR / MRR)."""

from .metrics import (
    evaluate_full_ranking,
    pad_exclusions,
    rank_of_target,
    rank_of_target_chunked,
    ranking_metrics,
    resolve_exclude_history,
)
from .popularity import most_popular_metrics, training_item_counts

__all__ = [
    "evaluate_full_ranking",
    "pad_exclusions",
    "rank_of_target",
    "rank_of_target_chunked",
    "ranking_metrics",
    "resolve_exclude_history",
    "most_popular_metrics",
    "training_item_counts",
]
