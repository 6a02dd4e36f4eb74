"""Mixed precision and ``torch.compile`` set-up of a training run, checked before any training starts.

* ``precision``: ``"fp32"`` or ``"bf16"`` (autocast to bfloat16 on CUDA, and on a CPU where torch's CPU autocast
  produces bfloat16). Parameters, optimizer state and gradients stay float32 (no loss scaling is needed for
  bf16); the operator keeps its channel states and decay cumsums in float32 (the kernels accumulate in float32
  and the CPU path switches autocast off).
* ``compile_backend``: any name ``torch.compiler.list_backends`` knows; a tiny function is compiled and run once
  on the training device so that a backend that cannot work here (no C++ compiler for inductor on a CPU, say)
  fails with a clear message instead of at the first training step.
"""
from __future__ import annotations

from typing import Optional

import torch

PRECISIONS = ("fp32", "bf16")


def _bf16_autocast_works(device: torch.device) -> bool:
    """True when a matmul under ``torch.autocast(device.type, bfloat16)`` really yields bfloat16 here."""
    try:
        if not torch.amp.is_autocast_available(device.type):
            return False
        a = torch.ones(4, 4, device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return (a @ a).dtype == torch.bfloat16
    except (RuntimeError, TypeError, AssertionError):
        return False


def autocast_dtype(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``precision`` on ``device`` (None for fp32); ValueError when not supported."""
    if precision not in PRECISIONS:
        raise ValueError(f"--precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"--precision bf16: the GPU {torch.cuda.get_device_name(device)} does not support "
                         "bfloat16; use --precision fp32")
    if not _bf16_autocast_works(device):
        raise ValueError(f"--precision bf16: torch {torch.__version__} has no bfloat16 autocast on {device.type} "
                         "here; use --precision fp32")
    return torch.bfloat16


def compile_backends() -> list:
    """Every backend name ``torch.compile`` accepts in this torch (debug ones such as aot_eager included)."""
    return sorted(torch.compiler.list_backends(exclude_tags=()))


def check_compile_backend(backend: str, device: torch.device) -> None:
    """ValueError naming ``--compile-backend`` unless ``backend`` is known and compiles a tiny function on
    ``device``."""
    known = compile_backends()
    if backend not in known:
        raise ValueError(f"--compile-backend {backend!r} is not a torch.compile backend here; choose one of "
                         f"{', '.join(known)} (on a CPU without a C++ compiler: aot_eager)")

    def probe(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.silu(x) * 2 + 1

    try:
        torch._dynamo.reset()
        out = torch.compile(probe, backend=backend)(torch.arange(8.0, device=device))
        ok = torch.allclose(out, probe(torch.arange(8.0, device=device)))
    except Exception as err:  # the backend's own failure (missing compiler, driver, ...) is the message
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"--compile-backend {backend} cannot compile on {device.type} here ({first_line}); "
                         "try --compile-backend aot_eager, or drop --compile") from None
    finally:
        torch._dynamo.reset()
    if not ok:
        raise ValueError(f"--compile-backend {backend} compiled a test function to wrong results on {device.type}")
