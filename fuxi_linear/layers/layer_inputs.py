"""The public layers' contract on the input side: checks with messages that name the argument, the counters
of a prefilled state, and the packing of right-padded rows for the Triton backend.

Shapes, dtypes and devices are checked on every call. The value checks (``lengths`` within ``[1, T]``,
positions within a table) read values back to the host; under ``torch.compile`` they are skipped, so that a
compiled layer traces without a data-dependent branch.
"""
from __future__ import annotations

from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..history_inputs import check_timestamps
from ..ops.backends import resolve_backend
from ..utils import INT_DTYPES

_FLOATS = (torch.float32, torch.float64)


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def _describe(x: object) -> str:
    if isinstance(x, torch.Tensor):
        return f"{x.dtype} tensor of shape {tuple(x.shape)}"
    return type(x).__name__


def _check_float_input(name: str, x: object, ndim: int, shape_doc: str, dim: int, weight: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {shape_doc}, got {_describe(x)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a float tensor {shape_doc}, got {_describe(x)}")
    if x.ndim != ndim or x.shape[-1] != dim:
        raise ValueError(f"{name} must have shape {shape_doc} with D={dim}, got {tuple(x.shape)}")
    if x.device != weight.device:
        raise ValueError(f"{name} is on {x.device}, the layer's parameters on {weight.device}")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"{name} is {x.dtype} but the layer's parameters are {weight.dtype}: convert the layer "
                        f"(layer.to({x.dtype})) or run it under torch.autocast")


def check_sequence(x: object, dim: int, weight: torch.Tensor) -> Tuple[int, int]:
    """``x (B, T, D)`` float, non-empty, on the layer's device, in its dtype (any float under autocast);
    returns ``(B, T)``."""
    _check_float_input("x", x, 3, "(B, T, D)", dim, weight)
    B, T = x.shape[:2]
    if B == 0 or T == 0:
        raise ValueError(f"x must hold at least one row and one event (B, T >= 1), got {tuple(x.shape)}")
    return B, T


def check_step_input(x_t: object, dim: int, weight: torch.Tensor) -> int:
    """``x_t (N, D)`` float, as :func:`check_sequence`; returns N."""
    _check_float_input("x_t", x_t, 2, "(N, D)", dim, weight)
    return int(x_t.shape[0])


def check_lengths(lengths: object, B: int, T: int, device: torch.device) -> Optional[torch.Tensor]:
    """``lengths (B,)`` int64 (or int32) in ``[1, T]`` on ``device``, as int64; None stays None (every row
    holds T events)."""
    if lengths is None:
        return None
    if not isinstance(lengths, torch.Tensor) or lengths.dtype not in INT_DTYPES:
        raise TypeError(f"lengths must be an int64 (or int32) tensor (B,), got {_describe(lengths)}")
    if tuple(lengths.shape) != (B,):
        raise ValueError(f"lengths must have shape (B,)=({B},), got {tuple(lengths.shape)}")
    if lengths.device != device:
        raise ValueError(f"lengths is on {lengths.device}, x on {device}")
    if not _compiling():
        low, high = torch.aminmax(lengths)
        low, high = int(low), int(high)
        if low < 1 or high > T:
            raise ValueError(f"lengths must lie in [1, T={T}], got values in [{low}, {high}]")
    return lengths.long()


def check_times(timestamps: object, query_timestamps: object, shape: tuple, device: torch.device,
                layer: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``timestamps`` of ``shape`` ((B, T) in a forward, (N,) in a step) and ``query_timestamps`` of
    ``shape[:1]``, int64 on ``device``; both are required by a layer with a temporal channel (``layer`` names
    it in the message)."""
    docs = ("(B, T)", "(B,)") if len(shape) == 2 else ("(N,)", "(N,)")
    for name, t in (("timestamps", timestamps), ("query_timestamps", query_timestamps)):
        if t is None:
            raise ValueError(f"{layer} needs {name}: int64 times (seconds or milliseconds, the unit of its "
                             f"periods); query_timestamps are the times of the request after each user's last "
                             f"event")
    check_timestamps("timestamps", timestamps, shape, docs[0])
    check_timestamps("query_timestamps", query_timestamps, shape[:1], docs[1])
    for name, t in (("timestamps", timestamps), ("query_timestamps", query_timestamps)):
        if t.device != device:
            raise ValueError(f"{name} is on {t.device}, x on {device}")
    return timestamps, query_timestamps


def check_optional_times(timestamps: object, shape: tuple, device: torch.device):
    """Times a block with its temporal channel switched off keeps as ``last_timestamp`` when given (None: not
    tracked)."""
    if timestamps is None:
        return None
    check_timestamps("timestamps", timestamps, shape, "(B, T)" if len(shape) == 2 else "(N,)")
    if timestamps.device != device:
        raise ValueError(f"timestamps is on {timestamps.device}, x on {device}")
    return timestamps


def check_positions_fit(last_position: object, num_positions: int, argument: str) -> None:
    """``last_position`` (an int, or a 0-d tensor read back unless compiling) must index a table of
    ``num_positions`` rows."""
    if isinstance(last_position, torch.Tensor):
        if _compiling() or last_position.numel() == 0:
            return
        last_position = int(last_position.max())
    if last_position >= num_positions:
        raise ValueError(f"{argument} reaches position {last_position}, beyond the positional table of "
                         f"{num_positions} rows (positions 0..{num_positions - 1}); build the layer with a "
                         f"larger max_positions or keep the most recent events")


def check_state(state: object, kind: type, layout: Sequence[tuple], device: torch.device) -> None:
    """``state`` is a ``kind`` whose fields have the ``layout`` ``(field, shape, "float" | "int")``, on
    ``device``: metadata only."""
    if not isinstance(state, kind):
        raise TypeError(f"state must be a {kind.__name__}, got {type(state).__name__}")
    for name, shape, kind_of in layout:
        t = getattr(state, name)
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != tuple(shape):
            got = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"state.{name} must have shape {tuple(shape)} for this layer and x_t, got {got}")
        if t.device != device:
            raise ValueError(f"state.{name} is on {t.device}, x_t on {device}")
        allowed = _FLOATS if kind_of == "float" else (torch.int64,)
        if t.dtype not in allowed:
            raise TypeError(f"state.{name} must have dtype in {allowed}, got {t.dtype}")


def state_dtype(weight: torch.Tensor) -> torch.dtype:
    """Channel states are float64 for a float64 layer, float32 otherwise (also for half-precision layers)."""
    return torch.float64 if weight.dtype == torch.float64 else torch.float32


def final_positions(lengths: Optional[torch.Tensor], B: int, T: int, device: torch.device) -> torch.Tensor:
    """``position (B,)`` of a state after a prefill: the events of each row."""
    return lengths.clone() if lengths is not None else torch.full((B,), T, dtype=torch.int64, device=device)


def last_times(timestamps: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """``(B,)`` int64: each row's last event time, at ``lengths - 1``."""
    if lengths is None:
        return timestamps[:, -1].clone()
    return timestamps.gather(1, (lengths - 1)[:, None]).squeeze(1)


def mask_padding(y: torch.Tensor, lengths: Optional[torch.Tensor]) -> torch.Tensor:
    """Zero ``y (B, T, ...)`` past each row's length."""
    if lengths is None:
        return y
    valid = torch.arange(y.shape[1], device=y.device)[None, :] < lengths[:, None]
    return y * valid.view(*valid.shape, *([1] * (y.ndim - 2))).to(y.dtype)


class PackedRows(NamedTuple):
    """Right-padded rows packed as one sequence: ``valid (B, T)`` bool, ``cu_seqlens (B + 1,)`` int64 and
    each packed event's position in its row, ``positions (1, total)`` int64."""

    valid: torch.Tensor
    cu_seqlens: torch.Tensor
    positions: torch.Tensor


def packs_rows(backend: str, device: torch.device, lengths: Optional[torch.Tensor], return_state: bool) -> bool:
    """Whether a prefill packs its rows: the Triton kernels take final states at the end of a row, so ragged
    rows whose states are wanted run packed (the CPU path takes each state at its row's length directly)."""
    return lengths is not None and return_state and resolve_backend(backend, device) == "triton"


def pack_rows(lengths: torch.Tensor, T: int) -> PackedRows:
    B = lengths.shape[0]
    arange = torch.arange(T, device=lengths.device)
    valid = arange[None, :] < lengths[:, None]
    positions = arange[None, :].expand(B, T)[valid][None, :]
    return PackedRows(valid, F.pad(torch.cumsum(lengths, 0), (1, 0)), positions)


def unpack_rows(packed_y: torch.Tensor, rows: PackedRows) -> torch.Tensor:
    """``(1, total, ...)`` -> ``(B, T, ...)``, zero past each row's length."""
    out = packed_y.new_zeros(*rows.valid.shape, *packed_y.shape[2:])
    out[rows.valid] = packed_y[0]
    return out
