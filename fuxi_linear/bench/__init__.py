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
so a drifting load on a shared machine hits all of them alike. Models run in eval mode under
``torch.inference_mode()``. ``bf16``/``fp16`` cast the weights (half-precision inference, as served); the
FuXi-Linear states stay float32.

``fuxi-linear bench`` (flags in :mod:`fuxi_linear.cli`) calls :func:`run_bench`; the ``benchmarks/`` pytest
suites and the GPU suite reuse :func:`make_inputs`, :func:`build_bench_models` and :func:`decode_call`.

Modules: ``settings`` (what to measure, defaults, checks), ``machine`` (device and library versions, datasheet
bandwidths), ``inputs`` (the random histories, the models, the timed calls), ``sizes`` (decode memory and
bytes per step), ``timing`` (timed calls, round-robin), ``run`` (the measurement grid), ``report`` (tables,
JSON), ``plot`` (Figure 2), ``host_syncs`` (host synchronisations and launches of a block of code) and
``demo`` (``fuxi-linear demo``).
"""
from __future__ import annotations

from .demo import DemoSettings, read_table, run_demo
from .host_syncs import HOST_SYNC_OPS, HostSyncCounter, count_cuda_kernel_launches
from .inputs import BenchInputs, build_bench_models, decode_call, make_inputs, model_kwargs, prefill_call
from .machine import PEAK_BANDWIDTH_GBS, machine_info, machine_line, nominal_peak_gbs
from .plot import plot_results, require_matplotlib
from .report import format_bytes, format_report, speedups, write_json
from .run import BenchResult, run_bench, run_benchmark
from .settings import (BASELINES, BENCH_MODELS, BENCH_NUM_ITEMS, CPU_DEFAULTS, CPU_MODEL, CPU_SEQ_LENS, DTYPES,
                       GPU_DECODE_USERS, GPU_DEFAULTS, GPU_SEQ_LENS, PAPER_MODEL, STAGES, THROUGHPUT_POSITION,
                       BenchError, BenchSettings, half_precision_supported, parse_models, parse_seq_lens,
                       resolve_bench_device)
from .sizes import decode_bytes_per_user, kv_cache_bytes_per_user, state_bytes_per_user
from .timing import is_out_of_memory, time_call, time_interleaved

__all__ = [
    "BENCH_MODELS", "BASELINES", "STAGES", "DTYPES", "GPU_SEQ_LENS", "CPU_SEQ_LENS", "GPU_DECODE_USERS",
    "THROUGHPUT_POSITION", "PAPER_MODEL", "CPU_MODEL", "GPU_DEFAULTS", "CPU_DEFAULTS", "BENCH_NUM_ITEMS",
    "BenchError", "BenchSettings", "parse_seq_lens", "parse_models", "half_precision_supported",
    "resolve_bench_device", "PEAK_BANDWIDTH_GBS", "nominal_peak_gbs", "machine_info", "machine_line",
    "BenchInputs", "make_inputs", "model_kwargs", "build_bench_models", "prefill_call", "decode_call",
    "kv_cache_bytes_per_user", "state_bytes_per_user", "decode_bytes_per_user",
    "time_call", "time_interleaved", "is_out_of_memory", "BenchResult", "run_benchmark", "run_bench",
    "format_report", "format_bytes", "speedups", "write_json", "plot_results", "require_matplotlib",
    "HostSyncCounter", "HOST_SYNC_OPS", "count_cuda_kernel_launches", "DemoSettings", "run_demo", "read_table",
]
