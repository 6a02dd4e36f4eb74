"""Compile-time resources of the kernels for an H100 (sm_90), checked on any machine: every forward variant
stays within its recorded register budget (``register_budgets.py``) and spills nothing.

``python -m fuxi_linear.kernels.resources`` compiles for a CUDA target without a GPU (ptxas ships in the triton
wheel). It runs here in a subprocess without ``TRITON_INTERPRET`` (under the interpreter ``@triton.jit``
functions cannot be compiled), and only for the forward variants the assertion covers: the main forward
kernel of each channel shape, float32 and bfloat16, whole-sequence and split-T (12 compiles, ~2 s each).
"""
import json
import os
import subprocess
import sys

import pytest
import triton

from register_budgets import FORWARD_REGISTERS, register_budget

try:
    import triton.backends.nvidia  # noqa: F401  (the CUDA compiler backend and its bundled ptxas)
    HAVE_CUDA_BACKEND = True
except ImportError:  # a triton build without the NVIDIA backend
    HAVE_CUDA_BACKEND = False


@pytest.mark.skipif(not HAVE_CUDA_BACKEND, reason="triton has no CUDA backend here")
def test_forward_variants_within_register_budget_and_no_spill_on_sm90(tmp_path):
    out = tmp_path / "resources.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    cmd = [sys.executable, "-m", "fuxi_linear.kernels.resources", "--kernels", "fwd", "--dtypes", "fp32,bf16",
           "--json", str(out)]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "compile-time resources, no GPU run: sm_90" in result.stdout
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert report["arch"] == 90 and len(rows) == 3 * 2 * 2
    assert {r["function"] for r in rows} == {"decay_attn_fwd_kernel", "small_heads_fwd_kernel"}
    assert {(r["channel"], r["dtype"], r["split"]) for r in rows} == set(FORWARD_REGISTERS)
    spilled = [r for r in rows if r["spill_stores"] or r["spill_loads"]]
    assert not spilled, spilled
    over = {(r["channel"], r["dtype"], r["split"]): (r["registers"],
                                                     register_budget(r["channel"], r["dtype"], r["split"],
                                                                     triton.__version__)) for r in rows}
    over = {k: v for k, v in over.items() if not v[0] <= v[1]}
    assert not over, f"registers above their budgets (used, budget) under triton {triton.__version__}: {over}"
