"""Checks of tensor *values* (ranges, distinct indices) batched so that a decode step pays at most one host
synchronisation for all of them, or none.

Shapes, dtypes and devices are metadata the host already knows; checking a value held on a GPU needs the
device, and a separate ``int(x.max())`` per check costs one synchronisation each (tens of microseconds on a
GPU, and it forbids CUDA-graph capture). Every check here is "these statistics lie within bounds": the
statistics (a min, a max, a count of repeats: 0-d device tensors) of all checks are computed first, and
:meth:`ValueChecks.run` settles them in one of two modes:

* ``"sync"`` — all statistics are stacked and read back at once (one host synchronisation), compared on the
  host, and the first failing check raises a ``ValueError`` whose message quotes them;
* ``"async"`` — each check becomes one ``torch._assert_async`` on a device-side comparison (no host
  synchronisation; capturable in a CUDA graph). On a GPU a failure is a device-side assert, reported (with
  the message, on torch versions that pass it through) at the next synchronisation, and it leaves the CUDA
  context unusable; on a CPU it raises a ``RuntimeError`` with the message at once.
"""
from __future__ import annotations

from typing import Callable, List, NamedTuple, Optional, Sequence

import torch

VALUE_CHECK_MODES = ("sync", "async")


def resolve_value_check_mode(validate: object, device: torch.device) -> Optional[str]:
    """``validate`` of a decode step -> ``None`` (no checks), ``"sync"`` or ``"async"``.

    ``True`` picks the device's default: ``"async"`` on CUDA (no host synchronisation), ``"sync"`` elsewhere
    (on a CPU reading a value back costs nothing, and the error is a ``ValueError`` at once).
    """
    if validate is False:
        return None
    if validate is True:
        return "async" if device.type == "cuda" else "sync"
    if isinstance(validate, str) and validate in VALUE_CHECK_MODES:
        return validate
    raise ValueError(f"validate must be True, False, 'sync' or 'async', got {validate!r}")


class _Check(NamedTuple):
    stats: List[torch.Tensor]  # 0-d int tensors
    low: int
    high: int
    message: Callable[[List[int]], str]  # from the statistics read back ("sync")
    static: str  # the device assert's text ("async")


class ValueChecks:
    """A batch of "statistics within [low, high]" checks, settled at once by :meth:`run`."""

    def __init__(self) -> None:
        self._checks: List[_Check] = []

    def add(self, stats: Sequence[torch.Tensor], low: int, high: int, message: Callable[[List[int]], str],
            static: str) -> None:
        """Every ``stats[i]`` (0-d int tensor) must lie in ``[low, high]``; ``message(values)`` explains a
        failure from the values read back, ``static`` (at most 250 characters) is the device assert's text."""
        self._checks.append(_Check(list(stats), int(low), int(high), message, static[:250]))

    def run(self, mode: str) -> None:
        checks, self._checks = self._checks, []
        if not checks:
            return
        if mode == "sync":
            values = torch.stack([s for c in checks for s in c.stats]).tolist()  # the one synchronisation
            i = 0
            for c in checks:
                got = values[i:i + len(c.stats)]
                i += len(c.stats)
                if any(not c.low <= v <= c.high for v in got):
                    raise ValueError(c.message(got))
        elif mode == "async":
            for c in checks:  # four small kernels and an assert per check; Python-scalar bounds (no copies)
                stats = torch.stack(c.stats)
                torch._assert_async(torch.eq(stats.clamp(c.low, c.high), stats).all(), c.static)
        else:
            raise ValueError(f"mode must be one of {VALUE_CHECK_MODES}, got {mode!r}")


def add_distinct_rows_check(checks: ValueChecks, name: str, rows: torch.Tensor, num_rows: int) -> None:
    """``rows (N,)`` int must lie in ``[0, num_rows)`` and be distinct (rows written in place would race)."""
    if rows.numel() == 0:
        return
    low, high = torch.aminmax(rows)
    checks.add([low, high], 0, num_rows - 1, lambda v: f"{name} must lie in [0, {num_rows}), got {rows.tolist()}",
               f"{name} must lie in [0, {num_rows})")
    if rows.numel() > 1:
        ordered = torch.sort(rows).values
        repeats = (ordered[1:] == ordered[:-1]).sum()
        checks.add([repeats], 0, 0, lambda v: f"{name} must name distinct state rows, got {rows.tolist()}",
                   f"{name} must name distinct state rows")
