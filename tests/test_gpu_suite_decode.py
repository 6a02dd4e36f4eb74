"""The GPU suite's decode section (``benchmarks/gpu_suite_decode.py``) in its CPU dry run: the fused kernel
under the Triton interpreter, tiny shapes, every row kind present and JSON-serialisable."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from fuxi_linear.ops import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton is not installed")


def _section():
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_suite_decode.py"
    spec = importlib.util.spec_from_file_location("gpu_suite_decode", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run_decode_section


def test_decode_section_dry_run_on_cpu():
    messages = []
    rows = _section()(torch.device("cpu"), True, 100.0, messages.append)
    json.dumps(rows)  # flat JSON scalars only
    assert all(isinstance(v, (str, int, float, bool, type(None))) for r in rows for v in r.values())
    fused = [r for r in rows if r["item"] == "fused_block_step"]
    separate = [r for r in rows if r["item"] == "three decay_attention_step"]
    assert {(r["N"], r["layout"]) for r in fused} == {(2, "rows"), (2, "pool"), (5, "rows"), (5, "pool")}
    assert len(separate) == len(fused) and all(r["launches"] == 3 for r in separate)
    for r in fused:
        assert r["launches"] == 1 and r["gpu_us"] is None and r["eager_us"] > 0 and r["gbs"] > 0
        assert r["pct_of_peak"] == pytest.approx(r["gbs"])  # against the 100 GB/s given
    steps = {r["mode"]: r for r in rows if r["item"] == "model.step"}
    assert steps["eager, validate=False"]["host_syncs"] == 0
    assert steps["eager, validate=True"]["host_syncs"] == 1  # on a CPU the check reads its batch once
    assert steps["CUDA graph (pool rows)"]["status"] == "skipped: needs CUDA"
    assert steps["eager, validate=False"]["aten_kernel_ops"] < steps["eager, validate=False"]["aten_ops"]
    decoder = next(r for r in rows if r["item"] == "Decoder.step")
    assert decoder["mode"] == "eager" and decoder["us"] > 0
    alpha = next(r for r in rows if r["item"] == "decode vs fuxi-alpha")
    assert alpha["speedup"] > 0 and alpha["T"] == 16
    assert all(r["dry_run"] and r["device"] == "cpu" for r in rows)
    assert any("fused_block_step N=5 pool" in m for m in messages)
