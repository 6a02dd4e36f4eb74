"""pytest-benchmark suites of fuxi-linear.

    pytest benchmarks/ --benchmark-only                       # CPU: small shapes, a couple of minutes
    FUXI_BENCH_SEQ_LENS=1024,8192 pytest benchmarks/ --benchmark-only   # on a GPU: the paper's scale
    pytest benchmarks/ --benchmark-disable                    # every benchmark once, as a plain test

The README's test command runs them once as tests with ``--benchmark-disable`` (tiny lengths, eager:
``tests/test_bench.py::test_the_pytest_benchmark_suites_run_once_as_tests``), so they cannot rot.

Environment (all optional):

* ``FUXI_BENCH_DEVICE``: ``auto`` (default: cuda when available), ``cpu``, ``cuda``;
* ``FUXI_BENCH_SEQ_LENS``: comma list of lengths T (default ``128,512`` on CPU, ``1024,4096,8192`` on GPU);
* ``FUXI_BENCH_BATCH``: batch size B (default 2 on CPU, 32 on GPU);
* ``FUXI_BENCH_SCALE``: ``paper`` = the paper's model (4 blocks, D=128, H=4, dqk=32; the GPU default) or
  ``small`` (2 blocks, D=64, H=4, dqk=16; the CPU default) for the model-level suite;
* ``FUXI_BENCH_DTYPE``: ``fp32`` (default), ``bf16``, ``fp16`` (GPU);
* ``FUXI_BENCH_THREADS``: CPU torch threads (1 is the steadiest on a shared machine);
* ``FUXI_BENCH_COMPILE``: ``auto`` (default: every model compiled on a CPU, eager on CUDA), ``on``, ``off`` --
  the regime of the model-level suite, as ``fuxi-linear bench --compile``.

On CUDA every benchmarked call ends with a device synchronisation, so the wall-clock times are GPU times.
``fuxi-linear bench`` measures the model-level grid with CUDA events and prints the comparison table.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Tuple

import pytest
import torch

from fuxi_linear.bench import COMPILE_CHOICES, CPU_MODEL, DTYPES, PAPER_MODEL, parse_seq_lens, resolve_bench_device


@dataclass(frozen=True)
class BenchEnv:
    device: torch.device
    seq_lens: Tuple[int, ...]
    batch_size: int
    dtype: str
    model: dict
    threads: int | None
    compile: str

    @property
    def gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def synced(self, fn: Callable) -> Callable:
        """``fn`` followed by a device synchronisation on CUDA (so a wall-clock timer sees the GPU work)."""
        if not self.gpu:
            return fn

        def call(*args, **kwargs):
            out = fn(*args, **kwargs)
            torch.cuda.synchronize(self.device)
            return out

        return call


def _env() -> BenchEnv:
    device = resolve_bench_device(os.environ.get("FUXI_BENCH_DEVICE", "auto"))
    gpu = device.type == "cuda"
    seq_lens = parse_seq_lens(os.environ.get("FUXI_BENCH_SEQ_LENS", "1024,4096,8192" if gpu else "128,512"))
    batch = int(os.environ.get("FUXI_BENCH_BATCH", "32" if gpu else "2"))
    scale = os.environ.get("FUXI_BENCH_SCALE", "paper" if gpu else "small")
    if scale not in ("paper", "small"):
        raise pytest.UsageError(f"FUXI_BENCH_SCALE must be paper or small, got {scale!r}")
    dtype = os.environ.get("FUXI_BENCH_DTYPE", "fp32")
    if dtype not in DTYPES:
        raise pytest.UsageError(f"FUXI_BENCH_DTYPE must be one of {', '.join(DTYPES)}, got {dtype!r}")
    threads = os.environ.get("FUXI_BENCH_THREADS")
    compile_ = os.environ.get("FUXI_BENCH_COMPILE", "auto")
    if compile_ not in COMPILE_CHOICES:
        raise pytest.UsageError(f"FUXI_BENCH_COMPILE must be one of {', '.join(COMPILE_CHOICES)}, got {compile_!r}")
    return BenchEnv(device=device, seq_lens=seq_lens, batch_size=batch, dtype=dtype,
                    model=dict(PAPER_MODEL if scale == "paper" else CPU_MODEL),
                    threads=int(threads) if threads else None, compile=compile_)


ENV = _env()
if ENV.threads is not None and not ENV.gpu:
    torch.set_num_threads(ENV.threads)


def pytest_generate_tests(metafunc):
    """Every benchmark taking ``seq_len`` runs at each FUXI_BENCH_SEQ_LENS; ``backend`` at each usable one."""
    if "seq_len" in metafunc.fixturenames:
        metafunc.parametrize("seq_len", ENV.seq_lens, ids=[f"T{t}" for t in ENV.seq_lens])
    if "backend" in metafunc.fixturenames:
        # Triton only on a GPU: the CPU interpreter is for correctness, far too slow to time.
        backends = ["triton", "cpu"] if ENV.gpu else ["cpu"]
        metafunc.parametrize("backend", backends)


def pytest_report_header(config):
    return (f"fuxi-linear benchmarks: device {ENV.device} | T {','.join(map(str, ENV.seq_lens))} | "
            f"B {ENV.batch_size} | dtype {ENV.dtype} | model {ENV.model} | torch threads {torch.get_num_threads()} | "
            f"compile {ENV.compile} (model suite)")


@pytest.fixture(scope="session")
def bench_env() -> BenchEnv:
    return ENV
