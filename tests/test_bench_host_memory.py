"""``fuxi_linear.bench.host_memory``: while the CPU timings run, glibc's malloc keeps freed memory (no
mmap-served chunks), so a call reuses its buffers instead of page-faulting fresh ones; the defaults come back
afterwards, and the report says what was done."""
import ast
import subprocess
import sys

import pytest

from fuxi_linear.bench import BenchSettings, format_report, run_benchmark
from fuxi_linear.bench.host_memory import steady_host_memory


#: run in a fresh process: what a large allocation is served from depends on the heap's history (free chunks
#: that earlier tests of this process left behind can serve it without a new mapping, steady or not)
SEQUENCE = r"""
import ctypes, ctypes.util, sys
import torch
from fuxi_linear.bench.host_memory import steady_host_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                               "fsmblks", "uordblks", "fordblks", "keepcost")]
try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    libc.gnu_get_libc_version
    mallinfo2 = libc.mallinfo2
except (OSError, AttributeError):
    print("no mallinfo2"); sys.exit(0)
mallinfo2.restype = Mallinfo2
size = 48 << 20  # above glibc's largest dynamic mmap threshold (32 MiB): mmap-served by default

def grows_mmapped():
    before = mallinfo2().hblkhd
    t = torch.empty(size, dtype=torch.uint8)
    t.fill_(1)
    grew = mallinfo2().hblkhd - before
    del t
    return grew

grew = [grows_mmapped()]
with steady_host_memory() as note:
    assert "keeps freed memory" in note
    grew.append(grows_mmapped())
# the defaults are back: the heap top the steady phase kept serves one more call and is trimmed when that call's
# buffer is freed; the call after it maps fresh memory again
grows_mmapped()
grew.append(grows_mmapped())
print(grew)
"""


def test_large_buffers_come_from_the_heap_only_while_steady():
    out = subprocess.run([sys.executable, "-c", SEQUENCE], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    if out.stdout.strip() == "no mallinfo2":
        pytest.skip("needs glibc >= 2.33 (mallinfo2)")
    before, steady, after = ast.literal_eval(out.stdout.strip().splitlines()[-1])
    size = 48 << 20
    assert before >= size  # the defaults: a fresh mapping, returned to the kernel when freed
    assert steady == 0  # from the heap, which keeps it
    assert after >= size  # the defaults are back


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
