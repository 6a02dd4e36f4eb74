"""Hyper-parameters every baseline shares (model-specific fields live in each model's config subclass)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from ...config import ConfigDictMixin
from ...utils import check_positive_ints


@dataclass
class BaselineConfig(ConfigDictMixin):
    """Hyper-parameters every baseline shares (model-specific fields live in the subclasses).

    Attributes:
        num_items: catalogue size; ids are 1..num_items, 0 is padding.
        max_seq_len: L, the longest history the model is built for.
        embedding_dim: D. num_blocks: number of blocks. num_heads: H (D must be divisible by H).
        qk_dim: per-head query/key width (default D / H); the per-head value width is D / H.
        dropout: input, attention-output and FFN dropout rate.
        temperature: tau of the sampled softmax and of ``score``. num_negatives: negatives per position.
        absolute_position_table_size: rows of the learned absolute position table (default L + 11, as
            :class:`fuxi_linear.FuXiLinearConfig`, so both models accept the same histories and decode steps).
        query_chunk_size: query rows per attention block in encode/prefill of the O(T^2) models
            (None = automatic, bounded memory).
    """

    num_items: int
    max_seq_len: int = 200
    embedding_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 4
    qk_dim: Optional[int] = None
    dropout: float = 0.2
    temperature: float = 0.05
    num_negatives: int = 128
    absolute_position_table_size: Optional[int] = None
    query_chunk_size: Optional[int] = None

    _POSITIVE_INTS = ("num_items", "max_seq_len", "embedding_dim", "num_blocks", "num_heads", "num_negatives")

    def __post_init__(self) -> None:
        check_positive_ints(self, self._POSITIVE_INTS)
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"embedding_dim={self.embedding_dim} must be divisible by num_heads={self.num_heads}")
        if self.qk_dim is None:
            self.qk_dim = self.embedding_dim // self.num_heads
        check_positive_ints(self, ("qk_dim", "absolute_position_table_size", "query_chunk_size"), allow_none=True)
        if self.absolute_position_table_size is None:
            self.absolute_position_table_size = self.max_seq_len + 11
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must lie in [0, 1), got {self.dropout!r}")
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature!r}")

    @property
    def value_dim(self) -> int:
        """Per-head value width D / H."""
        return self.embedding_dim // self.num_heads

    @property
    def max_positions(self) -> int:
        """Events a user's history may hold, in encode and after decode steps."""
        return self.absolute_position_table_size
