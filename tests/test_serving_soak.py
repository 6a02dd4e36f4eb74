"""The serving soak, short: 3,000 decoder steps with admit / evict churn (``benchmarks/serving_soak.py``, whose
100,000-step run is in benchmarks/RESULTS.md), in its own process so that its resident memory is its own.
Sampled users equal fresh prefills (the script fails otherwise), the resident memory does not grow after
warm-up (measured: +0.13 MB; a leak of more than ~1 KB per step fails), the step time does not drift."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="resident memory is read from /proc (Linux)")
def test_short_serving_soak_stays_flat_and_exact(tmp_path):
    out = tmp_path / "soak.json"
    run = subprocess.run([sys.executable, str(REPO / "benchmarks" / "serving_soak.py"), "--steps", "3000",
                          "--window", "500", "--warmup", "2", "--check-every", "100", "--json", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    s = json.loads(out.read_text())["summary"]
    assert s["prefill_checks"] == 30 and s["max_prefill_error"] <= 5e-6
    assert s["users_admitted"] > 500  # the pool turned over many times (64 rows)
    assert s["rss_growth_mb"] < 4.0, s
    # step medians over 500 steps; a loaded, shared machine moves them, a cost that grows with the run would not
    # stay within this
    assert s["step_time_drift"] < 2.5, s
