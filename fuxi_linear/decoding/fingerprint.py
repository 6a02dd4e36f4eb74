"""A model's fingerprint: one string that changes whenever the model would compute something else -- a hash of
its configuration and of every tensor of its ``state_dict`` (names, dtypes, shapes and bytes).

Saved decode states and serving snapshots (:meth:`fuxi_linear.DecodeState.save`,
:meth:`fuxi_linear.serving.Decoder.save`) carry the fingerprint of the model that made them; loading them
next to another model -- other weights, another configuration, even of the same sizes -- is then an error
instead of silently wrong user vectors.

What enters: the model's class name; its ``config`` (``to_dict()``) without the fields that do not change what
a trained model computes in eval mode (:data:`NOT_FINGERPRINTED`: dropout, the training loss's settings and the
operator backend); and, in name order, each ``state_dict`` entry's name, dtype, shape and raw bytes (SHA-256).
Nothing depends on how the modules are arranged beyond the ``state_dict`` they produce.

Hashing reads every weight once (about a second per GB; a CUDA model is copied to the host for it), so the
result is cached per model and recomputed only when a parameter or buffer changes (in place, moved, or
replaced: the same test as :class:`fuxi_linear.derived_cache.DerivedCache`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import weakref
from typing import Any, Dict

import torch

from ..derived_cache import DerivedCache

#: Config fields left out of the fingerprint: they change training or the execution path, not the function.
NOT_FINGERPRINTED = ("dropout", "temperature", "num_negatives", "backend")
#: Prefix of every fingerprint (the hash and the rules above; a change of the rules changes it).
PREFIX = "fuxi-fp1:"

_caches: "weakref.WeakKeyDictionary[torch.nn.Module, DerivedCache]" = weakref.WeakKeyDictionary()


def _config_dict(model: torch.nn.Module) -> Dict[str, Any]:
    config = getattr(model, "config", None)
    if config is None:
        return {}
    if hasattr(config, "to_dict"):
        values = config.to_dict()
    elif dataclasses.is_dataclass(config):
        values = dataclasses.asdict(config)
    else:
        raise TypeError(f"the model's config must be a dataclass (or have to_dict()), got {type(config).__name__}")
    return {k: v for k, v in values.items() if k not in NOT_FINGERPRINTED}


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    flat = t.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy()) if flat.numel() else memoryview(b"")


def _compute(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    header = {"class": type(model).__name__, "config": _config_dict(model)}
    h.update(json.dumps(header, sort_keys=True, default=str).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(f"\n{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return PREFIX + h.hexdigest()


def model_fingerprint(model: torch.nn.Module) -> str:
    """The fingerprint of ``model`` (``"fuxi-fp1:<sha256 hex>"``), cached until a parameter or buffer changes."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    cache = _caches.get(model)
    if cache is None:
        cache = _caches[model] = DerivedCache()
    # state_dict(keep_vars=True): the parameters and buffers themselves, whose versions the cache watches
    return cache.get(lambda: list(model.state_dict(keep_vars=True).values()), lambda: _compute(model))


def check_fingerprint(saved: object, model: torch.nn.Module, what: str, check: bool = True) -> None:
    """Raise ``ValueError`` naming ``what`` (e.g. a file) when ``saved`` is not ``model``'s fingerprint.

    ``check=False`` skips the comparison (the caller takes responsibility for the pairing). A missing
    fingerprint (None: saved without a model) is an error too unless ``check=False``.
    """
    if not check:
        return
    if saved is None:
        raise ValueError(f"{what} carries no model fingerprint (it was saved without its model), so it cannot be "
                         f"checked against this model; pass check_model=False to load it anyway")
    current = model_fingerprint(model)
    if saved != current:
        raise ValueError(f"{what} was saved by another model (fingerprint {saved}) than this one ({current}): other "
                         f"weights or another configuration. Load it with the model that saved it, or pass "
                         f"check_model=False if you know the states fit")


__all__ = ["model_fingerprint", "check_fingerprint", "NOT_FINGERPRINTED", "PREFIX"]
