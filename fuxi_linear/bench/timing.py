"""Timing of calls: CUDA events on a GPU, a host clock (``time.perf_counter``) on a CPU, warm-up excluded,
several functions timed round-robin so a drifting load hits them alike; out-of-memory is caught and reported,
not fatal. :func:`spread` summarises the repeats of a row (min, median, interquartile range) and says whether
they are too spread out to be read (:data:`NOISY_IQR_OVER_MEDIAN`, :data:`NOISY_MEDIAN_OVER_MIN`)."""
from __future__ import annotations

import gc
import statistics
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

#: A host clock in seconds (``time.perf_counter``; a test passes a stub with known ticks).
Clock = Callable[[], float]

#: A row is noisy when the interquartile range of its repeats exceeds this fraction of their median ...
NOISY_IQR_OVER_MEDIAN = 0.25
#: ... or when its median exceeds its fastest call by this factor (calls slowed down by something else).
NOISY_MEDIAN_OVER_MIN = 2.0
#: Fewer timed calls than this give no spread to judge (the row's ``noisy`` is None).
MIN_REPEATS_FOR_SPREAD = 3


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_once(fn: Callable[..., Any], args: Tuple, device: torch.device, clock: Clock) -> float:
    """Milliseconds of one call: CUDA events after a device synchronisation, or ``clock`` around the call."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn(*args)
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = clock()
    fn(*args)
    return (clock() - t0) * 1e3


def time_call(fn: Callable[..., Any], device: torch.device | str, warmup: int, repeats: int,
              setup: Optional[Callable[[], Tuple]] = None, clock: Clock = time.perf_counter) -> List[float]:
    """Milliseconds of ``repeats`` calls ``fn(*setup())`` after ``warmup`` untimed ones.

    ``setup`` (e.g. cloning a decode state) runs before each call, outside the timed region. On CUDA each
    call is bracketed by CUDA events after a device synchronisation; on a CPU by ``clock``.
    """
    times, _ = time_interleaved({"fn": (fn, setup)}, device, warmup, repeats, catch_oom=False, clock=clock)
    return times["fn"]


def time_interleaved(calls: Dict[str, Tuple[Callable[..., Any], Optional[Callable[[], Tuple]]]],
                     device: torch.device | str, warmup: int, repeats: int, catch_oom: bool = True,
                     burst: int = 1, clock: Clock = time.perf_counter
                     ) -> Tuple[Dict[str, List[float]], Dict[str, str]]:
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
                            times[name].append(_time_once(fn, args, device, clock))
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


def spread(times: Sequence[float]) -> Dict[str, Any]:
    """The fields of a row that describe its repeats (milliseconds): ``ms`` (the median, what tables show),
    ``ms_min``, ``ms_q25``, ``ms_q75``, ``ms_iqr``, ``repeats``, and ``noisy`` with the reason in ``noise``.

    ``noisy`` is True when the interquartile range exceeds :data:`NOISY_IQR_OVER_MEDIAN` of the median or the
    median exceeds :data:`NOISY_MEDIAN_OVER_MIN` times the fastest call (something else slowed the calls
    down: a busy machine, a compile, a page-fault storm); None when there are fewer than
    :data:`MIN_REPEATS_FOR_SPREAD` calls to judge.
    """
    if not times:
        raise ValueError("spread of no timed calls")
    median, q25, q75 = statistics.median(times), quantile(times, 0.25), quantile(times, 0.75)
    low = min(times)
    row: Dict[str, Any] = dict(ms=median, ms_min=low, ms_q25=q25, ms_q75=q75, ms_iqr=q75 - q25, repeats=len(times))
    if len(times) < MIN_REPEATS_FOR_SPREAD:
        return dict(row, noisy=None, noise=f"{len(times)} timed call(s): too few to judge the spread")
    reasons = []
    if q75 - q25 > NOISY_IQR_OVER_MEDIAN * median:
        reasons.append(f"IQR/median {(q75 - q25) / median:.2f} > {NOISY_IQR_OVER_MEDIAN}")
    if median > NOISY_MEDIAN_OVER_MIN * low:
        reasons.append(f"median/min {median / low:.1f} > {NOISY_MEDIAN_OVER_MIN:g}")
    return dict(row, noisy=bool(reasons), noise="; ".join(reasons) or None)
