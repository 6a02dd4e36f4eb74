"""What a training run depends on: :class:`TrainConfig` (saved in every checkpoint and in ``metrics.json``),
the paper's per-dataset :data:`PRESETS`, and the model constructor arguments a configuration gives
(:func:`model_kwargs`). ``fuxi_linear.cli`` builds a :class:`TrainConfig` from the ``train`` flags.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

from .precision_and_compile import PRECISIONS
from ..data import DATASET_NAMES, SYNTHETIC_TEMPORAL_PERIODS, default_temporal_periods
from ..models.registry import MODEL_NAMES
from ..utils import check_int, check_positive_ints

# The paper's configurations: the authors' released configuration files (SPEC §10), which the parameter counts
# of tests/test_presets.py pin. Batch sizes are global (per optimizer step, over all processes: 64 per GPU x 2
# for Kuai, 256 x 4 for ML-20M), so a preset trains the same way on any number of processes. Evaluation excludes
# the whole history (SPEC §7); the released code excluded only the input window (``exclude_history="window"``).
# Flags given on the command line win.
_KUAI = dict(max_seq_len=1024, embedding_dim=128, num_blocks=4, num_heads=4, qk_dim=32, ffn_multiply=1,
             temporal_base=2, temporal_start=10, temporal_stride=3, temporal_num_periods=8,
             learn_temporal_decay=True, temporal_skip=True, positional_dim=32,
             positional_table_multiple=128,  # table L + 11 rounded up to the chunk size: 1152
             dropout=0.5, lr=1e-3, global_batch_size=128, epochs=101, num_negatives=128, temperature=0.05,
             exclude_history="all")
PRESETS: Dict[str, Dict[str, Any]] = {
    "kuairand": dict(dataset="kuairand", **_KUAI),
    "kuairec": dict(dataset="kuairec", **_KUAI),
    "ml-20m": dict(dataset="ml-20m", max_seq_len=200, embedding_dim=256, num_blocks=8, num_heads=8, qk_dim=32,
                   ffn_multiply=1, temporal_base=16, temporal_start=0, temporal_stride=1, temporal_num_periods=8,
                   learn_temporal_decay=False, temporal_skip=False, positional_dim=32,
                   positional_table_multiple=1,  # table L + 11 = 211: the released ML-20M model has no chunks
                   dropout=0.2, lr=4e-3, global_batch_size=1024, epochs=101, num_negatives=128, temperature=0.05,
                   exclude_history="all"),
}

#: What ``exclude_history`` removes from the full ranking (the target itself never): ``"all"`` every item of the
#: user's history (SPEC §7), ``"window"`` the items of the input window only (the last L events: the released
#: evaluation), ``"none"`` nothing.
EXCLUDE_HISTORY_MODES = ("all", "window", "none")


@dataclass
class TrainConfig:
    """Everything a run depends on (saved in the checkpoint and in metrics.json)."""

    dataset: str = "synthetic"
    data_path: Optional[str] = None
    model: str = "fuxi-linear"
    epochs: int = 10
    max_seq_len: int = 200
    embedding_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 4
    qk_dim: Optional[int] = None
    dropout: float = 0.2
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    num_negatives: int = 128
    temperature: float = 0.05
    seed: int = 42
    device: str = "auto"
    output: str = "runs/latest"
    split: str = "3way"
    train_stride: Optional[int] = None
    mrr_cap: Optional[int] = None
    exclude_history: str = "all"  # EXCLUDE_HISTORY_MODES; True / False (older checkpoints) mean "all" / "none"
    # FuXi-Linear only; None = the defaults for the dataset's timestamp unit (SPEC §3)
    temporal_base: Optional[int] = None
    temporal_start: Optional[int] = None
    temporal_stride: Optional[int] = None
    temporal_num_periods: Optional[int] = None
    temporal_periods: Optional[tuple] = None  # explicit periods; synthetic data defaults to calendar periods
    learn_temporal_decay: bool = True
    temporal_skip: bool = True  # the temporal channel's alpha o + beta v (off in the released ML-20M config)
    use_temporal: bool = True
    positional_dim: int = 32
    positional_table_multiple: Optional[int] = None  # positional table L + 11 rounded up to this (None: 128)
    ffn_multiply: Optional[int] = None  # FFN width F = D * ffn_multiply; None: the model's default (FuXi-Linear 1)
    backend: str = "auto"
    # data handling
    cache_dir: Optional[str] = None
    k_core: Optional[tuple] = None
    min_user_events: Optional[int] = None
    synthetic_users: int = 500
    synthetic_items: int = 1000
    synthetic_mean_events: int = 250
    max_eval_batches: Optional[int] = None
    progress: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)  # loader kwargs, e.g. csv column names
    # speed and scale
    precision: str = "fp32"  # "bf16": autocast of the encoder; weights, optimizer and loss stay float32
    compile: bool = False  # torch.compile of the training forward
    compile_backend: str = "inductor"
    global_batch_size: Optional[int] = None  # set: batch_size per rank = global_batch_size / world size
    # schedule
    warmup_steps: int = 0  # linear learning-rate warm-up over this many optimizer steps
    patience: Optional[int] = None  # stop after this many epochs without a better validation NDCG@10
    # crash safety
    checkpoint_every: Optional[int] = None  # also write DIR/last.pt every N optimizer steps (mid-epoch)

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid names: {', '.join(DATASET_NAMES)}")
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; valid names: {', '.join(MODEL_NAMES)}")
        if self.dataset != "synthetic" and not self.data_path:
            raise ValueError(f"dataset {self.dataset!r} needs --data-path (the file or its folder)")
        check_positive_ints(self, ("epochs", "max_seq_len", "embedding_dim", "num_blocks", "num_heads",
                                   "batch_size", "eval_batch_size", "num_negatives"))
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.split not in ("3way", "2way"):
            raise ValueError(f"split must be '3way' or '2way', got {self.split!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        check_positive_ints(self, ("global_batch_size", "patience", "positional_table_multiple", "ffn_multiply",
                                   "checkpoint_every"), allow_none=True)
        if isinstance(self.exclude_history, bool):  # the older boolean field
            self.exclude_history = "all" if self.exclude_history else "none"
        if self.exclude_history not in EXCLUDE_HISTORY_MODES:
            raise ValueError(f"exclude_history must be one of {', '.join(EXCLUDE_HISTORY_MODES)}, got "
                             f"{self.exclude_history!r}")
        if self.ffn_multiply is not None and self.model == "hstu":
            raise ValueError("ffn_multiply: HSTU has no feed-forward network (it applies to fuxi-linear, fuxi-alpha "
                             "and sasrec)")
        check_int("warmup_steps", self.warmup_steps, minimum=0)
        if self.patience is not None and self.split != "3way":
            raise ValueError("patience (early stopping on validation NDCG@10) needs the validation split "
                             "(split='3way'), got split='2way'")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise ValueError(f"compile_backend must be a backend name, got {self.compile_backend!r}")

    def batch_sizes(self, world_size: int) -> tuple:
        """``(per-rank, global)`` training batch sizes for ``world_size`` processes: ``batch_size`` is per rank
        unless ``global_batch_size`` is set, which must then be divisible by the world size."""
        if self.global_batch_size is None:
            return self.batch_size, self.batch_size * world_size
        if self.global_batch_size % world_size:
            raise ValueError(f"--global-batch-size {self.global_batch_size} is not divisible by the world size "
                             f"{world_size} (torchrun --nproc_per_node x nodes); pick a multiple of {world_size}")
        return self.global_batch_size // world_size, self.global_batch_size

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def model_kwargs(cfg: TrainConfig, num_items: int, timestamp_unit: str) -> Dict[str, Any]:
    """Constructor arguments of ``cfg.model`` (the FuXi-Linear temporal settings only for FuXi-Linear)."""
    kwargs: Dict[str, Any] = dict(num_items=num_items, max_seq_len=cfg.max_seq_len,
                                  embedding_dim=cfg.embedding_dim, num_blocks=cfg.num_blocks,
                                  num_heads=cfg.num_heads, dropout=cfg.dropout, temperature=cfg.temperature,
                                  num_negatives=cfg.num_negatives)
    if cfg.qk_dim is not None:
        kwargs["qk_dim"] = cfg.qk_dim
    if cfg.ffn_multiply is not None:
        kwargs["ffn_multiply"] = cfg.ffn_multiply
    if cfg.model == "fuxi-linear":
        periods = default_temporal_periods(timestamp_unit)
        explicit = cfg.temporal_periods
        if explicit is None and cfg.dataset == "synthetic" and cfg.temporal_base is None:
            explicit = SYNTHETIC_TEMPORAL_PERIODS
        if explicit is not None:
            kwargs["temporal_periods"] = tuple(int(p) for p in explicit)
        kwargs.update(
            temporal_base=cfg.temporal_base if cfg.temporal_base is not None else periods["base"],
            temporal_start=cfg.temporal_start if cfg.temporal_start is not None else periods["start"],
            temporal_stride=cfg.temporal_stride if cfg.temporal_stride is not None else periods["stride"],
            temporal_num_periods=(cfg.temporal_num_periods if cfg.temporal_num_periods is not None
                                  else periods["num_periods"]),
            learn_temporal_decay=cfg.learn_temporal_decay, temporal_skip=cfg.temporal_skip,
            use_temporal=cfg.use_temporal, positional_dim=cfg.positional_dim, backend=cfg.backend,
            # written out so that a checkpoint rebuilds this model whatever the defaults become
            ffn_multiply=cfg.ffn_multiply if cfg.ffn_multiply is not None else 1,
        )
        if cfg.positional_table_multiple is not None:
            kwargs["positional_table_multiple"] = cfg.positional_table_multiple
    return kwargs


__all__ = ["TrainConfig", "PRESETS", "EXCLUDE_HISTORY_MODES", "MODEL_NAMES", "model_kwargs"]
