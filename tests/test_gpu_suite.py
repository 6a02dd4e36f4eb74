"""The GPU suite (``benchmarks/gpu_suite.py``) checked on the CPU: its dry run (interpreter, tiny shapes)
writes the JSON and markdown with rows from every section, a failing section is recorded and sets the exit
code, the fla comparison path expands shared q/k and records fla's errors, and pytest results are counted."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCH))

import gpu_suite  # noqa: E402
import gpu_suite_prefill as prefill  # noqa: E402
import gpu_suite_tests as suite_tests  # noqa: E402
import triton  # noqa: E402
from fuxi_linear.ops import chunk_decay_attention_cpu  # noqa: E402
from error_bounds import check_errors  # noqa: E402
from gpu_suite_common import Timing  # noqa: E402
from register_budgets import register_budget  # noqa: E402



def _sections(report):
    return {s["name"]: s for s in report["sections"]}


def test_dry_run_writes_rows_of_every_section(tmp_path):
    out = tmp_path / "suite"
    proc = subprocess.run([sys.executable, str(BENCH / "gpu_suite.py"), "--dry-run", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_suite.json").read_text())
    markdown = (out / "gpu_suite.md").read_text()
    header = report["header"]
    for key in ("device", "sm_count", "torch", "triton", "date_utc", "commit", "copy_GBps_measured",
                "datasheet_GBps"):
        assert key in header
    assert header["dry_run"] and header["triton_interpret"] and header["copy_GBps_measured"] > 0
    sections = _sections(report)
    assert list(sections) == [name for name, *_ in gpu_suite.SECTION_MODULES]
    assert report["failed"] == []
    for name, sec in sections.items():
        assert sec["status"] == "ok" and sec["rows"], name
        assert f"## {name} (ok" in markdown
    tests = [r for r in sections["tests"]["rows"] if r["kind"] == "file"]
    assert {r["file"] for r in tests} == set(suite_tests.TEST_FILES)
    assert all(r["passed"] == 1 and r["failed"] == 0 and r["collected"] > 1 for r in tests)
    # the first test of tests/test_kernels.py (kernels vs float64) reported each error with its bound
    errors = [r for r in sections["tests"]["rows"] if r["kind"] == "error"]
    first = "test_prefill_fwd_bwd[none-1-h0off]"
    assert {r["quantity"] for r in errors if r["test"] == first} == {"o", "final_state", "dq", "dk", "dv"}
    assert all(r["within_bound"] and 0 < r["error"] <= r["bound"] and r["cpu_measured"] is not None
               for r in errors), errors
    accuracy = sections["accuracy"]["rows"]
    expected = {(c, d) for c in prefill.CHANNELS for d in ("fp32", "bf16")}
    assert {(r["channel"], r["dtype"]) for r in accuracy} == expected
    assert {r["decay"] for r in accuracy if r["channel"] == "temporal"} == {"mild", "strong"}
    assert {(r["channel"], r["kernels"]) for r in accuracy} == {("retention", "general"), ("positional", "general"),
                                                               ("temporal", "small-head")}
    assert all(r["meets_target"] for r in accuracy), [(r["channel"], r["dtype"], r["worst"]) for r in accuracy]
    timings = [r for r in sections["prefill"]["rows"] if r["impl"] == prefill.KERNELS]
    assert {(r["channel"], r["pass"]) for r in timings} == {(c, p) for c in prefill.CHANNELS for p in prefill.PASSES}
    assert all(r["status"] == "ok" and r["ms"] > 0 and r["bytes"] > 0 for r in timings)
    assert any(r["impl"] == prefill.FLA for r in sections["prefill"]["rows"])  # measured, failed or "not run"
    resources = sections["resources"]["rows"]
    assert {(r["kernel"], r["channel"], r["split"]) for r in resources} == {("fwd", "temporal", False),
                                                                          ("fwd", "temporal", True)}
    assert all(r["arch"] == "sm_90" and r["spill_stores"] == 0 and
               r["registers"] <= register_budget("temporal", "fp32", r["split"], triton.__version__)
               for r in resources), resources
    assert "| impl | channel |" in markdown and proc.stdout.rstrip().endswith("s")  # tables printed last


def _ok_section(name):
    def run(device, dry_run, peak_gbs, log):
        log(f"{name} ran")
        return [{"name": name, "value": 1.5, "flag": True, "tensor": torch.tensor(2.0), "missing": None}]
    return gpu_suite.Section(name, run, budget_s=1.0)


def _failing_section(device, dry_run, peak_gbs, log):
    raise ValueError("boom: injected failure")


def _failing_with_rows(device, dry_run, peak_gbs, log):
    raise prefill.SectionError("half done", [{"case": "first", "status": "ok"}])


def test_failing_section_is_recorded_and_sets_the_exit_code(tmp_path, capsys):
    sections = [_ok_section("first"), gpu_suite.Section("broken", _failing_section, 1.0),
                gpu_suite.Section("partial", _failing_with_rows, 1.0), _ok_section("last")]
    logged = []
    code = gpu_suite.run_suite(sections, tmp_path, torch.device("cpu"), dry_run=True, commit="abc1234",
                               log=logged.append)
    assert code == 1
    report = json.loads((tmp_path / "gpu_suite.json").read_text())
    by_name = _sections(report)
    assert report["failed"] == ["broken", "partial"]
    assert by_name["first"]["status"] == by_name["last"]["status"] == "ok"  # the suite went on
    assert by_name["first"]["rows"] == [{"name": "first", "value": 1.5, "flag": True, "tensor": 2.0, "missing": None}]
    (failure,) = by_name["broken"]["rows"]
    assert failure["status"] == "failed" and failure["error"] == "ValueError: boom: injected failure"
    assert "_failing_section" in failure["where"] and "Traceback" in by_name["broken"]["traceback"]
    assert [r["status"] for r in by_name["partial"]["rows"]] == ["ok", "failed"]  # rows kept, failure added
    assert report["header"]["commit"] == "abc1234"
    markdown = (tmp_path / "gpu_suite.md").read_text()
    assert "ValueError: boom: injected failure" in markdown and "**Failed sections: broken, partial**" in markdown
    assert "| name | value | flag | tensor | missing |" in markdown and "| first | 1.5 | yes | 2 |  |" in markdown
    assert "first ran" in logged and "last ran" in logged
    assert capsys.readouterr().out.rstrip().endswith("FAILED: broken, partial")


def test_unknown_section_is_a_usage_error():
    with pytest.raises(SystemExit) as info:
        gpu_suite.main(["--dry-run", "--sections", "tests,nope"])
    assert info.value.code == 2


def _fake_chunk_simple_gla(q, k, v, g=None, g_gamma=None, scale=None, initial_state=None,
                           output_final_state=False, **kwargs):
    """Stands in for fla's op: the CPU path's math, fla's restrictions (no shared q/k, K >= 16)."""
    if q.shape[0] != v.shape[0]:
        raise AssertionError("fla has no shared q/k: the suite must expand them to the batch")
    if q.shape[-1] < 16:
        raise ValueError(f"K={q.shape[-1]} is not supported")
    return chunk_decay_attention_cpu(q, k, v, g=g, g_gamma=g_gamma, scale=scale,
                                     output_final_state=output_final_state)


_FLA_CALLS = []


def _fixed_timing(call, n_sets, device, target_s, warmup=3, min_reps=5, max_reps=200):
    """Runs the call once (so its errors surface) and reports 3 ms for fla's op, 2 ms for the kernels."""
    before = len(_FLA_CALLS)
    call(0)
    ms = 3.0 if len(_FLA_CALLS) > before else 2.0
    return Timing(median_ms=ms, p20_ms=ms, p80_ms=ms, reps=1, first_call_s=0.0)


def test_fla_comparison_expands_shared_qk_and_records_errors(monkeypatch):
    """With the times fixed (kernels 2 ms, fla 3 ms) every derived column has a value worked out by hand: bytes of
    the positional channel at B=2, T=24 in fp32 (q, k shared: 1 x 24 x 32 x 4 B each; v, o: 2 x 24 x 128 x 4 B;
    final state 2 x 32 x 128 x 4 B; backward: do, dq, dk, dv besides), GB/s against 10 GB/s, vs_fla = 3/2."""
    def fla_op(*args, **kwargs):
        _FLA_CALLS.append(1)
        return _fake_chunk_simple_gla(*args, **kwargs)

    monkeypatch.setattr(prefill, "load_fla", lambda: fla_op)
    monkeypatch.setattr(prefill, "time_eager", _fixed_timing)
    monkeypatch.setattr(prefill, "_cases", lambda dry_run: [("positional", 2, 24, "fp32"), ("temporal", 1, 24, "fp32")])
    monkeypatch.setattr(prefill, "DRY_RUN_FLA_CASES", 2)
    rows = prefill.run_prefill_section(torch.device("cpu"), True, 10.0, lambda msg: None)
    got = {(r["impl"], r["channel"], r["pass"]): r for r in rows}
    assert len(got) == 8
    expected_bytes = {"fwd": 88064, "fwd+bwd": 110592}  # 3072 x 2 + 24576 x 2 + 32768; + 24576 + 30720
    for p in prefill.PASSES:
        ours, fla = got[(prefill.KERNELS, "positional", p)], got[(prefill.FLA, "positional", p)]
        assert ours["status"] == fla["status"] == "ok", (ours["error"], fla["error"])
        assert (ours["ms"], fla["ms"]) == (2.0, 3.0)
        assert ours["bytes"] == fla["bytes"] == expected_bytes[p]  # q/k counted at their shared size for both
        assert ours["GBps"] == pytest.approx(expected_bytes[p] / 2e-3 / 1e9, rel=1e-12)
        assert ours["pct_peak"] == pytest.approx(10 * expected_bytes[p] / 2e-3 / 1e9, rel=1e-12)
        assert ours["vs_fla"] == pytest.approx(1.5, rel=1e-12)
        assert ours["target"] == "vs_fla >= 1" and ours["meets_target"] is True
        temporal = got[(prefill.FLA, "temporal", p)]
        assert temporal["status"] == "error" and "K=2 is not supported" in temporal["error"]
        single = got[(prefill.KERNELS, "temporal", p)]  # B = 1: judged by the share of the peak
        assert single["vs_fla"] is None and single["target"] == "pct_peak >= 25"
        assert single["meets_target"] is False  # 33280 B (fwd) in 2 ms: 0.17% of 10 GB/s
    assert got[(prefill.KERNELS, "temporal", "fwd")]["bytes"] == 33280  # 3072 x 2 + 12288 x 2 + 1536 + 1024
    # fla's stand-in is the float32 reference: the difference is float32 rounding, held to its measured bound
    check_errors({"rel_diff_vs_kernels": got[(prefill.FLA, "positional", "fwd")]["rel_diff_vs_kernels"]})


def test_prefill_without_fla_records_why(monkeypatch):
    def no_fla():
        raise ImportError("No module named 'fla'")

    monkeypatch.setattr(prefill, "load_fla", no_fla)
    monkeypatch.setattr(prefill, "_cases", lambda dry_run: [("positional", 1, 16, "fp32")])
    rows = prefill.run_prefill_section(torch.device("cpu"), True, None, lambda msg: None)
    assert [(r["impl"], r["status"]) for r in rows] == [(prefill.KERNELS, "ok")] * 2 + [(prefill.FLA, "not run")]
    assert "No module named 'fla'" in rows[-1]["error"] and list(rows[-1]) == list(rows[0])
    assert rows[0]["pct_peak"] is None and rows[0]["vs_fla"] is None


def test_problem_bytes_counts_each_input_and_output_once():
    B, T = 3, 5
    # positional fwd: q, k shared (1, T, 1, 32) fp32; v, o (B, T, 1, 128); final state (B, 1, 32, 128) fp32
    expected = 4 * (2 * T * 32 + 2 * B * T * 128 + B * 32 * 128)
    assert prefill.problem_bytes("positional", B, T, torch.float32, "fwd") == expected
    # temporal fwd+bwd in bf16: q, k, v, do, o, dq, dk, dv (2 bytes) and g, dg (float32)
    qk, v, g = B * T * 16 * 2 * 2, B * T * 16 * 8 * 2, B * T * 16 * 4
    assert prefill.problem_bytes("temporal", B, T, torch.bfloat16, "fwd+bwd") == 2 * (2 * qk + v + g) + 2 * v


def test_pytest_results_are_counted_per_file():
    output = "\n".join([
        "collecting ... GPU_SUITE_COLLECTED tests/a.py::t1",
        "GPU_SUITE_COLLECTED tests/a.py::t2[x-1]",
        "GPU_SUITE_COLLECTED tests/a.py::t3",
        "GPU_SUITE_COLLECTED tests/b.py::u1",
        "GPU_SUITE_COLLECTED tests/b.py::u2",
        "tests/a.py::t1 PASSED                 [ 20%]",
        "tests/a.py::t2[x-1] FAILED            [ 40%]",
        "tests/a.py::t3 PASSED                 [ 60%]",
        "tests/a.py::t3 ERROR                  [ 60%]",  # passed, then failed in teardown
        "tests/b.py::u1 SKIPPED (needs a CUDA GPU)   [ 80%]",
    ])
    collected = suite_tests.collected_ids(output)
    assert collected == ["tests/a.py::t1", "tests/a.py::t2[x-1]", "tests/a.py::t3", "tests/b.py::u1", "tests/b.py::u2"]
    rows = suite_tests.file_rows(collected, collected, suite_tests.parse_results(output), 12.0, True, None)
    a, b = rows
    assert (a["passed"], a["failed"], a["errors"], a["not_run"], a["status"]) == (1, 1, 1, 0, "failed")
    assert a["failures"] == "t2[x-1], t3"
    assert (b["skipped"], b["not_run"], b["status"], b["timed_out"]) == (1, 1, "timed out", True)


def test_source_tree_bootstrap_maps_the_kernels_package():
    code = (
        "import sys; sys.meta_path[:] = [f for f in sys.meta_path"
        " if not type(f).__module__.startswith('__editable__')];"
        f"sys.path.insert(0, {str(BENCH)!r}); import gpu_suite_paths as p; p.use_source_tree();"
        "import fuxi_linear.kernels as k, fuxi_linear as f; print(k.__file__); print(f.__file__)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd="/")
    assert proc.returncode == 0, proc.stderr
    kernels_file, package_file = proc.stdout.split()
    root = BENCH.parent
    assert Path(kernels_file) == root / "kernels" / "__init__.py"
    assert Path(package_file) == root / "fuxi_linear" / "__init__.py"
