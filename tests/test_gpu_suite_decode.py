"""The GPU suite's decode section (``benchmarks/gpu_suite_decode.py``) in its CPU dry run: the fused kernel
under the Triton interpreter, tiny shapes, every row kind present and JSON-serialisable."""
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from fuxi_linear.ops import triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton is not installed")


BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _section_module():
    if str(BENCH) not in sys.path:  # the section imports its siblings (gpu_suite_common, gpu_suite_paths)
        sys.path.insert(0, str(BENCH))
    path = BENCH / "gpu_suite_decode.py"
    spec = importlib.util.spec_from_file_location("gpu_suite_decode", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


#: bytes one fused step moves per user at the dry run's TINY shape (D=32, H=2, dqk=8, Ht=2, P=8), by hand:
#: states read and written (retention 2x8x16 + temporal 4x2x8 + positional 8x32 = 576 floats, twice), inputs
#: (retention q 16 + k 16 + v 32; temporal q 8 + k 8 + v 32 + g 4; positional q 8 + k 8 + v 32 = 164 floats),
#: outputs (3 x 32 floats)
BYTES_PER_USER = 4 * (2 * 576 + 164 + 96)


def test_decode_section_dry_run_on_cpu(monkeypatch):
    """The section's rows with every timing fixed at 50 µs (the call still runs once): the derived columns
    have their values worked out by hand."""
    module = _section_module()

    def fixed_time(fn, device, reps):
        fn()
        return 50.0

    monkeypatch.setattr(module, "_time_eager_us", fixed_time)
    messages = []
    rows = module.run_decode_section(torch.device("cpu"), True, 100.0, messages.append)
    json.dumps(rows)  # flat JSON scalars only
    assert all(isinstance(v, (str, int, float, bool, type(None))) for r in rows for v in r.values())
    fused = [r for r in rows if r["item"] == "fused_block_step"]
    separate = [r for r in rows if r["item"] == "three decay_attention_step"]
    assert {(r["N"], r["layout"]) for r in fused} == {(2, "rows"), (2, "pool"), (5, "rows"), (5, "pool")}
    assert len(separate) == len(fused) and all(r["launches"] == 3 for r in separate)
    for r in fused:
        assert r["launches"] == 1 and r["gpu_us"] is None and r["eager_us"] == 50.0
        assert r["bytes_per_step"] == BYTES_PER_USER * r["N"]
        assert r["gbs"] == pytest.approx(BYTES_PER_USER * r["N"] / 50e-6 / 1e9, rel=1e-12)
        assert r["pct_of_peak"] == pytest.approx(100 * BYTES_PER_USER * r["N"] / 50e-6 / 1e9 / 100.0, rel=1e-12)
    steps = {r["mode"]: r for r in rows if r["item"] == "model.step"}
    assert steps["eager, validate=False"]["host_syncs"] == 0
    assert steps["eager, validate=True"]["host_syncs"] == 1  # on a CPU the check reads its batch once
    assert steps["CUDA graph (pool rows)"]["status"] == "skipped: needs CUDA"
    assert steps["eager, validate=False"]["aten_kernel_ops"] < steps["eager, validate=False"]["aten_ops"]
    decoder = next(r for r in rows if r["item"] == "Decoder.step")
    assert decoder["mode"] == "eager" and decoder["us"] == 50.0
    alpha = next(r for r in rows if r["item"] == "decode vs fuxi-alpha")
    assert alpha["speedup"] == pytest.approx(1.0) and alpha["T"] == 16  # both sides timed at 50 µs
    assert all(r["dry_run"] and r["device"] == "cpu" for r in rows)
    assert any("fused_block_step N=5 pool" in m for m in messages)
