"""Register budgets of the prefill forward kernels compiled for sm_90 (H100), per variant.

Recorded with ``python -m fuxi_linear.kernels.resources --kernels fwd --dtypes fp32,bf16`` under triton 3.9.0
(2026-12-05, on top of commit b5cf07c: batch strides in token rows and never specialised; benchmarks/RESULTS.md).
A compile is deterministic for one triton release (ptxas ships in its wheel), so under 3.9 each variant must
stay at or below its recorded count: a change that needs more registers fails ``test_kernel_resources.py``
(record the new count here and in RESULTS.md when it is intended). Under another release the compiler's
choices differ (triton 3.6 used up to 15% more registers than 3.9 on the same variants, RESULTS.md), so the
budget there is 20% above the recorded count, at most the hardware's 255. Spilling is never within budget.
"""
from __future__ import annotations

import math

#: the triton release (major.minor) the counts were recorded with
RECORDED_WITH = "3.9"
#: (channel, dtype, split) -> registers per thread of the forward kernel (``kernels/resources.py``'s variants)
FORWARD_REGISTERS = {
    ("retention", "fp32", False): 255,
    ("retention", "fp32", True): 252,
    ("retention", "bf16", False): 221,
    ("retention", "bf16", True): 209,
    ("temporal", "fp32", False): 144,
    ("temporal", "fp32", True): 118,
    ("temporal", "bf16", False): 144,
    ("temporal", "bf16", True): 118,
    ("positional", "fp32", False): 228,
    ("positional", "fp32", True): 225,
    ("positional", "bf16", False): 204,
    ("positional", "bf16", True): 194,
}
#: the budget's margin under a triton release other than RECORDED_WITH
OTHER_RELEASE_MARGIN = 1.2
HARDWARE_MAX = 255


def register_budget(channel: str, dtype: str, split: bool, triton_version: str) -> int:
    """Registers the forward variant may use under ``triton_version`` (e.g. "3.9.0")."""
    recorded = FORWARD_REGISTERS[(channel, dtype, split)]
    if ".".join(triton_version.split(".")[:2]) == RECORDED_WITH:
        return recorded
    return min(HARDWARE_MAX, math.ceil(OTHER_RELEASE_MARGIN * recorded))
