"""Steady host memory for CPU timings: glibc's ``malloc`` told to keep the memory it frees.

By default glibc serves every allocation above a threshold (128 KiB, raised dynamically up to 32 MiB) with a
fresh ``mmap`` and returns it to the kernel when freed, and trims the heap top beyond 128 KiB. A CPU prefill of
a few hundred events allocates megabytes per call (a quadratic model's attention scores most of all), so every
call then page-faults its buffers in again; on a small virtual machine the cost of those faults varies from call
to call (measured on the 2-core development VM: HSTU's eager prefill at T=256 took 14.8-33.1 ms over 30 calls,
median 25.4, with the defaults, and 9.9-14.1 ms, median 10.3, with the memory kept). A serving process in a
steady state reuses its memory; so do the timings, for every model alike, while :func:`steady_host_memory` is
active. Elsewhere than glibc (macOS, musl) it does nothing and says so.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
from typing import Iterator, Optional

# mallopt parameters (glibc malloc.h)
M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -2, -3, -4
#: what :func:`steady_host_memory` sets: no heap trimming below 2 GiB of free top, 64 MiB of top padding, and no
#: mmap-served chunks (every allocation from the heap, which then keeps what is freed)
STEADY = {M_TRIM_THRESHOLD: (1 << 31) - 1, M_TOP_PAD: 64 << 20, M_MMAP_MAX: 0}
#: glibc's documented static defaults, restored on exit (its dynamic mmap threshold stays off once any is set)
GLIBC_DEFAULTS = {M_TRIM_THRESHOLD: 128 << 10, M_TOP_PAD: 128 << 10, M_MMAP_THRESHOLD: 128 << 10, M_MMAP_MAX: 65536}


@functools.lru_cache(maxsize=None)
def _glibc_mallopt():
    """``mallopt`` of the C library if it is glibc's, else None."""
    try:
        name = ctypes.util.find_library("c")
        libc = ctypes.CDLL(name or "libc.so.6")
        gnu_get_libc_version = libc.gnu_get_libc_version  # glibc only
        gnu_get_libc_version.restype = ctypes.c_char_p
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def set_malloc_options(options: dict) -> bool:
    """``mallopt(param, value)`` for each item; True when the C library is glibc and every call succeeded."""
    mallopt = _glibc_mallopt()
    if mallopt is None:
        return False
    return all(mallopt(param, value) == 1 for param, value in options.items())


@contextlib.contextmanager
def steady_host_memory(enabled: bool = True) -> Iterator[Optional[str]]:
    """While active, freed host memory stays with the process (see the module docstring). Yields a one-line
    description of what was done, for the report (None when ``enabled`` is False)."""
    if not enabled:
        yield None
        return
    if not set_malloc_options(STEADY):
        yield "host memory: the C library is not glibc; its allocator was left as it is"
        return
    try:
        yield ("host memory: glibc malloc keeps freed memory during the timings (no mmap-served chunks, no heap "
               "trimming), so calls reuse their buffers instead of page-faulting them in again, every model alike")
    finally:
        set_malloc_options(GLIBC_DEFAULTS)
