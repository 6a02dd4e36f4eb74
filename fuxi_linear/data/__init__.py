"""Data loading, synthetic data and leave-one-out splits for FuXi-Linear."""

from .interactions import VALID_TIMESTAMP_UNITS, InteractionLog
from .loaders import (
    DATASET_NAMES,
    DATASET_TIMESTAMP_UNITS,
    default_temporal_periods,
    load_csv,
    load_dataset,
    load_kuairand,
    load_kuairec,
    load_movielens_1m,
    load_movielens_20m,
    load_movielens_100k,
    load_recbole,
)
from .splits import LeaveOneOutSplits, SequenceDataset, collate_batch, leave_one_out, make_loader
from .synthetic import SLOT_NAMES, SYNTHETIC_TEMPORAL_PERIODS, make_synthetic_log, synthetic_item_topics, time_context

__all__ = [
    "DATASET_NAMES",
    "DATASET_TIMESTAMP_UNITS",
    "SLOT_NAMES",
    "SYNTHETIC_TEMPORAL_PERIODS",
    "VALID_TIMESTAMP_UNITS",
    "InteractionLog",
    "LeaveOneOutSplits",
    "SequenceDataset",
    "collate_batch",
    "default_temporal_periods",
    "leave_one_out",
    "load_csv",
    "load_dataset",
    "load_kuairand",
    "load_kuairec",
    "load_movielens_100k",
    "load_movielens_1m",
    "load_movielens_20m",
    "load_recbole",
    "make_loader",
    "make_synthetic_log",
    "synthetic_item_topics",
    "time_context",
]
