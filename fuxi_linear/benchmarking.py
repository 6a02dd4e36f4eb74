"""Serving-speed benchmark of FuXi-Linear against the quadratic recommenders (the paper's Figure 2).

Two stages, for every model on the same random inputs in one run:

* ``prefill`` — ``model.prefill(history)`` of B users with full histories of T events (encode the whole
  history and build the decode state / KV cache);
* ``decode`` — one ``model.step(...)`` (append one event per user and produce its user vector) from a state
  prefilled at length T. Steps advance their state in place, so every timed step gets a fresh
  ``state.clone()`` made outside the timed region: each measurement is a step at exactly length T.

Timing: warm-up calls excluded, then the median of repeated calls; CUDA events around each call on a GPU
(the device is synchronised before each call, so launch overhead counts, as it does when serving),
``time.perf_counter`` on a CPU. At each length the models are timed round-robin (one call of each per round),
so a drifting load on a shared machine hits all of them alike. Models run in eval mode under ``torch.inference_mode()``. ``bf16``/``fp16``
cast the weights (half-precision inference, as served); the FuXi-Linear states stay float32.

``fuxi-linear bench`` (:func:`run_bench_command`) is the command-line front end; the ``benchmarks/`` pytest
suites reuse :func:`make_inputs`, :func:`build_bench_models` and :func:`decode_call`.
"""
from __future__ import annotations

import argparse
import gc
import inspect
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

#: Models in the order they are reported (FuXi-Linear first: the speed-ups are relative to it).
BENCH_MODELS: Tuple[str, ...] = ("fuxi-linear", "hstu", "fuxi-alpha", "sasrec")
BASELINES: Tuple[str, ...] = BENCH_MODELS[1:]
STAGES: Tuple[str, ...] = ("prefill", "decode")
DTYPES: Dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

GPU_SEQ_LENS: Tuple[int, ...] = (256, 512, 1024, 2048, 4096, 8192)
CPU_SEQ_LENS: Tuple[int, ...] = (64, 128, 256, 512)
#: Users per step of the decode-throughput sweep (FuXi-Linear alone): the GPU default; none by default on a CPU.
GPU_DECODE_USERS: Tuple[int, ...] = (64, 4096, 32768)
#: History length behind the states of the throughput sweep (a decode step is O(1) in it).
THROUGHPUT_POSITION = 256

#: Nominal (datasheet) HBM/GDDR bandwidth in GB/s by device-name fragment, first match wins; the bench's
#: "% of peak" uses it unless --peak-gbs is given. Nominal peaks: measured copy bandwidth is ~85-92% of them.
PEAK_BANDWIDTH_GBS: Tuple[Tuple[str, float], ...] = (
    ("H200", 4800.0), ("H100 NVL", 3900.0), ("H100 PCIe", 2000.0), ("H100", 3350.0), ("H800", 3350.0),
    ("GH200", 4000.0), ("B200", 8000.0), ("A100-SXM4-80GB", 2039.0), ("A100 80GB PCIe", 1935.0), ("A100", 1555.0),
    ("A800", 2039.0), ("L40S", 864.0), ("L40", 864.0), ("L4", 300.0), ("A10G", 600.0), ("A10", 600.0),
    ("V100", 900.0), ("RTX 4090", 1008.0), ("RTX 3090", 936.0),
)


def nominal_peak_gbs(device_name: str) -> Optional[float]:
    """The datasheet memory bandwidth of a GPU by name (:data:`PEAK_BANDWIDTH_GBS`), or None if unknown."""
    for fragment, gbs in PEAK_BANDWIDTH_GBS:
        if fragment.lower() in device_name.lower():
            return gbs
    return None

#: The paper's model scale (KuaiRand-27K / KuaiRec configs): the GPU default.
PAPER_MODEL = dict(embedding_dim=128, num_blocks=4, num_heads=4, qk_dim=32)
#: CPU default: a smaller model, so the whole grid finishes in a couple of minutes on a few cores.
CPU_MODEL = dict(embedding_dim=64, num_blocks=2, num_heads=4, qk_dim=16)
GPU_DEFAULTS = dict(batch_size=32, warmup=3, repeats=10, decode_repeats=50)
CPU_DEFAULTS = dict(batch_size=4, warmup=2, repeats=5, decode_repeats=15)

#: Catalogue size of the synthetic inputs (item ids only index the embedding table: it does not affect speed).
BENCH_NUM_ITEMS = 10_000
#: First timestamp (seconds) and mean gap of the synthetic histories.
_T0, _MEAN_GAP_S = 1_700_000_000, 600


class BenchError(ValueError):
    """A bad benchmark setting (reported by the CLI as ``fuxi-linear bench: error: ...``)."""


# ---------------------------------------------------------------------------------------------- settings
def parse_seq_lens(text: str, flag: str = "--seq-lens") -> Tuple[int, ...]:
    """``"64,128,256"`` -> ``(64, 128, 256)``: positive ints, sorted, duplicates dropped (``flag`` names the
    option in messages)."""
    if not isinstance(text, str) or not text.strip():
        raise BenchError(f"{flag} must be a comma-separated list of positive ints, got {text!r}")
    values = []
    for part in text.split(","):
        part = part.strip()
        try:
            value = int(part)
        except ValueError:
            raise BenchError(f"{flag} must be a comma-separated list of positive ints; {part!r} in {text!r} "
                             f"is not an int") from None
        if value < 1:
            raise BenchError(f"{flag} must be positive, got {value} in {text!r}")
        values.append(value)
    return tuple(sorted(set(values)))


def parse_models(text: str) -> Tuple[str, ...]:
    """``"fuxi-linear,hstu"`` -> names in report order; ``"all"`` = every model. Unknown names are an error."""
    if not isinstance(text, str) or not text.strip():
        raise BenchError(f"--models must be a comma-separated list of {', '.join(BENCH_MODELS)}, got {text!r}")
    names = [p.strip() for p in text.split(",") if p.strip()]
    if names == ["all"]:
        return BENCH_MODELS
    unknown = [n for n in names if n not in BENCH_MODELS]
    if unknown:
        raise BenchError(f"unknown model name(s) {', '.join(map(repr, unknown))} in --models; valid names: "
                         f"{', '.join(BENCH_MODELS)} (or all)")
    return tuple(n for n in BENCH_MODELS if n in names)


def half_precision_supported(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``dtype`` weights are a meaningful thing to time on ``device``: always on CUDA; on a CPU only
    where oneDNN has native kernels for it (e.g. bf16 on CPUs with AVX512-BF16 / AMX)."""
    if dtype == torch.float32 or device.type == "cuda":
        return True
    if device.type != "cpu":
        return False
    try:
        if dtype == torch.bfloat16:
            return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
        if dtype == torch.float16:
            return bool(torch.ops.mkldnn._is_mkldnn_fp16_supported())
    except (AttributeError, RuntimeError):
        return False
    return False


def resolve_bench_device(name: str) -> torch.device:
    if not isinstance(name, str):
        raise BenchError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BenchError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from None
    if device.type not in ("cpu", "cuda"):
        raise BenchError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BenchError(f"--device {name} was requested but CUDA is not available here (use --device cpu)")
    return device


@dataclass
class BenchSettings:
    """What to measure. ``None`` fields take the device's defaults (see :data:`GPU_DEFAULTS`,
    :data:`CPU_DEFAULTS`, :data:`PAPER_MODEL`, :data:`CPU_MODEL`); :meth:`resolve` fills them in."""

    device: str = "auto"
    seq_lens: Optional[Sequence[int]] = None
    batch_size: Optional[int] = None
    models: Sequence[str] = BENCH_MODELS
    dtype: str = "fp32"
    embedding_dim: Optional[int] = None
    num_blocks: Optional[int] = None
    num_heads: Optional[int] = None
    qk_dim: Optional[int] = None
    warmup: Optional[int] = None
    repeats: Optional[int] = None
    decode_repeats: Optional[int] = None
    num_items: int = BENCH_NUM_ITEMS
    seed: int = 0
    backend: str = "auto"  # FuXi-Linear's operator backend
    decode_users: Optional[Sequence[int]] = None  # N of the decode-throughput sweep (None: the device's default)
    peak_gbs: Optional[float] = None  # memory bandwidth for "% of peak" (None: nominal_peak_gbs of the GPU)
    threads: Optional[int] = None  # CPU: torch threads for the run (None = leave torch's setting)
    progress: bool = True
    notes: List[str] = field(default_factory=list)

    def resolve(self) -> "BenchSettings":
        """A copy with every default filled in and every value checked (raises :class:`BenchError`)."""
        device = resolve_bench_device(self.device)
        gpu = device.type == "cuda"
        out = BenchSettings(**{k: getattr(self, k) for k in self.__dataclass_fields__})
        out.device = str(device)
        out.notes = list(self.notes)
        if self.dtype not in DTYPES:
            raise BenchError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if not half_precision_supported(device, DTYPES[self.dtype]):
            raise BenchError(f"--dtype {self.dtype} is not supported on this {device.type}: half-precision timings "
                             f"need a CUDA device (or a CPU with native {self.dtype} kernels, which this one lacks); "
                             f"use --dtype fp32")
        models = parse_models(",".join(self.models)) if not isinstance(self.models, str) else parse_models(self.models)
        out.models = list(models)
        seq_lens = self.seq_lens if self.seq_lens is not None else (GPU_SEQ_LENS if gpu else CPU_SEQ_LENS)
        out.seq_lens = list(parse_seq_lens(seq_lens if isinstance(seq_lens, str) else ",".join(map(str, seq_lens))))
        users = self.decode_users if self.decode_users is not None else (GPU_DECODE_USERS if gpu else ())
        users = users if isinstance(users, str) else ",".join(map(str, users))
        out.decode_users = list(parse_seq_lens(users, "--decode-users")) if users.strip() else []
        if out.decode_users and "fuxi-linear" not in models:
            out.decode_users = []
        if out.peak_gbs is not None and not (isinstance(out.peak_gbs, (int, float)) and out.peak_gbs > 0):
            raise BenchError(f"--peak-gbs must be a positive number of GB/s, got {out.peak_gbs!r}")
        defaults = GPU_DEFAULTS if gpu else CPU_DEFAULTS
        for name, value in defaults.items():
            if getattr(out, name) is None:
                setattr(out, name, value)
        scale = PAPER_MODEL if gpu else CPU_MODEL
        explicit = {k: getattr(self, k) for k in scale if getattr(self, k) is not None}
        for name, value in scale.items():
            if getattr(out, name) is None:
                setattr(out, name, value)
        if not gpu and len(explicit) < len(scale):
            out.notes.append(
                "CPU default model: {num_blocks} blocks, D={embedding_dim}, H={num_heads}, dqk={qk_dim} (smaller than "
                "the paper's 4 blocks, D=128, H=4, dqk=32; pass --embedding-dim/--num-blocks/--num-heads/--qk-dim "
                "to change it)".format(**{k: getattr(out, k) for k in scale}))
        if out.threads is not None and (not isinstance(out.threads, int) or isinstance(out.threads, bool)
                                        or out.threads < 1):
            raise BenchError(f"--threads must be a positive int, got {out.threads!r}")
        if out.threads is not None and gpu:
            out.notes.append(f"--threads {out.threads} ignored on {device.type}")
            out.threads = None
        for name in ("batch_size", "embedding_dim", "num_blocks", "num_heads", "qk_dim", "repeats",
                     "decode_repeats", "num_items"):
            value = getattr(out, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be a positive int, got {value!r}")
        if not isinstance(out.warmup, int) or out.warmup < 0:
            raise BenchError(f"--warmup must be an int >= 0, got {out.warmup!r}")
        if out.embedding_dim % out.num_heads:
            raise BenchError(f"--embedding-dim {out.embedding_dim} must be divisible by --num-heads {out.num_heads}")
        if "fuxi-linear" in out.models and out.embedding_dim % 16:
            raise BenchError(f"--embedding-dim {out.embedding_dim} must be a multiple of 16 for FuXi-Linear "
                             f"(8 temporal periods -> 16 temporal heads)")
        return out

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def steps_per_state(self) -> int:
        """Decode steps a prefilled state/cache must have room for (warm-up + timed)."""
        return self.warmup + self.decode_repeats

    @property
    def max_seq_len(self) -> int:
        """Models are built for the longest history plus every decode step after it."""
        longest = max(list(self.seq_lens) + ([THROUGHPUT_POSITION] if self.decode_users else []))
        return longest + self.steps_per_state + 1


# ---------------------------------------------------------------------------------------------- machine
def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_info(device: torch.device, dtype: str) -> Dict[str, Any]:
    """Device name, library versions, dtype and threads of this run."""
    try:
        import triton

        triton_version = triton.__version__
    except Exception:  # not installed, or no driver
        triton_version = None
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        load = None
    return {"device": device.type, "device_name": name, "torch": torch.__version__, "triton": triton_version,
            "dtype": dtype, "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "load_average": load}


def machine_line(info: Dict[str, Any]) -> str:
    return (f"machine: {info['device']} ({info['device_name']}) | torch {info['torch']} | "
            f"triton {info['triton'] or 'not available'} | dtype {info['dtype']} | {info['threads']} torch threads "
            f"({info['cpu_count']} CPUs"
            + (f", load average {info['load_average'][0]:.1f}" if info.get("load_average") else "") + ")")


# ---------------------------------------------------------------------------------------------- inputs
@dataclass
class BenchInputs:
    """One random batch shared by every model: B full histories of T events, and one new event per user."""

    item_ids: torch.Tensor  # (B, T) int64 in [1, num_items]
    timestamps: torch.Tensor  # (B, T) int64 seconds, increasing
    lengths: torch.Tensor  # (B,) all T
    query_timestamps: torch.Tensor  # (B,) time of the next event
    step_item_ids: torch.Tensor  # (B,) the new events
    step_timestamps: torch.Tensor  # (B,) = query_timestamps
    step_query_timestamps: torch.Tensor  # (B,) the request after the new event

    @property
    def history(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.item_ids, self.timestamps, self.lengths, self.query_timestamps

    @property
    def step(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.step_item_ids, self.step_timestamps, self.step_query_timestamps


def make_inputs(batch_size: int, seq_len: int, num_items: int = BENCH_NUM_ITEMS, seed: int = 0,
                device: torch.device | str = "cpu") -> BenchInputs:
    """Random histories (uniform items, exponential gaps in seconds) from a seeded CPU generator, so a given
    ``(batch_size, seq_len, seed)`` gives the same inputs on any device."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + seq_len)
    B, T = batch_size, seq_len
    items = torch.randint(1, num_items + 1, (B, T + 1), generator=gen)
    gaps = (torch.empty(B, T + 1).exponential_(1.0 / _MEAN_GAP_S, generator=gen)).long() + 1
    times = _T0 + torch.cumsum(gaps, dim=1)
    dev = torch.device(device)
    return BenchInputs(
        item_ids=items[:, :T].to(dev), timestamps=times[:, :T].to(dev),
        lengths=torch.full((B,), T, dtype=torch.int64, device=dev), query_timestamps=times[:, T].to(dev),
        step_item_ids=items[:, T].to(dev), step_timestamps=times[:, T].to(dev),
        step_query_timestamps=(times[:, T] + _MEAN_GAP_S).to(dev),
    )


def model_kwargs(name: str, s: BenchSettings) -> Dict[str, Any]:
    kwargs = dict(num_items=s.num_items, max_seq_len=s.max_seq_len, embedding_dim=s.embedding_dim,
                  num_blocks=s.num_blocks, num_heads=s.num_heads, qk_dim=s.qk_dim, dropout=0.0)
    if name == "fuxi-linear":
        kwargs["backend"] = s.backend
    return kwargs


def build_bench_models(s: BenchSettings) -> Dict[str, torch.nn.Module]:
    """Each model of ``s.models`` in eval mode, on ``s.device`` in ``s.dtype`` (same seed for each)."""
    from .baselines import build_model

    models = {}
    for name in s.models:
        torch.manual_seed(s.seed)
        models[name] = build_model(name, **model_kwargs(name, s)).eval().to(device=s.torch_device,
                                                                             dtype=s.torch_dtype)
    return models


def prefill_call(model: torch.nn.Module, inputs: BenchInputs, capacity: Optional[int] = None):
    """``model.prefill(history)``; the KV-cache baselines preallocate ``capacity`` event slots."""
    if capacity is not None and "capacity" in inspect.signature(model.prefill).parameters:  # KV-cache baselines
        return model.prefill(*inputs.history, capacity=capacity)
    return model.prefill(*inputs.history)


def decode_call(model: torch.nn.Module, state, inputs: BenchInputs):
    """One ``model.step`` for every user (advances ``state`` in place)."""
    return model.step(state, *inputs.step)


# ---------------------------------------------------------------------------------------------- sizes
def kv_cache_bytes_per_user(cache, filled: int) -> int:
    """Bytes one user's KV cache holds at ``filled`` events (keys, values and, for the time-aware models,
    timestamps of each layer), plus its length counter: computed from the cache's dims and dtypes, not the
    preallocated capacity that ``KVCache.nbytes_per_user`` counts."""
    L, _, H, _, dqk = cache.keys.shape
    dv = cache.values.shape[-1]
    per_event = L * H * (dqk * cache.keys.element_size() + dv * cache.values.element_size())
    if cache.timestamps is not None:
        per_event += cache.timestamps.element_size()
    return per_event * filled + cache.lengths.element_size()


def state_bytes_per_user(state, filled: int) -> int:
    """Decode memory per user after ``filled`` events: a DecodeState's (constant), a KV cache's at ``filled``."""
    if hasattr(state, "keys") and hasattr(state, "values"):
        return kv_cache_bytes_per_user(state, filled)
    return int(state.nbytes_per_user())


def decode_bytes_per_user(state, filled: int, embedding_dim: int, dtype: torch.dtype) -> int:
    """Bytes one decode step must move per user, at least: FuXi-Linear reads and writes its state (2x its
    bytes); a KV cache is read at ``filled`` events and one event is written. Plus the inputs (an item id, two
    int64 times) and the output user vector."""
    io = 8 + 2 * 8 + embedding_dim * torch.empty(0, dtype=dtype).element_size()
    if hasattr(state, "keys") and hasattr(state, "values"):
        per_event = kv_cache_bytes_per_user(state, 1) - state.lengths.element_size()
        return kv_cache_bytes_per_user(state, filled) + per_event + io
    return 2 * int(state.nbytes_per_user()) + io


# ---------------------------------------------------------------------------------------------- timing
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
                     device: torch.device | str, warmup: int, repeats: int, catch_oom: bool = True
                     ) -> Tuple[Dict[str, List[float]], Dict[str, str]]:
    """Time several ``name -> (fn, setup)`` round-robin: warm-up rounds, then ``repeats`` rounds in which each
    function is called once (``fn(*setup())``, setup untimed). Interleaving exposes every function to the
    same drift of a shared machine, so their ratios stay meaningful when absolute times wander.

    Returns ``(times, failed)``: milliseconds per name, and ``name -> stage`` ("warm-up"/"timed") for the
    functions that ran out of memory (dropped from later rounds; other errors propagate).
    """
    device = torch.device(device)
    times: Dict[str, List[float]] = {name: [] for name in calls}
    failed: Dict[str, str] = {}
    for phase, rounds in (("warm-up", warmup), ("timed", repeats)):
        for _ in range(rounds):
            for name, (fn, setup) in calls.items():
                if name in failed:
                    continue
                try:
                    args = setup() if setup is not None else ()
                    if phase == "timed":
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
                    _free_memory(device)
    return times, failed


def is_out_of_memory(err: BaseException) -> bool:
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    if isinstance(err, MemoryError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def _free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = int(pos), min(int(pos) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


# ---------------------------------------------------------------------------------------------- run
@dataclass
class BenchResult:
    settings: BenchSettings
    machine: Dict[str, Any]
    rows: List[Dict[str, Any]]
    notes: List[str]
    peak_gbs: Optional[float] = None

    def ms(self, model: str, stage: str, seq_len: int) -> Optional[float]:
        for r in self.rows:
            if (r["model"], r["stage"], r["seq_len"]) == (model, stage, seq_len):
                return r["ms"]
        return None

    def row(self, model: str, stage: str, seq_len: int) -> Optional[Dict[str, Any]]:
        for r in self.rows:
            if (r["model"], r["stage"], r["seq_len"]) == (model, stage, seq_len):
                return r
        return None


def _progress(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="bench", unit="run", leave=False)


def run_benchmark(settings: BenchSettings, log: Callable[[str], None] = print) -> BenchResult:
    """Time prefill and decode of every model at every length (see the module docstring)."""
    s = settings.resolve()
    device = s.torch_device
    threads_before = torch.get_num_threads()
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    try:
        return _run(s, device, log)
    finally:
        torch.set_num_threads(threads_before)


def _run(s: BenchSettings, device: torch.device, log: Callable[[str], None]) -> BenchResult:
    machine = machine_info(device, s.dtype)
    notes = list(s.notes)
    models = build_bench_models(s)
    base = dict(batch_size=s.batch_size, device=device.type, device_name=machine["device_name"], dtype=s.dtype,
                embedding_dim=s.embedding_dim, num_blocks=s.num_blocks, num_heads=s.num_heads, qk_dim=s.qk_dim,
                torch=machine["torch"], triton=machine["triton"], threads=machine["threads"])
    rows: List[Dict[str, Any]] = []
    out_of_memory_at: Dict[str, int] = {}
    bar = _progress(len(s.seq_lens) * len(s.models) * len(STAGES), s.progress)
    say = (lambda msg: bar.write(msg)) if bar is not None else log
    peak = s.peak_gbs if s.peak_gbs is not None else (
        nominal_peak_gbs(machine["device_name"]) if device.type == "cuda" else None)
    throughput: List[Dict[str, Any]] = []
    try:
        with torch.inference_mode():
            for T in s.seq_lens:
                rows += _measure_length(T, models, s, device, base, say, out_of_memory_at, bar)
            for N in s.decode_users:
                throughput.append(_measure_throughput(N, models["fuxi-linear"], s, device, base, peak, say))
    finally:
        if bar is not None:
            bar.close()
    order = {m: i for i, m in enumerate(s.models)}
    rows.sort(key=lambda r: (order[r["model"]], STAGES.index(r["stage"]), r["seq_len"]))
    for r in rows:
        if r["stage"] == "decode" and r["ms"] is not None:
            _add_rates(r, peak, device)
    if peak is not None:
        notes.append(f"% of peak: against {peak:.0f} GB/s ("
                     + ("--peak-gbs" if s.peak_gbs is not None else "the nominal datasheet bandwidth of this GPU")
                     + "); bytes per step = the minimum a step must move (2x the state per user for FuXi-Linear, "
                       "the KV cache read for the baselines, plus inputs and outputs)")
    return BenchResult(settings=s, machine=machine, rows=rows + throughput, notes=notes, peak_gbs=peak)


def _add_rates(row: Dict[str, Any], peak: Optional[float], device: torch.device) -> None:
    """users/s of a decode row; on CUDA also GB/s of its minimum traffic and % of ``peak``."""
    seconds = row["ms"] / 1e3
    row["users_per_s"] = row["batch_size"] / seconds
    if device.type == "cuda" and row.get("bytes_per_step"):
        row["gbs"] = row["bytes_per_step"] / seconds / 1e9
        row["pct_of_peak"] = 100.0 * row["gbs"] / peak if peak else None


def _measure_throughput(N: int, model, s: BenchSettings, device, base, peak, say) -> Dict[str, Any]:
    """FuXi-Linear decode steps of N users at once (an all-zero state at position ``THROUGHPUT_POSITION``:
    a step's work does not depend on the values or the history length), stepped in place."""
    row = dict(model="fuxi-linear", stage="decode-throughput", seq_len=THROUGHPUT_POSITION, **{**base, "batch_size": N})
    try:
        state = model.empty_state(N, device)
        state.position.fill_(THROUGHPUT_POSITION)
        inputs = make_inputs(N, 1, s.num_items, s.seed, device)
        timed, failed = time_interleaved({"step": (lambda: decode_call(model, state, inputs), None)}, device,
                                         s.warmup, s.decode_repeats)
        times = timed["step"]
    except Exception as err:  # noqa: BLE001
        if not is_out_of_memory(err):
            raise
        failed = {"step": "setup"}
    if failed:
        say(f"fuxi-linear decode of {N} users: out of memory; skipped")
        _free_memory(device)
        return dict(row, ms=None, status="out of memory")
    nbytes = state_bytes_per_user(state, THROUGHPUT_POSITION)
    row.update(ms=statistics.median(times), ms_q25=_quantile(times, 0.25), ms_q75=_quantile(times, 0.75),
               repeats=len(times), state_bytes_per_user=nbytes, status="ok",
               bytes_per_step=N * decode_bytes_per_user(state, THROUGHPUT_POSITION, s.embedding_dim, s.torch_dtype))
    del state
    _free_memory(device)
    _add_rates(row, peak, device)
    return row


def _measure_length(T, models, s: BenchSettings, device, base, say, out_of_memory_at, bar) -> List[Dict[str, Any]]:
    """Prefill, then decode, of every model at length T, each stage timed round-robin over the models."""
    inputs = make_inputs(s.batch_size, T, s.num_items, s.seed, device)
    capacity = T + s.steps_per_state + 1
    rows: List[Dict[str, Any]] = []

    def skip(name, stages, status):
        rows.extend(dict(model=name, stage=st, seq_len=T, ms=None, status=status, **base) for st in stages)

    def out_of_memory(name, stage):
        out_of_memory_at[name] = T
        say(f"{name} T={T}: out of memory in {stage}; skipped (and the longer lengths of {name})")
        skip(name, STAGES[STAGES.index(stage):], "out of memory")

    alive = []
    for name in s.models:
        if name in out_of_memory_at:
            skip(name, STAGES, f"skipped: out of memory at T={out_of_memory_at[name]}")
        else:
            alive.append(name)
    if bar is not None:
        bar.set_description(f"prefill T={T}")
    times, failed = time_interleaved(
        {name: ((lambda m=models[name]: prefill_call(m, inputs, capacity)), None) for name in alive},
        device, s.warmup, s.repeats)
    states, nbytes = {}, {}
    for name in alive:
        if name in failed:
            out_of_memory(name, "prefill")
            continue
        try:
            _, states[name] = prefill_call(models[name], inputs, capacity)
        except Exception as err:  # noqa: BLE001
            if not is_out_of_memory(err):
                raise
            _free_memory(device)
            out_of_memory(name, "prefill")
            continue
        nbytes[name] = state_bytes_per_user(states[name], T)
        rows.append(_row(name, "prefill", T, times[name], nbytes[name], base))
    if bar is not None:
        bar.update(len(s.models))
        bar.set_description(f"decode T={T}")
    times, failed = time_interleaved(
        {name: ((lambda st, m=models[name]: decode_call(m, st, inputs)), (lambda st=states[name]: (st.clone(),)))
         for name in states},
        device, s.warmup, s.decode_repeats)
    for name in states:
        if name in failed:
            out_of_memory(name, "decode")
        else:
            row = _row(name, "decode", T, times[name], nbytes[name], base)
            row["bytes_per_step"] = s.batch_size * decode_bytes_per_user(states[name], T, s.embedding_dim,
                                                                         s.torch_dtype)
            rows.append(row)
    states.clear()
    _free_memory(device)
    if bar is not None:
        bar.update(len(s.models))
    return rows


def _row(name, stage, T, times, nbytes, base) -> Dict[str, Any]:
    return dict(model=name, stage=stage, seq_len=T, ms=statistics.median(times), ms_q25=_quantile(times, 0.25),
                ms_q75=_quantile(times, 0.75), repeats=len(times), state_bytes_per_user=nbytes, status="ok",
                **base)


# ---------------------------------------------------------------------------------------------- report
def _fmt_ms(ms: Optional[float]) -> str:
    if ms is None:
        return "—"
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def _fmt_bytes(n: Optional[int]) -> str:
    if n is None:
        return "—"
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def speedups(result: BenchResult) -> List[Dict[str, Any]]:
    """``{"stage", "seq_len", "baseline", "speedup"}``: baseline ms / FuXi-Linear ms for each measured pair."""
    out = []
    s = result.settings
    if "fuxi-linear" not in s.models:
        return out
    for stage in STAGES:
        for T in s.seq_lens:
            ours = result.ms("fuxi-linear", stage, T)
            for b in (m for m in s.models if m != "fuxi-linear"):
                theirs = result.ms(b, stage, T)
                if ours and theirs:
                    out.append(dict(stage=stage, seq_len=T, baseline=b, speedup=theirs / ours))
    return out


def format_report(result: BenchResult) -> str:
    """Machine line, settings, then markdown tables: ms per batch with FuXi-Linear's speed-up over each
    baseline, and decode-state bytes per user."""
    s = result.settings
    lines = [machine_line(result.machine),
             f"settings: batch {s.batch_size} users | model {s.num_blocks} blocks, D={s.embedding_dim}, "
             f"H={s.num_heads}, dqk={s.qk_dim} | median of {s.repeats} prefill / {s.decode_repeats} decode calls "
             f"after {s.warmup} warm-up, models timed round-robin | "
             + ("CUDA events" if s.torch_device.type == "cuda" else "time.perf_counter")
             + " | inference mode, eval mode | decode = one step from a state prefilled at T (cloned per call)"]
    lines += [f"note: {n}" for n in result.notes]
    baselines = [m for m in s.models if m != "fuxi-linear"]
    has_ours = "fuxi-linear" in s.models
    header = ["stage", "T"] + [f"{m} ms" for m in s.models]
    if has_ours:
        header += [f"× vs {b}" for b in baselines]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for stage in STAGES:
        for T in s.seq_lens:
            cells = [stage, str(T)]
            for m in s.models:
                r = result.row(m, stage, T)
                cells.append(_fmt_ms(r["ms"]) if r and r["ms"] is not None else ("OOM" if r else "—"))
            if has_ours:
                ours = result.ms("fuxi-linear", stage, T)
                for b in baselines:
                    theirs = result.ms(b, stage, T)
                    cells.append(f"{theirs / ours:.1f}×" if ours and theirs else "—")
            lines.append("| " + " | ".join(cells) + " |")
    header = ["T"] + list(s.models)
    lines += ["", "decode memory per user at length T (FuXi-Linear: DecodeState, constant; baselines: KV cache "
                  "filled to T, not its preallocated capacity):", "",
              "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for T in s.seq_lens:
        cells = [str(T)]
        for m in s.models:
            r = result.row(m, "prefill", T)
            cells.append(_fmt_bytes(r.get("state_bytes_per_user")) if r else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines += _throughput_lines(result)
    return "\n".join(lines)


def _fmt_rate(x: Optional[float], unit: str = "") -> str:
    if x is None:
        return "—"
    for suffix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def _throughput_lines(result: BenchResult) -> List[str]:
    """Decode throughput: users/s of every decode row (GB/s and % of peak on CUDA), and the N sweep."""
    s = result.settings
    cuda = s.torch_device.type == "cuda"
    decode = [r for r in result.rows if r["stage"] == "decode" and r.get("users_per_s")]
    sweep = [r for r in result.rows if r["stage"] == "decode-throughput"]
    if not decode and not sweep:
        return []
    header = ["model", "T", "users/step", "ms", "users/s"] + (["GB/s", "% of peak"] if cuda else [])
    lines = ["", "decode throughput (one event per user per step" + (
        "; GB/s = the minimum bytes a step moves / time" if cuda else "") + "):", "",
        "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in decode + sweep:
        cells = [r["model"], str(r["seq_len"]), str(r["batch_size"]), _fmt_ms(r["ms"]), _fmt_rate(r.get("users_per_s"))]
        if cuda:
            pct = r.get("pct_of_peak")
            cells += [f"{r['gbs']:.1f}" if r.get("gbs") is not None else "—", f"{pct:.0f}%" if pct is not None else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_json(result: BenchResult, path: str | os.PathLike) -> Path:
    """The rows as a JSON list (one object per model, stage and length)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result.rows, indent=1) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib, which is not installed: pip install 'fuxi-linear[plot]' "
                         "(or pip install matplotlib)") from None
    return plt


def plot_results(result: BenchResult, path: str | os.PathLike) -> Path:
    """Figure-2-style PNG: ms per batch vs history length, log-log, prefill and decode panels."""
    plt = require_matplotlib()
    from matplotlib.ticker import NullLocator

    s = result.settings
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"fuxi-linear": dict(color="tab:red", marker="o", linewidth=2.2),
              "hstu": dict(color="tab:blue", marker="s"), "fuxi-alpha": dict(color="tab:green", marker="^"),
              "sasrec": dict(color="tab:purple", marker="D")}
    for ax, stage in zip(axes, STAGES):
        for m in s.models:
            pts = [(T, result.ms(m, stage, T)) for T in s.seq_lens]
            pts = [(T, ms) for T, ms in pts if ms is not None]
            if pts:
                ax.plot(*zip(*pts), label=m, **styles.get(m, {}))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(s.seq_lens), [str(T) for T in s.seq_lens])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("history length T (events)")
        ax.set_ylabel("ms per batch" if stage == "prefill" else "ms per step (one event per user)")
        ax.set_title(f"{stage} (batch {s.batch_size})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    info = result.machine
    fig.suptitle(f"{info['device']}: {info['device_name']} | {s.dtype} | {s.num_blocks} blocks D={s.embedding_dim} "
                 f"H={s.num_heads} dqk={s.qk_dim}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------------------------- O(1) check
def step_cost(fn: Callable[[], Any]) -> Dict[str, int]:
    """Work of one call, counted at the ATen level: ``"flops"`` (matmul-like ops, via
    ``torch.utils.flop_counter``), ``"elements"`` (total numel of every tensor each op reads or writes: a proxy
    for memory traffic), ``"max_numel"`` (the largest such tensor) and ``"ops"`` (ATen calls).
    An O(1) decode step gives the same numbers whatever the history length behind its state."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_flatten
    from torch.utils.flop_counter import FlopCounterMode

    class _Sizes(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.max_numel, self.ops, self.elements = 0, 0, 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            self.ops += 1
            for t in tree_flatten((args, kwargs or {}, out))[0]:
                if isinstance(t, torch.Tensor):
                    self.max_numel = max(self.max_numel, t.numel())
                    self.elements += t.numel()
            return out

    sizes = _Sizes()
    flops = FlopCounterMode(display=False)
    with flops, sizes:
        fn()
    return {"flops": int(flops.get_total_flops()), "elements": sizes.elements, "max_numel": sizes.max_numel,
            "ops": sizes.ops}


# ---------------------------------------------------------------------------------------------- syncs, launches
#: ATen operators that make the host wait for the device: reading a value back (``item``, ``int(t)``,
#: ``bool(t)``: all ``_local_scalar_dense``) and operators whose output size depends on values.
HOST_SYNC_OPS = frozenset({"aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::unique_dim",
                           "aten::_unique", "aten::_unique2", "aten::unique_consecutive", "aten::item"})
#: ATen operators that never launch a kernel (views and metadata).
_NO_KERNEL_OPS = frozenset({"aten::view", "aten::_unsafe_view", "aten::unsqueeze", "aten::squeeze", "aten::select",
                            "aten::slice", "aten::split", "aten::split_with_sizes", "aten::unbind", "aten::narrow",
                            "aten::as_strided", "aten::t", "aten::transpose", "aten::permute", "aten::expand",
                            "aten::flatten", "aten::unflatten", "aten::alias", "aten::detach", "aten::resolve_conj",
                            "aten::resolve_neg", "aten::_reshape_alias", "aten::empty", "aten::lift_fresh"})


class HostSyncCounter:
    """Context manager counting what a block of code does that would synchronise a GPU with the host, by
    structure, so it works on a CPU too: every ATen call of :data:`HOST_SYNC_OPS` (seen by a
    ``TorchDispatchMode``), copies between devices, and calls of ``Tensor.item``/``tolist``/``__int__``/
    ``__float__``/``__bool__``/``__index__`` (``tolist`` of a CPU tensor reaches no ATen operator). Also counts
    ``aten_ops`` (every ATen call) and ``launches`` (ATen calls that are not views or metadata: on a GPU, about
    one kernel each). ``events`` lists the syncs seen.
    """

    _METHODS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__")

    def __init__(self) -> None:
        self.events: List[str] = []
        self.aten_ops = 0
        self.launches = 0
        self._saved: Dict[str, Any] = {}
        self._mode = None
        self._inside_method = 0  # a read-back method and the ATen call it makes are one sync

    @property
    def syncs(self) -> int:
        return len(self.events)

    def __enter__(self) -> "HostSyncCounter":
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_flatten

        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func._schema.name
                counter.aten_ops += 1
                if name not in _NO_KERNEL_OPS:
                    counter.launches += 1
                if name in HOST_SYNC_OPS:
                    if not counter._inside_method:
                        counter.events.append(name)
                elif name in ("aten::_to_copy", "aten::copy_"):
                    devices = {t.device for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
                    target = (kwargs or {}).get("device")
                    if target is not None:
                        devices.add(torch.device(target))
                    if len(devices) > 1:
                        counter.events.append(f"{name} across {sorted(map(str, devices))}")
                return func(*args, **(kwargs or {}))

        for method in self._METHODS:
            original = getattr(torch.Tensor, method)
            self._saved[method] = original

            def wrapped(tensor, *a, _original=original, _method=method, **k):
                if not counter._inside_method:
                    counter.events.append(f"Tensor.{_method}")
                counter._inside_method += 1
                try:
                    return _original(tensor, *a, **k)
                finally:
                    counter._inside_method -= 1

            setattr(torch.Tensor, method, wrapped)
        self._mode = _Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._mode.__exit__(*exc)
        for method, original in self._saved.items():
            setattr(torch.Tensor, method, original)
        self._saved.clear()


def count_cuda_kernel_launches(fn: Callable[[], Any], device: torch.device) -> int:
    """CUDA kernels (and memcpy/memset) that one call of ``fn`` launches, counted with ``torch.profiler``."""
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize(device)
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


# ---------------------------------------------------------------------------------------------- CLI
def add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (default: cuda if available), cpu, cuda or cuda:N")
    p.add_argument("--seq-lens", help="comma list of history lengths (default "
                   f"{','.join(map(str, GPU_SEQ_LENS))} on GPU, {','.join(map(str, CPU_SEQ_LENS))} on CPU)")
    p.add_argument("--batch-size", type=int, help=f"users per batch (default {GPU_DEFAULTS['batch_size']} on GPU, "
                   f"{CPU_DEFAULTS['batch_size']} on CPU)")
    p.add_argument("--models", default="all", help=f"comma list of {', '.join(BENCH_MODELS)} (default all)")
    p.add_argument("--dtype", default="fp32", help="fp32 (default), bf16 or fp16 (weights cast; GPU, or a CPU "
                   "with native kernels for it)")
    p.add_argument("--embedding-dim", type=int, help="D (default 128 on GPU = the paper; 64 on CPU)")
    p.add_argument("--num-blocks", type=int, help="default 4 on GPU (the paper), 2 on CPU")
    p.add_argument("--num-heads", type=int, help="default 4")
    p.add_argument("--qk-dim", type=int, help="per-head q/k width (default 32 on GPU = the paper, 16 on CPU)")
    p.add_argument("--warmup", type=int, help="untimed calls before timing (default "
                   f"{GPU_DEFAULTS['warmup']} GPU / {CPU_DEFAULTS['warmup']} CPU)")
    p.add_argument("--repeats", type=int, help="timed prefill calls; the median is reported (default "
                   f"{GPU_DEFAULTS['repeats']} GPU / {CPU_DEFAULTS['repeats']} CPU)")
    p.add_argument("--decode-repeats", type=int, help="timed decode steps (default "
                   f"{GPU_DEFAULTS['decode_repeats']} GPU / {CPU_DEFAULTS['decode_repeats']} CPU)")
    p.add_argument("--decode-users", help="comma list of users per step for FuXi-Linear's decode-throughput sweep "
                   f"(default {','.join(map(str, GPU_DECODE_USERS))} on GPU, none on CPU)")
    p.add_argument("--peak-gbs", type=float, help="memory bandwidth (GB/s) for the decode '%% of peak' (default: "
                   "the GPU's nominal datasheet figure, when known)")
    p.add_argument("--backend", default="auto", choices=("auto", "triton", "reference"),
                   help="FuXi-Linear's operator backend (auto: Triton on CUDA)")
    p.add_argument("--threads", type=int, help="CPU only: torch threads for the run (default: torch's; 1 is "
                   "the steadiest on a shared, oversubscribed machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the rows here")
    p.add_argument("--plot", help="write a Figure-2-style PNG here (needs matplotlib)")
    p.add_argument("--no-progress", action="store_true")


def settings_from_args(args: argparse.Namespace) -> BenchSettings:
    return BenchSettings(
        device=args.device, seq_lens=parse_seq_lens(args.seq_lens) if args.seq_lens is not None else None,
        batch_size=args.batch_size, models=parse_models(args.models), dtype=args.dtype,
        embedding_dim=args.embedding_dim, num_blocks=args.num_blocks, num_heads=args.num_heads, qk_dim=args.qk_dim,
        warmup=args.warmup, repeats=args.repeats, decode_repeats=args.decode_repeats, seed=args.seed,
        backend=args.backend, threads=args.threads, progress=not args.no_progress,
        decode_users=parse_seq_lens(args.decode_users, "--decode-users") if args.decode_users is not None else None,
        peak_gbs=args.peak_gbs,
    )


def run_bench(settings: BenchSettings, json_path: Optional[str] = None, plot_path: Optional[str] = None,
              log: Callable[[str], None] = print) -> BenchResult:
    """Run, print the report, write the JSON rows and the plot."""
    if plot_path:
        require_matplotlib()  # fail before spending minutes measuring
    result = run_benchmark(settings, log=log)
    log(format_report(result))
    if json_path:
        log(f"wrote {write_json(result, json_path)}")
    if plot_path:
        log(f"wrote {plot_results(result, plot_path)}")
    return result


def run_bench_command(args: argparse.Namespace) -> BenchResult:
    return run_bench(settings_from_args(args), json_path=args.json, plot_path=args.plot)


__all__ = [
    "BENCH_MODELS", "STAGES", "DTYPES", "GPU_SEQ_LENS", "CPU_SEQ_LENS", "BenchError", "BenchSettings",
    "BenchInputs", "BenchResult", "make_inputs", "build_bench_models", "prefill_call", "decode_call",
    "time_call", "kv_cache_bytes_per_user", "state_bytes_per_user", "run_benchmark", "run_bench",
    "format_report", "write_json", "plot_results", "speedups", "step_cost", "parse_seq_lens", "parse_models",
    "machine_info", "add_bench_arguments", "run_bench_command", "half_precision_supported", "HostSyncCounter",
    "HOST_SYNC_OPS", "count_cuda_kernel_launches", "decode_bytes_per_user", "nominal_peak_gbs",
    "PEAK_BANDWIDTH_GBS",
]
