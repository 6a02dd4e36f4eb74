"""Baseline sequential recommenders with FuXi-Linear's embedding, input, loss and serving interface.

``SASRec`` (softmax attention), ``HSTU`` (pointwise SiLU attention with relative position/time bias) and
``FuXiAlpha`` (three-channel HSTU-like attention with the multi-stage FFN) all expose ``encode``,
``prefill``, ``step``, ``loss``, ``score`` and ``item_vectors`` with the semantics of
:class:`fuxi_linear.FuXiLinear`; decode keeps a per-layer :class:`KVCache`. :func:`fuxi_linear.models.build_model`
builds any of them, or FuXi-Linear itself, by name.
"""
from __future__ import annotations

from ...embedding_scoring_loss import l2_normalize, next_item_targets, sampled_softmax_loss
from .base import SequentialRecommenderBase
from .config import BaselineConfig
from .kv_cache import KVCache
from .time_buckets import query_times, time_bucket
from .fuxi_alpha import FuXiAlpha, FuXiAlphaConfig
from .hstu import HSTU, HSTUConfig
from .relative_bias import PointwiseAttentionConfig
from .sasrec import SASRec, SASRecConfig

__all__ = [
    "SASRec", "SASRecConfig", "HSTU", "HSTUConfig", "FuXiAlpha", "FuXiAlphaConfig",
    "BaselineConfig", "PointwiseAttentionConfig", "KVCache", "SequentialRecommenderBase",
    "l2_normalize", "sampled_softmax_loss", "next_item_targets", "query_times", "time_bucket",
]
