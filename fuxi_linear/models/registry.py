"""The models this package trains and benchmarks, by name: the one list of names and :func:`build_model`.

Every place that names models (``fuxi-linear train --model``, ``fuxi-linear bench --models``, the demo, the
pytest-benchmark suites, ``fuxi_linear.models.baselines``) takes :data:`MODEL_NAMES` and its order: FuXi-Linear
first (the bench reports its speed-up over each of the others), then the quadratic baselines.
"""
from __future__ import annotations

from typing import Any, Dict, Tuple, Type

import torch.nn as nn

from .baselines.fuxi_alpha import FuXiAlpha, FuXiAlphaConfig
from .baselines.hstu import HSTU, HSTUConfig
from .baselines.sasrec import SASRec, SASRecConfig
from ..config import FuXiLinearConfig
from ..model import FuXiLinear

#: name -> (model class, config class).
_MODELS: Dict[str, Tuple[Type[nn.Module], type]] = {
    "fuxi-linear": (FuXiLinear, FuXiLinearConfig),
    "hstu": (HSTU, HSTUConfig),
    "fuxi-alpha": (FuXiAlpha, FuXiAlphaConfig),
    "sasrec": (SASRec, SASRecConfig),
}

#: Names accepted by :func:`build_model`, in the order every report and flag lists them.
MODEL_NAMES: Tuple[str, ...] = tuple(_MODELS)
#: The models FuXi-Linear is compared with (every name but the first).
BASELINE_NAMES: Tuple[str, ...] = MODEL_NAMES[1:]


def build_model(name: str, **kwargs: Any) -> nn.Module:
    """Build a model by name from its config fields.

    Args:
        name: one of :data:`MODEL_NAMES` ("fuxi-linear" | "hstu" | "fuxi-alpha" | "sasrec").
        **kwargs: fields of the model's config (e.g. ``num_items=1000, embedding_dim=64``).
    Returns:
        ``FuXiLinear(FuXiLinearConfig(**kwargs))``, ``HSTU(HSTUConfig(**kwargs))``, etc.
    Raises:
        TypeError: ``name`` is not a str, or a field is unknown to that config.
        ValueError: unknown name (the message lists the valid ones), or a bad field value.
    """
    return _MODELS[_checked_name(name)][0](model_config(name, **kwargs))


def model_config(name: str, **kwargs: Any) -> Any:
    """The config of model ``name`` from its fields (checked as :func:`build_model` checks them, without
    building the model): ``FuXiLinearConfig(**kwargs)``, ``HSTUConfig(**kwargs)``, etc."""
    return _MODELS[_checked_name(name)][1](**kwargs)


def _checked_name(name: object) -> str:
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, one of {list(MODEL_NAMES)}, got {type(name).__name__}")
    if name not in _MODELS:
        raise ValueError(f"unknown model name {name!r}; expected one of {list(MODEL_NAMES)}")
    return name


__all__ = ["MODEL_NAMES", "BASELINE_NAMES", "build_model", "model_config"]
