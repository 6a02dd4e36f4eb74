"""Serving-speed benchmark of FuXi-Linear against the quadratic recommenders (the paper's Figure 2).

Two stages, for every model on the same random inputs in one run:

* ``prefill`` — ``model.prefill(history)`` of B users with full histories of T events (encode the whole
  history and build the decode state / KV cache);
* ``decode`` — one ``model.step(...)`` (append one event per user and produce its user vector) from a state
  prefilled at length T. Steps advance their state in place, so every timed step gets a fresh
  ``state.clone()`` made outside the timed region: each measurement is a step at exactly length T.

Timing: warm-up calls excluded, then the median of repeated calls, with their min and interquartile range
(a row whose repeats are too spread out is flagged ``noisy``, marked in the table, drawn hollow in the plot and
named in a closing warning, with the machine's load before and after the run); CUDA events around each call
on a GPU (the device is synchronised before each call, so launch overhead counts, as it does when serving),
``time.perf_counter`` on a CPU. At each length the models are timed round-robin (one call of each per round),
so a drifting load on a shared machine hits all of them alike. Models run in eval mode under
``torch.inference_mode()``. ``bf16``/``fp16`` cast the weights (half-precision inference, as served); the
FuXi-Linear states stay float32.

Regime (``--compile``): every model compiled (``torch.compile``: prefill and decode, compiled by untimed calls
before the timing; the CPU default) or every model eager; each row says which (``compiled``).

``fuxi-linear bench`` (flags in :mod:`fuxi_linear.cli`) calls :func:`run_bench`; the ``benchmarks/`` pytest
suites and the GPU suite reuse :func:`make_inputs`, :func:`build_bench_models`, :func:`prefill_call` and
:func:`decode_call`.

Modules: ``settings`` (what to measure, defaults, checks), ``machine`` (device and library versions, load,
datasheet bandwidths), ``inputs`` (the random histories, the models, the timed calls), ``compile`` (the
compiled regime), ``sizes`` (decode memory and bytes per step), ``timing`` (timed calls, round-robin, the
spread of repeats), ``run`` (one function per measured stage), ``result`` (what a run produces), ``report``
(tables, warning, JSON), ``plot`` (Figure 2) and ``host_syncs`` (host synchronisations and launches of a block of
code). ``fuxi-linear demo``, which also trains and evaluates, is :mod:`fuxi_linear.end_to_end_demo`.
"""
from __future__ import annotations

from .host_syncs import HOST_SYNC_OPS, HostSyncCounter, count_cuda_kernel_launches
from .inputs import BenchInputs, build_bench_models, decode_call, make_inputs, model_kwargs, prefill_call
from .compile import CompiledPrefill
from .machine import PEAK_BANDWIDTH_GBS, load_snapshot, machine_info, machine_line, nominal_peak_gbs
from .plot import plot_results, require_matplotlib
from .report import format_bytes, format_report, noise_warning, speedups, write_json
from .result import BenchResult
from .run import decode_stage, prefill_stage, run_bench, run_benchmark, throughput_stage
from .settings import (BASELINES, BENCH_MODELS, BENCH_NUM_ITEMS, COMPILE_CHOICES, CPU_DEFAULTS, CPU_MODEL,
                       CPU_SEQ_LENS, DTYPES, GPU_DECODE_USERS, GPU_DEFAULTS, GPU_SEQ_LENS, PAPER_MODEL, STAGES, THROUGHPUT_POSITION,
                       BenchError, BenchSettings, half_precision_supported, parse_models, parse_seq_lens,
                       resolve_bench_device)
from .sizes import decode_bytes_per_user, kv_cache_bytes_per_user, state_bytes_per_user
from .timing import is_out_of_memory, spread, time_call, time_interleaved

__all__ = [
    "BENCH_MODELS", "BASELINES", "STAGES", "DTYPES", "COMPILE_CHOICES", "GPU_SEQ_LENS", "CPU_SEQ_LENS",
    "GPU_DECODE_USERS",
    "THROUGHPUT_POSITION", "PAPER_MODEL", "CPU_MODEL", "GPU_DEFAULTS", "CPU_DEFAULTS", "BENCH_NUM_ITEMS",
    "BenchError", "BenchSettings", "parse_seq_lens", "parse_models", "half_precision_supported",
    "resolve_bench_device", "PEAK_BANDWIDTH_GBS", "nominal_peak_gbs", "machine_info", "machine_line", "load_snapshot",
    "CompiledPrefill",
    "BenchInputs", "make_inputs", "model_kwargs", "build_bench_models", "prefill_call", "decode_call",
    "kv_cache_bytes_per_user", "state_bytes_per_user", "decode_bytes_per_user",
    "time_call", "time_interleaved", "is_out_of_memory", "spread", "BenchResult", "run_benchmark", "run_bench",
    "prefill_stage", "decode_stage", "throughput_stage", "format_report", "noise_warning", "format_bytes", "speedups",
    "write_json", "plot_results", "require_matplotlib",
    "HostSyncCounter", "HOST_SYNC_OPS", "count_cuda_kernel_launches",
]
