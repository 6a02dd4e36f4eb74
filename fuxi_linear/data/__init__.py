"""Data loading, synthetic data and leave-one-out splits for FuXi-Linear."""

from .interactions import VALID_TIMESTAMP_UNITS, InteractionLog
from ..config import default_temporal_periods  # model knowledge; re-exported for older imports
from .catalogue import DATASET_NAMES, DATASET_TIMESTAMP_UNITS, DATASETS, DatasetEntry, load_dataset
from .loaders import (
    load_csv,
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
    "DATASETS",
    "DATASET_NAMES",
    "DATASET_TIMESTAMP_UNITS",
    "SLOT_NAMES",
    "SYNTHETIC_TEMPORAL_PERIODS",
    "VALID_TIMESTAMP_UNITS",
    "DatasetEntry",
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
