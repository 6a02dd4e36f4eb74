"""GPU suite section ``tests``: the kernel and model-through-Triton test files run by pytest in a subprocess.

On a CUDA machine ``tests/conftest.py`` leaves ``TRITON_INTERPRET`` unset, so the kernels are compiled for the
GPU and the GPU-only tests (half precision, > 2^31 elements, ...) run too. The subprocess gets the section's
remaining time as its limit; a run cut short still reports what finished. One row per test file: passed,
failed, errors, skipped and not run, with the ids of the failures; any failure, error or test not run fails
the section (the rows are kept).

Measured errors: every error a test holds to a bound (``tests/error_bounds.py``: kernels against the float64 math,
decode against prefill, ...) is written to a report (``FUXI_REPORT_ERRORS``) and becomes one row of this section
(``kind: error``: the test, the quantity, the error measured here, its bound, the error the CPU interpreter
measured for the same test): the first GPU run's figures are what the GPU-only tests' provisional bounds are then
set from (``tests/test_kernels.py``'s ``HALF_TOL`` and the others).

Dry run: only the first collected test of each file runs (on the CPU, in the interpreter), which exercises the
collection, the subprocess, the limit and the parsing in seconds (``gpu_suite_pytest_plugin.py``).
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from gpu_suite_common import SETTINGS, Log, Row, SectionError, time_left
from gpu_suite_paths import PYTEST_BOOTSTRAP, REPO_ROOT
from gpu_suite_pytest_plugin import COLLECTED_PREFIX, FIRST_PER_FILE_ENV

TEST_FILES = ("tests/test_kernels.py", "tests/test_kernel_split.py", "tests/test_kernel_numerics.py",
              "tests/test_fused_block_step.py", "tests/test_model_triton.py", "tests/test_serving.py")
#: time limit of the pytest run when the section's budget allows more (seconds)
MAX_SECONDS = 300.0
QUICK_MAX_SECONDS = 180.0
OUTCOMES = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")
_RESULT_LINE = re.compile(r"^(?P<id>\S+::\S+?)\s+(?P<outcome>" + "|".join(OUTCOMES) + r")\b")


#: environment variable naming the file the tests append their measured errors to (``tests/error_bounds.py``)
REPORT_ENV = "FUXI_REPORT_ERRORS"


def run_pytest(args: Sequence[str], timeout: float, first_per_file: bool,
               report_path: Optional[str] = None) -> Tuple[int, str, bool]:
    """pytest (with this section's plugin) in a child interpreter in the repository root; returns
    (exit code, output, timed out). On time-out the child's whole process group is killed. ``report_path``: where
    the tests report their measured errors."""
    cmd = [sys.executable, "-c", PYTEST_BOOTSTRAP, "-p", "gpu_suite_pytest_plugin", *args]
    env = dict(os.environ)
    env[FIRST_PER_FILE_ENV] = "1" if first_per_file else "0"
    env.pop("FUXI_RECORD_ERRORS", None)  # that would switch the bounds off
    if report_path is not None:
        env[REPORT_ENV] = report_path
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=max(timeout, 1.0))
        return proc.returncode, out, False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # pytest and anything it started: its own process group
        out, _ = proc.communicate()
        return proc.returncode, out, True


def collected_ids(output: str) -> List[str]:
    # the first id can share its line with pytest's "collecting ..." progress text
    return [line.split(COLLECTED_PREFIX, 1)[1].strip() for line in output.splitlines() if COLLECTED_PREFIX in line]


def parse_results(output: str) -> Dict[str, str]:
    """``{test id: outcome}`` from ``pytest -v`` output (the first outcome seen per id: a test that passes
    and then errors in teardown counts as ERROR)."""
    results: Dict[str, str] = {}
    for line in output.splitlines():
        m = _RESULT_LINE.match(line.strip())
        if m:
            tid, outcome = m.group("id"), m.group("outcome")
            if results.get(tid) in (None, "PASSED") or outcome == "ERROR":
                results[tid] = outcome
    return results


def file_rows(collected: Sequence[str], selected: Sequence[str], results: Dict[str, str], seconds: float,
              timed_out: bool, exit_code: Optional[int]) -> List[Row]:
    rows = []
    for path in dict.fromkeys(tid.split("::")[0] for tid in collected):
        ids = [t for t in selected if t.startswith(path + "::")]
        outcome = [results.get(t) for t in ids]
        failed = [t.split("::", 1)[1] for t, o in zip(ids, outcome) if o in ("FAILED", "ERROR", "XPASS")]
        count = {o: outcome.count(o) for o in OUTCOMES}
        not_run = outcome.count(None)
        status = "ok" if not failed and not not_run else ("timed out" if timed_out and not failed else "failed")
        rows.append({
            "kind": "file",
            "file": path,
            "status": status,
            "collected": sum(t.startswith(path + "::") for t in collected),
            "selected": len(ids),
            "passed": count["PASSED"] + count["XFAIL"],
            "failed": count["FAILED"] + count["XPASS"],
            "errors": count["ERROR"],
            "skipped": count["SKIPPED"],
            "not_run": not_run,
            "seconds": round(seconds, 1),
            "timed_out": timed_out,
            "exit_code": exit_code,
            "failures": ", ".join(failed)[:500] or None,
        })
    return rows


def run_tests_section(device: torch.device, dry_run: bool, peak_gbs: Optional[float], log: Log) -> List[Row]:
    limit = min(QUICK_MAX_SECONDS if SETTINGS.quick else MAX_SECONDS, time_left())
    where = "interpreter (CPU)" if device.type != "cuda" else "compiled on " + torch.cuda.get_device_name(device)
    log(f"[tests] {', '.join(TEST_FILES)}{' (first test of each: dry run)' if dry_run else ''}, "
        f"limit {limit:.0f} s, {where}")
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "errors.jsonl"
        code, out, timed_out = run_pytest(["-v", "-p", "no:cacheprovider", "--color=no", *TEST_FILES], limit,
                                          first_per_file=dry_run, report_path=str(report))
        errors = error_rows(report.read_text() if report.exists() else "")
    seconds = time.monotonic() - t0
    collected = collected_ids(out)
    if not collected:
        raise RuntimeError(f"pytest collected nothing (exit {code}, timed out: {timed_out}):\n{out[-3000:]}")
    first_of_file: Dict[str, str] = {}
    for tid in collected:
        first_of_file.setdefault(tid.split("::")[0], tid)
    selected = list(first_of_file.values()) if dry_run else collected
    rows = file_rows(collected, selected, parse_results(out), seconds, timed_out, None if timed_out else code)
    for row in rows:
        log(f"[tests] {row['file']}: {row['passed']} passed, {row['failed']} failed, {row['errors']} errors, "
            f"{row['skipped']} skipped, {row['not_run']} not run ({row['status']})")
    above = [e for e in errors if not e["within_bound"]]
    log(f"[tests] {len(errors)} measured errors reported, {len(above)} above their bounds")
    bad = [r["file"] for r in rows if r["status"] != "ok"]
    rows = rows + errors
    if bad:
        log("[tests] pytest output (tail):\n" + out[-4000:])
        raise SectionError(f"tests failed or did not finish in {', '.join(bad)}", rows)
    return rows


def error_rows(report: str) -> List[Row]:
    """One row per reported error (the report's JSON lines, in order): the test's file and id, the quantity,
    the error, its bound and the CPU interpreter's figure for the same test (None for GPU-only tests)."""
    rows = []
    for line in report.splitlines():
        if not line.strip():
            continue
        r = json.loads(line)
        file, _, test = r["test"].partition("::")
        rows.append({
            "kind": "error",
            "file": "tests/" + file,
            "test": test,
            "quantity": r["name"],
            "error": r["error"],
            "bound": r["bound"],
            "cpu_measured": r["cpu_measured"],
            "within_bound": r["error"] <= r["bound"],
            "dtype": r["tags"].get("dtype"),
            "decay": r["tags"].get("decay"),
        })
    return rows
