"""FuXi-Linear layers (SPEC §2-5): drop-in modules ``(B, T, D) -> (B, T, D)`` with an O(1) decode step.

One contract for all of them::

    y = layer(x, timestamps=None, query_timestamps=None, lengths=None)          # x (B, T, D) -> (B, T, D)
    y, state = layer(x, ..., return_state=True)                                  # prefill
    y_t, state = layer.step(x_t, state, timestamps=None, query_timestamps=None)  # x_t (N, D), O(1), in place

:class:`Retention` (semantic retention, gated), :class:`TemporalRetention` (needs int64 ``timestamps`` and
``query_timestamps``), :class:`LinearPositional` and :class:`FuXiLinearBlock` (the three channels, the gate and
the multi-stage FFN, with its residuals). Their states (:mod:`fuxi_linear.layers.states`) are small typed
objects with ``.to``, ``.clone``, ``.select`` and ``.nbytes_per_user()``.
"""
from .block import FuXiLinearBlock
from .ffn import MultiStageFFN
from .norms import layer_norm, rms_norm
from .positional import LinearPositional, sinusoidal_table
from .retention import Retention
from .states import FuXiLinearBlockState, LinearPositionalState, RetentionState, TemporalRetentionState
from .temporal import TemporalRetention
from .temporal_encoding import TemporalEncoding, temporal_periods

__all__ = [
    "Retention",
    "TemporalRetention",
    "LinearPositional",
    "FuXiLinearBlock",
    "RetentionState",
    "TemporalRetentionState",
    "LinearPositionalState",
    "FuXiLinearBlockState",
    "MultiStageFFN",
    "TemporalEncoding",
    "layer_norm",
    "rms_norm",
    "sinusoidal_table",
    "temporal_periods",
]
