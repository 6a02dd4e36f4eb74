"""How the state of scalar-decay linear attention decays between tokens: the one decay-mode type of the operator.

``S_t = exp(g_t) S_{t-1} + k_t^T v_t``: the log-decay ``g_t`` is absent (:attr:`DecayMode.NONE`), given per token
and head (:attr:`DecayMode.PER_TOKEN`, the ``g (B, T, H)`` keyword) or per head (:attr:`DecayMode.PER_HEAD`, the
``g_gamma (H,)`` keyword). The public functions keep flash-linear-attention's ``g=`` / ``g_gamma=`` keywords;
the code derives the mode from them once (:meth:`DecayMode.of`) and passes its integer value to the kernels as
their ``DECAY`` compile-time constant (``kernels/common.py`` names the values for the kernels' comparisons).

Pure Python (no Triton import), so the CPU path can use it where Triton does not load.
"""
from __future__ import annotations

import enum
from typing import Optional

__all__ = ["DecayMode"]


class DecayMode(enum.IntEnum):
    """The decay of the operator's state; the value is the kernels' ``DECAY`` constexpr."""

    NONE = 0  #: no decay: ``S_t = S_{t-1} + k_t^T v_t``
    PER_TOKEN = 1  #: a log-decay per token and head, ``g (B, T, H)`` (``(N, H)`` in a decode step)
    PER_HEAD = 2  #: one log-decay per head, ``g_gamma (H,)``

    @classmethod
    def of(cls, g: Optional[object], g_gamma: Optional[object]) -> "DecayMode":
        """The mode of a call with these ``g`` / ``g_gamma`` arguments (validation rejects both at once)."""
        if g is not None:
            return cls.PER_TOKEN
        return cls.NONE if g_gamma is None else cls.PER_HEAD

    def __str__(self) -> str:
        """``"none"``, ``"per_token"`` or ``"per_head"`` (messages, test ids, error-table tags)."""
        return self.name.lower()
