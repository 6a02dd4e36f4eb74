"""Baseline sequential recommenders with FuXi-Linear's embedding, input, loss and serving interface.

``SASRec`` (softmax attention), ``HSTU`` (pointwise SiLU attention with relative position/time bias) and
``FuXiAlpha`` (three-channel HSTU-like attention with the multi-stage FFN) all expose ``encode``,
``prefill``, ``step``, ``loss``, ``score`` and ``item_vectors`` with the semantics of
:class:`fuxi_linear.FuXiLinear`; decode keeps a per-layer :class:`KVCache`. :func:`build_model` builds any of
them, or FuXi-Linear itself, by name.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple, Type

import torch.nn as nn

from ..retrieval import l2_normalize, next_item_targets, sampled_softmax_loss
from .base import SequentialRecommenderBase
from .config import BaselineConfig
from .kv_cache import KVCache
from .time_buckets import query_times, time_bucket
from .fuxi_alpha import FuXiAlpha, FuXiAlphaConfig
from .hstu import HSTU, HSTUConfig
from .relative_bias import PointwiseAttentionConfig
from .sasrec import SASRec, SASRecConfig

_BASELINES: Dict[str, Tuple[Type[nn.Module], Type[BaselineConfig]]] = {
    "sasrec": (SASRec, SASRecConfig),
    "hstu": (HSTU, HSTUConfig),
    "fuxi-alpha": (FuXiAlpha, FuXiAlphaConfig),
}

#: Names accepted by :func:`build_model`.
MODEL_NAMES: Tuple[str, ...] = tuple(_BASELINES) + ("fuxi-linear",)


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by name from its config fields.

    Args:
        name: "sasrec" | "hstu" | "fuxi-alpha" | "fuxi-linear".
        **kwargs: fields of the model's config (e.g. ``num_items=1000, embedding_dim=64``).
    Returns:
        ``SASRec(SASRecConfig(**kwargs))`` etc.; "fuxi-linear" gives ``FuXiLinear(FuXiLinearConfig(**kwargs))``.
    Raises:
        TypeError: ``name`` is not a str, or a field is unknown to that config.
        ValueError: unknown name (the message lists the valid ones), or a bad field value.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {list(MODEL_NAMES)}, got {type(name).__name__}")
    if name == "fuxi-linear":
        # Imported here: fuxi_linear/__init__ does not depend on the baselines, and must not have to.
        from ..config import FuXiLinearConfig
        from ..model import FuXiLinear

        return FuXiLinear(FuXiLinearConfig(**kwargs))
    if name not in _BASELINES:
        raise ValueError(f"unknown model name {name!r}; expected one of {list(MODEL_NAMES)}")
    model_cls, config_cls = _BASELINES[name]
    return model_cls(config_cls(**kwargs))


__all__ = [
    "MODEL_NAMES", "build_model",
    "SASRec", "SASRecConfig", "HSTU", "HSTUConfig", "FuXiAlpha", "FuXiAlphaConfig",
    "BaselineConfig", "PointwiseAttentionConfig", "KVCache", "SequentialRecommenderBase",
    "l2_normalize", "sampled_softmax_loss", "next_item_targets", "query_times", "time_bucket",
]
