"""Test-only crash points: a process kills itself (SIGKILL, as a power cut or the OOM killer would) at a named
point of a write, so that the crash-safety tests crash real processes at exact places.

Inactive unless the environment variable ``FUXI_LINEAR_CRASH_AT`` is set, to ``NAME`` or ``NAME:N`` (the N-th
time the process reaches point ``NAME``, default the first). The points:

* ``checkpoint.tmp_written`` -- a training checkpoint is fully written to its temporary file, not yet renamed
  over ``last.pt`` (the previous ``last.pt`` is still the one on disk);
* ``checkpoint.saved`` -- ``last.pt`` was replaced (and synced);
* ``decoder.state_written`` -- :meth:`fuxi_linear.serving.Decoder.save` has written the new snapshot's
  tensors, not its manifest;
* ``decoder.manifest_written`` -- the new snapshot is complete but ``CURRENT`` still names the previous one.

Checking a point costs one dictionary lookup when the variable is not set.
"""
from __future__ import annotations

import os
import signal
from typing import Dict

#: The environment variable that arms a crash point.
CRASH_ENV = "FUXI_LINEAR_CRASH_AT"

_reached: Dict[str, int] = {}


def _armed() -> tuple:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return None, 0
    name, _, count = spec.partition(":")
    try:
        return name, int(count) if count else 1
    except ValueError:
        raise ValueError(f"{CRASH_ENV} must be NAME or NAME:N (N a positive int), got {spec!r}") from None


def crash_point(name: str) -> None:
    """SIGKILL this process if ``FUXI_LINEAR_CRASH_AT`` names ``name`` and this is its N-th visit."""
    if CRASH_ENV not in os.environ:
        return
    armed, count = _armed()
    if armed != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == count:
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["CRASH_ENV", "crash_point"]
