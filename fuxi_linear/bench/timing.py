"""Timing of calls: CUDA events on a GPU, ``time.perf_counter`` on a CPU, warm-up excluded, several functions
timed round-robin so a drifting load hits them alike; out-of-memory is caught and reported, not fatal."""
from __future__ import annotations

import gc
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[..., Any], args: Tuple, device: torch.device) -> float:
    """Milliseconds of one call: CUDA events after a device synchronisation, or ``time.perf_counter``."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn(*args)
    return (time.perf_counter() - t0) * 1e3


def time_call(fn: Callable[..., Any], device: torch.device | str, warmup: int, repeats: int,
              setup: Optional[Callable[[], Tuple]] = None) -> List[float]:
    """Milliseconds of ``repeats`` calls ``fn(*setup())`` after ``warmup`` untimed ones.

    ``setup`` (e.g. cloning a decode state) runs before each call, outside the timed region. On CUDA each
    call is bracketed by CUDA events after a device synchronisation; on a CPU by ``time.perf_counter``.
    """
    times, _ = time_interleaved({"fn": (fn, setup)}, device, warmup, repeats, catch_oom=False)
    return times["fn"]


def time_interleaved(calls: Dict[str, Tuple[Callable[..., Any], Optional[Callable[[], Tuple]]]],
                     device: torch.device | str, warmup: int, repeats: int, catch_oom: bool = True,
                     burst: int = 1) -> Tuple[Dict[str, List[float]], Dict[str, str]]:
    """Time several ``name -> (fn, setup)`` round-robin: warm-up rounds, then rounds in which each function is
    called ``burst`` times in a row (``fn(*setup())``, setup untimed), until each has ``repeats`` timed calls.
    Interleaving exposes every function to the same drift of a shared machine, so their ratios stay
    meaningful when absolute times wander.

    ``burst > 1``: the first call of each burst is untimed. A call right after another function's runs with
    that function's data, code and allocator state in the caches; a serving loop that only decodes never
    pays that, and a burst times the steady calls instead (``burst=1`` times those cold calls).

    Returns ``(times, failed)``: milliseconds per name, and ``name -> stage`` ("warm-up"/"timed") for the
    functions that ran out of memory (dropped from later rounds; other errors propagate).
    """
    device = torch.device(device)
    times: Dict[str, List[float]] = {name: [] for name in calls}
    failed: Dict[str, str] = {}
    for phase, rounds in (("warm-up", warmup), ("timed", timed_rounds(repeats, burst))):
        for _ in range(rounds):
            for name, (fn, setup) in calls.items():
                for i in range(burst):
                    if name in failed or (phase == "timed" and len(times[name]) == repeats):
                        break
                    try:
                        args = setup() if setup is not None else ()
                        if phase == "timed" and (i > 0 or burst == 1):
                            times[name].append(_time_once(fn, args, device))
                        else:
                            fn(*args)
                            _sync(device)
                        args = ()
                    except Exception as err:  # noqa: BLE001 - only out-of-memory is caught
                        if not (catch_oom and is_out_of_memory(err)):
                            raise
                        args = ()
                        failed[name] = phase
                        free_memory(device)
    return times, failed


def timed_rounds(repeats: int, burst: int = 1) -> int:
    """Rounds of :func:`time_interleaved` that give ``repeats`` timed calls in bursts of ``burst``."""
    return -(-repeats // max(burst - 1, 1))


def is_out_of_memory(err: BaseException) -> bool:
    """Whether ``err`` is the device (or the host) running out of memory."""
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def free_memory(device: torch.device) -> None:
    """Give back what a failed or finished measurement held (Python garbage and the CUDA cache)."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def quantile(values: Sequence[float], q: float) -> float:
    """The ``q`` quantile of ``values``, linearly interpolated."""
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
