"""The runnable examples in examples/ run at their --smoke sizes (each checks its own results: the loss falls,
decoding step by step equals the full forward) and succeed."""
import pathlib
import subprocess
import sys

import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


@pytest.mark.parametrize("script", ["custom_recommender.py", "retention_in_a_transformer.py"])
def test_example_runs_at_smoke_size(script):
    result = subprocess.run([sys.executable, str(EXAMPLES / script), "--smoke"], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert lines[-1] == "ok"
    assert any("equal" in line and "forward" in line for line in lines)
