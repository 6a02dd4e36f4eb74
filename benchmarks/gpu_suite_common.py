"""Shared pieces of the GPU suite (``benchmarks/gpu_suite.py``): the section contract, the channel shapes, random
inputs, timing (CUDA events and CUDA graphs, inputs rotated past L2), bandwidth figures and the time budget.

A section is a function ::

    def run_<name>_section(device: torch.device, dry_run: bool, peak_gbs: Optional[float],
                           log: Callable[[str], None]) -> List[Dict[str, Any]]

returning rows (flat dicts of str/int/float/bool/None; the driver renders the keys, in first-seen order, as
the columns of a markdown table). ``peak_gbs`` is the device's peak memory bandwidth in GB/s (10^9 bytes/s)
for "% of peak" figures: the datasheet figure when the device name is known (H100, H200), else the measured
copy bandwidth; None when neither is known. Raising is allowed: the driver records a failure row and goes on
(raise :class:`SectionError` to keep the rows gathered so far next to the failure).
Sections read :data:`SETTINGS` for ``--quick`` and call :func:`time_left` to stay inside their share of the
time budget.
"""
from __future__ import annotations

import math
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional

import torch

Row = Dict[str, Any]
Log = Callable[[str], None]
SectionFn = Callable[[torch.device, bool, Optional[float], Log], List[Row]]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}


class SectionError(RuntimeError):
    """A section's failure that keeps its rows (e.g. some tests failed: the counts still belong in the table)."""

    def __init__(self, message: str, rows: List[Row]):
        super().__init__(message)
        self.rows = rows


# ----------------------------------------------------------------------------------------------- settings
@dataclass
class SuiteSettings:
    """Run-wide settings the driver fills in before each section (defaults suit a section called alone)."""

    quick: bool = False
    #: ``time.monotonic()`` by which the running section should be done (its share of ``--budget-s``).
    section_deadline: float = math.inf
    #: measured device-to-device copy bandwidth (bytes read + written), GB/s
    copy_gbs: Optional[float] = None
    #: datasheet memory bandwidth of the device, GB/s (None when the device name is not in the table)
    datasheet_gbs: Optional[float] = None


SETTINGS = SuiteSettings()


def time_left() -> float:
    """Seconds left of the running section's share of the budget (inf when called outside the driver)."""
    return SETTINGS.section_deadline - time.monotonic()


def progress(items: Iterable, desc: str, total: Optional[int] = None):
    """A tqdm bar on stderr (hidden when stderr is not a terminal: sections also log one line per case)."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, total=total, leave=False, file=sys.stderr, disable=None, dynamic_ncols=True)


# ------------------------------------------------------------------------------------------------- shapes
@dataclass(frozen=True)
class ChannelShape:
    """One FuXi-Linear channel at the paper's scale (D = 128) as an operator call."""

    heads: int
    k: int
    v: int
    decay: Optional[str]  # "g_gamma" (per head), "g" (per token) or None
    shared_qk: bool  # q/k have batch size 1 and are shared by every sequence


CHANNELS: Dict[str, ChannelShape] = {
    "retention": ChannelShape(heads=4, k=32, v=32, decay="g_gamma", shared_qk=False),
    "temporal": ChannelShape(heads=16, k=2, v=8, decay="g", shared_qk=False),
    "positional": ChannelShape(heads=1, k=32, v=128, decay=None, shared_qk=True),
}

#: strong decays: this log-decay on this fraction of the steps (the temporal channel's clamp is exp(-20))
STRONG_LOG_DECAY = -20.0
STRONG_FRACTION = 0.3


def make_channel_inputs(
    channel: str,
    B: int,
    T: int,
    dtype: torch.dtype,
    device: torch.device,
    seed: int,
    strong_decay: bool = False,
    requires_grad: bool = False,
) -> Dict[str, torch.Tensor]:
    """Random operator inputs of ``channel`` (never zeros): ``q, k: (B or 1, T, H, K)`` and ``v: (B, T, H, V)``
    in ``dtype``; float32 ``g: (B, T, H)`` in [-0.5, -0.01) (``strong_decay``: -20 on 30% of the entries) or
    ``g_gamma: (H,)`` = -1/2, -1/4, ... (the retention rates at init); nothing for the positional channel."""
    shape = CHANNELS[channel]
    gen = torch.Generator(device=device).manual_seed(seed)
    H, K, V = shape.heads, shape.k, shape.v
    Bq = 1 if shape.shared_qk else B

    def randn(*size):
        return torch.randn(*size, generator=gen, device=device, dtype=torch.float32)

    out = {"q": (randn(Bq, T, H, K) / K ** 0.5).to(dtype), "k": (randn(Bq, T, H, K) / K ** 0.5).to(dtype),
           "v": randn(B, T, H, V).to(dtype)}
    if shape.decay == "g":
        g = -(0.01 + 0.49 * torch.rand(B, T, H, generator=gen, device=device))
        if strong_decay:
            strong = torch.rand(B, T, H, generator=gen, device=device) < STRONG_FRACTION
            g = torch.where(strong, torch.full_like(g, STRONG_LOG_DECAY), g)
        out["g"] = g
    elif shape.decay == "g_gamma":
        out["g_gamma"] = -(0.5 ** torch.arange(1, H + 1, dtype=torch.float32, device=device))
    if requires_grad:
        for x in out.values():
            x.requires_grad_(True)
    return out


def rel_rms(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """``||actual - expected|| / ||expected||`` in float64 (inf when ``actual`` is not finite)."""
    a, e = actual.detach().double(), expected.detach().double()
    if a.shape != e.shape:
        raise ValueError(f"shape mismatch: {tuple(a.shape)} vs {tuple(e.shape)}")
    if not bool(torch.isfinite(a).all()):
        return math.inf
    den = float(e.norm())
    return float((a - e).norm()) / den if den > 0 else float(a.norm())


def nbytes(*tensors: Optional[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


# ---------------------------------------------------------------------------------------------- bandwidth
def datasheet_bandwidth_gbs(device_name: str) -> Optional[float]:
    """The datasheet figure for a CUDA device name (``torch.cuda.get_device_name``), None when unknown: the
    bench's table (:func:`fuxi_linear.bench.nominal_peak_gbs`), imported here so that fuxi_linear is only
    imported once the suite has put the source tree on the path."""
    from fuxi_linear.bench.machine import nominal_peak_gbs

    return nominal_peak_gbs(device_name)


def l2_cache_bytes(device: torch.device) -> int:
    """L2 size of a CUDA device (50 MB when torch does not say); 0 on a CPU."""
    if device.type != "cuda":
        return 0
    return int(getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2 ** 20))


def rotation_count(set_bytes: int, device: torch.device, dry_run: bool, memory_cap: int = 8 * 2 ** 30) -> int:
    """How many input sets to rotate through so that consecutive calls never find their data in L2:
    enough sets for twice the L2 size (at least 2), within ``memory_cap`` bytes."""
    if dry_run or device.type != "cuda":
        return 2
    wanted = max(2, math.ceil(2 * l2_cache_bytes(device) / max(set_bytes, 1)))
    return int(max(1, min(wanted, 256, memory_cap // max(set_bytes, 1))))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# -------------------------------------------------------------------------------------------------- timing
@dataclass
class Timing:
    median_ms: float
    p20_ms: float
    p80_ms: float
    reps: int
    first_call_s: float  # the first call alone (compilation, autotuning), excluded from the statistics


def _quantile(values: List[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def time_eager(call: Callable[[int], Any], n_sets: int, device: torch.device, target_s: float,
               warmup: int = 3, min_reps: int = 5, max_reps: int = 200) -> Timing:
    """Per-call time of ``call(i)`` (i = the input set, rotated) as a Python caller sees it on the device:
    CUDA events around each call (host launch overhead included when the GPU outruns Python), or
    ``time.perf_counter`` with a synchronisation on a CPU. Warm-up excluded; median and 20/80% quantiles."""
    t0 = time.perf_counter()
    call(0)
    sync(device)
    first_call_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    for i in range(warmup):
        call((1 + i) % n_sets)
    sync(device)
    per_call = (time.perf_counter() - t0) / warmup if warmup else first_call_s
    reps = int(min(max_reps, max(min_reps, target_s / max(per_call, 1e-6))))
    times: List[float] = []
    if device.type == "cuda":
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
        for r, (start, end) in enumerate(events):
            start.record()
            call((1 + warmup + r) % n_sets)
            end.record()
        sync(device)
        times = [start.elapsed_time(end) for start, end in events]
    else:
        for r in range(reps):
            t0 = time.perf_counter()
            call((1 + warmup + r) % n_sets)
            times.append((time.perf_counter() - t0) * 1e3)
    return Timing(statistics.median(times), _quantile(times, 0.2), _quantile(times, 0.8), reps, first_call_s)


def time_graph(call: Callable[[int], Any], n_sets: int, target_s: float, min_reps: int = 5,
               max_reps: int = 100) -> float:
    """GPU time per call, without host overhead: one CUDA graph runs ``call(i)`` for every input set in turn;
    the median replay time over ``n_sets``. Raises what the capture raises (e.g. a host synchronisation inside
    the call). ``call`` must already have run (compiled, autotuned)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up on a side stream, as capture requires
        for i in range(n_sets):
            call(i)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(n_sets):
            call(i)
    t0 = time.perf_counter()
    graph.replay()
    torch.cuda.synchronize()
    per_replay = time.perf_counter() - t0
    reps = int(min(max_reps, max(min_reps, target_s / max(per_replay, 1e-6))))
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(reps)]
    for start, end in events:
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    ms = statistics.median(start.elapsed_time(end) for start, end in events) / n_sets
    del graph
    return ms


def measure_copy_bandwidth(device: torch.device, dry_run: bool) -> float:
    """Device-to-device copy of a buffer far larger than L2 (256 MiB on a GPU), GB/s counting the bytes read
    and the bytes written, median of timed copies after warm-up."""
    n = (4 if dry_run else 64) * 2 ** 20  # float32 elements
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    timing = time_eager(lambda i: dst.copy_(src), 1, device, target_s=0.05 if dry_run else 0.3, min_reps=3)
    return 2 * nbytes(src) / (timing.median_ms * 1e-3) / 1e9
