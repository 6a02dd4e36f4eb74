"""Configuration of the FuXi-Linear model."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Optional, Tuple

from .ops.backends import check_backend
from .utils import check_positive_ints


#: Default temporal periods per timestamp unit (SPEC §3): ``base^(start + m*stride)`` for m < num_periods
#: (milliseconds: 2^10 .. 2^31 ms; seconds: 16^0 .. 16^7 s).
TEMPORAL_PERIODS_BY_UNIT: Dict[str, Dict[str, int]] = {
    "ms": {"base": 2, "start": 10, "stride": 3, "num_periods": 8},
    "s": {"base": 16, "start": 0, "stride": 1, "num_periods": 8},
}


def default_temporal_periods(timestamp_unit: str) -> Dict[str, int]:
    """The temporal period rule ``{"base", "start", "stride", "num_periods"}`` for timestamps in
    ``timestamp_unit`` (``"s"`` or ``"ms"``); see :data:`TEMPORAL_PERIODS_BY_UNIT`."""
    if timestamp_unit not in TEMPORAL_PERIODS_BY_UNIT:
        raise ValueError(f"timestamp_unit must be one of {tuple(TEMPORAL_PERIODS_BY_UNIT)}, got {timestamp_unit!r}")
    return dict(TEMPORAL_PERIODS_BY_UNIT[timestamp_unit])


def _round_up(x: int, multiple: int) -> int:
    return -(-x // multiple) * multiple


class ConfigDictMixin:
    """``to_dict`` / ``from_dict`` for the model configuration dataclasses (checkpoints store plain dicts)."""

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")
        return cls(**values)


@dataclass
class FuXiLinearConfig(ConfigDictMixin):
    """Hyper-parameters of :class:`fuxi_linear.FuXiLinear` (SPEC §2-6).

    Attributes:
        num_items: catalogue size; item ids are 1..num_items, 0 is padding.
        max_seq_len: L, the longest history the model is built for.
        embedding_dim: D. num_blocks: number of FuXi-Linear blocks. num_heads: H retention heads.
        qk_dim: dqk of the retention heads (default D / H); the value width is D / H.
        ffn_multiply: F = D * ffn_multiply in the multi-stage FFN (1 in every released configuration).
        temporal_base, temporal_start, temporal_stride, temporal_num_periods: periods
            ``base^(start + m*stride)`` in the timestamps' unit (defaults: seconds; use 2, 10, 3, 8 for ms).
        temporal_periods: explicit int periods instead of the base/start/stride rule (checkpoint import).
        learn_temporal_decay: learn ``b`` (gamma = sigmoid(b)), else gamma = 0.5.
        temporal_skip: the temporal channel's output is ``alpha * o + beta * v`` (the released ``aug_current``,
            on in the Kuai configurations); False: its output is ``o`` and it has no ``alpha``/``beta``
            parameters (the released ML-20M configuration).
        temporal_max_log_decay: bound on the per-step temporal log-decay.
        use_temporal: False switches the temporal channel off (its input to the gate is zero) — an ablation.
        positional_dim: P. positional_table_size: Nmax (default L + 11 rounded up to
            ``positional_table_multiple``). positional_table_multiple: 128 (the released chunk size: 1152 rows
            for L = 1024); 1 gives L + 11, the released configuration without chunking (ML-20M: 211).
        absolute_position_table_size: rows of the absolute position embedding (default L + 11, as released).
        dropout: input and FFN dropout. temperature: tau of the sampled softmax. num_negatives: per position.
        backend: operator backend, "auto" | "triton" | "cpu" ("reference", the former name of "cpu", is
            accepted with a DeprecationWarning and stored as "cpu").
    """

    num_items: int
    max_seq_len: int = 200
    embedding_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 4
    qk_dim: Optional[int] = None
    ffn_multiply: int = 1
    temporal_base: int = TEMPORAL_PERIODS_BY_UNIT["s"]["base"]
    temporal_start: int = TEMPORAL_PERIODS_BY_UNIT["s"]["start"]
    temporal_stride: int = TEMPORAL_PERIODS_BY_UNIT["s"]["stride"]
    temporal_num_periods: int = TEMPORAL_PERIODS_BY_UNIT["s"]["num_periods"]
    temporal_periods: Optional[Tuple[int, ...]] = None
    learn_temporal_decay: bool = True
    temporal_skip: bool = True
    temporal_max_log_decay: float = 20.0
    use_temporal: bool = True
    positional_dim: int = 32
    positional_table_size: Optional[int] = None
    positional_table_multiple: int = 128
    absolute_position_table_size: Optional[int] = None
    dropout: float = 0.2
    temperature: float = 0.05
    num_negatives: int = 128
    backend: str = "auto"

    def __post_init__(self) -> None:
        check_positive_ints(self, ("num_items", "max_seq_len", "embedding_dim", "num_blocks", "num_heads",
                                   "ffn_multiply", "temporal_num_periods", "positional_dim", "num_negatives",
                                   "positional_table_multiple"))
        for name in ("learn_temporal_decay", "temporal_skip", "use_temporal"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.qk_dim is None:
            self.qk_dim = self.embedding_dim // self.num_heads
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"embedding_dim={self.embedding_dim} must be divisible by num_heads={self.num_heads}")
        if self.temporal_periods is not None:
            self.temporal_periods = tuple(int(p) for p in self.temporal_periods)
            self.temporal_num_periods = len(self.temporal_periods)
        if self.embedding_dim % (2 * self.temporal_num_periods):
            raise ValueError(
                f"embedding_dim={self.embedding_dim} must be divisible by 2 * temporal_num_periods="
                f"{2 * self.temporal_num_periods}"
            )
        if self.positional_dim % 2:
            raise ValueError(f"positional_dim must be even, got {self.positional_dim}")
        if self.positional_table_size is None:
            self.positional_table_size = _round_up(self.max_seq_len + 11, self.positional_table_multiple)
        if self.absolute_position_table_size is None:
            self.absolute_position_table_size = self.max_seq_len + 11
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        self.backend = check_backend(self.backend, stacklevel=3)

    @property
    def ffn_hidden_dim(self) -> int:
        return self.embedding_dim * self.ffn_multiply

    @property
    def max_positions(self) -> int:
        """Events a user's history may hold, in encode and after decode steps (both position tables)."""
        return min(self.positional_table_size, self.absolute_position_table_size)
