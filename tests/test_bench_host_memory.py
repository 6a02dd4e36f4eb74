"""``fuxi_linear.bench.host_memory``: while the CPU timings run, glibc's malloc keeps freed memory (no
mmap-served chunks), so a call reuses its buffers instead of page-faulting fresh ones; the defaults come back
afterwards, and the report says what was done."""
import ctypes
import ctypes.util

import pytest
import torch

from fuxi_linear.bench import BenchSettings, format_report, run_benchmark
from fuxi_linear.bench.host_memory import steady_host_memory


class _Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def _mmapped_bytes():
    """Bytes glibc currently serves from mmap-ed chunks (``mallinfo2().hblkhd``); skips elsewhere."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version
        mallinfo2 = libc.mallinfo2
    except (OSError, AttributeError):
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    mallinfo2.restype = _Mallinfo2
    return lambda: mallinfo2().hblkhd


def test_large_buffers_come_from_the_heap_only_while_steady():
    mmapped = _mmapped_bytes()
    size = 48 << 20  # above glibc's largest dynamic mmap threshold (32 MiB): mmap-served by default

    def grows_mmapped():
        before = mmapped()
        t = torch.empty(size, dtype=torch.uint8)
        t.fill_(1)
        grew = mmapped() - before
        del t
        return grew

    assert grows_mmapped() >= size  # the defaults: a fresh mapping, returned to the kernel when freed
    with steady_host_memory() as note:
        assert "keeps freed memory" in note
        assert grows_mmapped() == 0  # from the heap, which keeps it
    # the defaults are back: the heap top the steady phase kept serves one more call and is trimmed when that
    # call's buffer is freed; the call after it maps fresh memory again
    grows_mmapped()
    assert grows_mmapped() >= size


def test_disabled_does_nothing():
    with steady_host_memory(False) as note:
        assert note is None


def test_cpu_runs_report_the_host_memory_note():
    result = run_benchmark(BenchSettings(device="cpu", seq_lens=[8], models=["fuxi-linear"], batch_size=2,
                                         embedding_dim=16, num_blocks=1, num_heads=2, qk_dim=4, repeats=1,
                                         decode_repeats=1, warmup=0, compile="off", progress=False),
                           log=lambda _: None)
    assert any(n.startswith("host memory:") for n in result.notes)
    assert "note: host memory:" in format_report(result)
