"""`fuxi-linear bench` and the timing library, on tiny settings (fast on a CPU).

Real timings are not asserted (a shared CPU is too noisy). Instead a stub clock, advanced by stand-ins of
the timed calls by known amounts, gives exact expected rows: medians, spreads, noisy flags, throughput, the
table and the closing warning. Byte counts are checked against hand-computed values, the compiled regime
with a stand-in compiler (which order things happen in, what a failed compile does), and FuXi-Linear's
decode step is O(1) by construction: its state and the work of a step (FLOPs, tensor elements touched, ATen
calls) are identical whatever the history length behind the state. The pytest-benchmark suites in
``benchmarks/`` run once here as tests (``--benchmark-disable``).
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import fuxi_linear.bench.run as bench_run
import fuxi_linear.bench.settings as bench_settings
from fuxi_linear.bench import (BENCH_MODELS, BenchError, BenchSettings, build_bench_models, decode_call, format_report,
                               kv_cache_bytes_per_user, make_inputs, nominal_peak_gbs, prefill_call, run_benchmark,
                               state_bytes_per_user, time_call)
from fuxi_linear.cli import main
from bench_stubs import BENCH_NAME, StubClock, stub_calls
from step_cost import step_cost

REPO = Path(__file__).resolve().parent.parent
TINY = ["--device", "cpu", "--batch-size", "2", "--embedding-dim", "32", "--num-blocks", "1", "--num-heads", "2",
        "--qk-dim", "8", "--warmup", "0", "--repeats", "3", "--decode-repeats", "3", "--threads", "1",
        "--no-progress", "--compile", "off"]
TINY_SETTINGS = dict(device="cpu", batch_size=2, embedding_dim=32, num_blocks=1, num_heads=2, qk_dim=8, warmup=0,
                     repeats=1, decode_repeats=1, threads=1, progress=False, compile="off")

# Hand-computed sizes of the tiny models (1 block, D=32, H=2, dqk=8, fp32, B=2):
# FuXi-Linear's state per user: retention H*dqk*(D/H) = 2*8*16, temporal (8 periods: 16 heads) 16*2*2,
# positional P*D = 32*32 floats, plus two int64 counters.
FL_STATE = (2 * 8 * 16 + 16 * 2 * 2 + 32 * 32) * 4 + 2 * 8  # 5392
# a KV cache per user and event: keys (H*dqk) and values (H*dv = D) of the block, fp32; + an int64 timestamp
# for the time-aware models; + the int64 length once
KV_EVENT = 2 * (8 + 16) * 4  # 192
STEP_IO = 8 + 2 * 8 + 32 * 4  # an item id, two int64 times in; the user vector out


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_bench_writes_rows_table_and_plot(tmp_path, capsys):
    out, png = tmp_path / "rows.json", tmp_path / "fig.png"
    argv = ["bench", *TINY, "--seq-lens", "16,8", "--json", str(out)]
    if _has_matplotlib():
        argv += ["--plot", str(png)]
    assert main(argv) == 0
    rows = json.loads(out.read_text())
    assert [(r["model"], r["stage"], r["seq_len"]) for r in rows] == [
        (m, st, T) for m in BENCH_MODELS for st in ("prefill", "decode") for T in (8, 16)]
    for r in rows:
        assert r["status"] == "ok" and r["batch_size"] == 2 and r["compiled"] is False
        assert r["device"] == "cpu" and r["dtype"] == "fp32" and r["repeats"] == 3
        assert 0 < r["ms_min"] <= r["ms_q25"] <= r["ms"] <= r["ms_q75"] and isinstance(r["noisy"], bool)
        assert r["busy_cpus_before"] is None or r["busy_cpus_before"] >= 0
    nbytes = {(r["model"], r["seq_len"]): r["state_bytes_per_user"] for r in rows}
    assert nbytes[("fuxi-linear", 8)] == nbytes[("fuxi-linear", 16)] == FL_STATE
    for T in (8, 16):  # KV caches grow with the filled length, not the preallocated capacity
        assert nbytes[("hstu", T)] == nbytes[("fuxi-alpha", T)] == T * (KV_EVENT + 8) + 8
        assert nbytes[("sasrec", T)] == T * KV_EVENT + 8
    text = capsys.readouterr().out
    assert "machine: cpu" in text and "torch " in text and "threads" in text
    assert "regime: every model eager" in text and "load before the run: load average" in text
    assert "| decode | 16 |" in text and "× vs hstu" in text and "× vs sasrec" in text and "min / IQR" in text
    if _has_matplotlib():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------------------------- stub clock
def test_a_stub_clock_gives_exact_rows_and_flags_the_noisy_ones(monkeypatch):
    """Every call's time is known: each row's median, min and interquartile range are exact; SASRec's decode
    at T=8 alternates 5 ms and 1 ms calls and is the one noisy row: flagged in the JSON row, marked in the
    table (and in the speed-ups read from it), named in the closing warning with the machine's load."""
    clock = StubClock()
    prefill_ms = {"fuxi-linear": 2.0, "hstu": 1.0, "fuxi-alpha": 4.0, "sasrec": 0.8}
    decode_ms = {"fuxi-linear": lambda T, i: 0.5, "hstu": lambda T, i: 1.0, "fuxi-alpha": lambda T, i: 1.5,
                 "sasrec": lambda T, i: (5.0 if i % 2 else 1.0) if T == 8 else 1.0}
    stub_calls(monkeypatch, clock, prefill_ms, decode_ms)
    settings = BenchSettings(seq_lens=[8, 16], decode_users=[3],
                             **{**TINY_SETTINGS, "warmup": 1, "repeats": 4, "decode_repeats": 4, "decode_burst": 1})
    result = run_benchmark(settings, clock=clock)
    rows = {(r["model"], r["stage"], r["seq_len"]): r for r in result.rows if r["stage"] != "decode-throughput"}
    for (name, stage, T), r in rows.items():
        expect = prefill_ms[name] if stage == "prefill" else decode_ms[name](16, 0)
        if (name, stage, T) == ("sasrec", "decode", 8):  # timed calls 1..4 (call 0 warms up): 5, 1, 5, 1 ms
            assert (r["ms"], r["ms_min"], r["ms_q25"], r["ms_q75"]) == pytest.approx((3.0, 1.0, 1.0, 5.0))
            assert r["noisy"] is True and r["noise"] == "IQR/median 1.33 > 0.25; median/min 3.0 > 2"
        else:
            assert (r["ms"], r["ms_min"], r["ms_iqr"]) == pytest.approx((expect, expect, 0.0), abs=1e-9)
            assert r["noisy"] is False and r["noise"] is None
        assert r["repeats"] == 4 and r["compiled"] is False
        assert r["load_average_before"] == 3.5 and r["busy_cpus_after"] == 1.6
    assert rows[("fuxi-linear", "decode", 8)]["users_per_s"] == pytest.approx(2 / 0.5e-3)
    assert rows[("fuxi-linear", "decode", 16)]["bytes_per_step"] == 2 * (2 * FL_STATE + STEP_IO)
    assert rows[("hstu", "decode", 16)]["bytes_per_step"] == 2 * (16 * (KV_EVENT + 8) + 8 + (KV_EVENT + 8) + STEP_IO)
    sweep = [r for r in result.rows if r["stage"] == "decode-throughput"]
    assert len(sweep) == 1 and sweep[0]["batch_size"] == 3 and sweep[0]["ms"] == pytest.approx(0.5)
    assert sweep[0]["users_per_s"] == pytest.approx(3 / 0.5e-3) and sweep[0]["state_bytes_per_user"] == FL_STATE
    text = format_report(result)
    assert "| prefill | 8 | 2.00 | 1.00 | 4.00 | 0.800 | 0.5× | 2.0× | 0.4× |" in text
    assert "| decode | 8 | 0.500 | 1.00 | 1.50 | 3.00* | 2.0× | 3.0× | 6.0×* |" in text
    assert "| decode | 16 | 0.500 | 1.00 | 1.50 | 1.00 | 2.0× | 3.0× | 2.0× |" in text
    assert "| decode | 8 | 0.500 / 0.000 | 1.00 / 0.000 | 1.50 / 0.000 | 1.00 / 4.00* |" in text
    assert "| fuxi-linear | 256 | 3 | 0.500 | 6k |" in text
    warning = text.splitlines()[-1]
    assert warning.startswith("WARNING: 1 of 17 timed rows are noisy")
    assert "sasrec decode T=8 (IQR/median 1.33 > 0.25; median/min 3.0 > 2)" in warning
    assert "load average 3.50, 1.80 CPUs busy with other processes before the run" in warning
    assert "load average 3.90, 1.60 CPUs busy with other processes after" in warning
    # it alternates at every attempt, so it was timed again twice (--noisy-retries 2) and stays noisy
    assert rows[("sasrec", "decode", 8)]["attempts"] == 3
    assert all(r["attempts"] == 1 for key, r in rows.items() if key != ("sasrec", "decode", 8))
    assert "note: timed again after noisy repeats (--noisy-retries; the row is the last attempt): sasrec decode " \
           "T=8 (3 attempts, still noisy)" in text
    assert text.count("T=") == warning.count("T=") + 1  # no other row is named


@pytest.mark.parametrize("retries", [0, 1])
def test_a_noisy_spell_is_timed_again_on_its_own(monkeypatch, retries):
    """SASRec's first decode attempt at T=8 falls in a slow spell (calls 1..4: 5, 1, 5, 1 ms); timed again on
    its own (warm-up call 5, then 6..9 at 1 ms) its row is steady, says it took 2 attempts, and the report
    names it in a note instead of a warning. With --noisy-retries 0 the first attempt stands, flagged."""
    clock = StubClock()
    stub_calls(monkeypatch, clock, {"fuxi-linear": 2.0, "sasrec": 1.0},
               {"fuxi-linear": lambda T, i: 0.5, "sasrec": lambda T, i: (5.0 if i % 2 else 1.0) if i <= 4 else 1.0})
    result = run_benchmark(BenchSettings(seq_lens=[8], models=["fuxi-linear", "sasrec"], noisy_retries=retries,
                                         **{**TINY_SETTINGS, "warmup": 1, "repeats": 4, "decode_repeats": 4,
                                            "decode_burst": 1}), clock=clock)
    row = next(r for r in result.rows if (r["model"], r["stage"]) == ("sasrec", "decode"))
    text = format_report(result)
    if retries:
        assert row["attempts"] == 2 and row["noisy"] is False and row["ms"] == pytest.approx(1.0)
        assert not result.noisy_rows and "WARNING" not in text
        assert "sasrec decode T=8 (2 attempts)" in text
    else:
        assert row["attempts"] == 1 and row["noisy"] is True and row["ms"] == pytest.approx(3.0)
        assert "WARNING: 1 of 4 timed rows are noisy" in text and "attempts" not in text
    assert all(r["attempts"] == 1 for r in result.rows if r is not row)


def test_steady_rows_get_no_warning(monkeypatch):
    clock = StubClock()
    stub_calls(monkeypatch, clock, {"fuxi-linear": 2.0, "sasrec": 1.0},
                {"fuxi-linear": lambda T, i: 0.5, "sasrec": lambda T, i: 1.0})
    result = run_benchmark(BenchSettings(seq_lens=[8], models=["fuxi-linear", "sasrec"],
                                         **{**TINY_SETTINGS, "repeats": 3, "decode_repeats": 3}), clock=clock)
    assert not result.noisy_rows and "WARNING" not in format_report(result)


def test_time_call_excludes_warmup_and_setup():
    """Setup advances the clock by 100 s and each call by a known amount: the times are exactly the timed
    calls' own, none of the setup and none of the warm-up calls."""
    clock, calls = StubClock(), []
    durations = iter([0.001, 0.002, 0.003, 0.004, 0.005])  # 2 warm-up calls, then 3 timed ones

    def fn(x):
        calls.append(("call", x))
        clock.now += next(durations)

    def setup():
        calls.append(("setup", None))
        clock.now += 100.0
        return (len(calls),)

    times = time_call(fn, "cpu", warmup=2, repeats=3, setup=setup, clock=clock)
    assert times == pytest.approx([3.0, 4.0, 5.0], abs=1e-8)
    assert [c[0] for c in calls] == ["setup", "call"] * 5  # a fresh setup before every call, warm-up included
    assert [c[1] for c in calls if c[0] == "call"] == [1, 3, 5, 7, 9]  # each call gets its own setup's value


def test_bursts_time_all_but_the_first_call_of_each_burst():
    """Two functions round-robin in bursts of 3: a burst's first call is untimed, each gets exactly ``repeats``
    timed calls, and the rounds alternate the functions. The stub clock gives call k of function a k ms, so
    the timed values say which calls were timed."""
    import fuxi_linear.bench.timing as timing

    clock, log = StubClock(), []

    def call(name):
        log.append(name)
        clock.now += (sum(1 for n in log if n == name) if name == "a" else 100) / 1e3

    calls = {name: ((lambda n=name: call(n)), None) for name in ("a", "b")}
    times, failed = timing.time_interleaved(calls, "cpu", warmup=1, repeats=5, burst=3, clock=clock)
    assert not failed
    # warm-up round: 3 + 3; then 3 rounds (2 timed per burst): a a a b b b | a a a b b b | a a b b
    assert "".join(log) == "aaabbb" + "aaabbb" * 2 + "aabb"
    assert times["a"] == pytest.approx([5, 6, 8, 9, 11], abs=1e-6)  # a's calls 4 and 7 (bursts' firsts) untimed
    assert times["b"] == pytest.approx([100] * 5, abs=1e-6)
    assert bench_settings.timed_rounds(5, 3) == 3 and bench_settings.timed_rounds(5, 1) == 5
    s = BenchSettings(device="cpu", warmup=1, decode_repeats=5, decode_burst=3).resolve()
    assert s.steps_per_state == (1 + 3) * 3 + 1  # a state stepped in place has room for every call
    s = BenchSettings(device="cpu", warmup=0, decode_repeats=5, decode_burst=3).resolve()
    assert s.decode_warmup == 1 and s.steps_per_state == (1 + 3) * 3 + 1  # decode always warms up once


def test_spread_thresholds():
    from fuxi_linear.bench import spread

    assert spread([1.0, 1.0, 1.24, 1.24])["noisy"] is False  # IQR 0.24 of a median of 1.12: 0.21
    assert spread([1.0, 1.0, 1.4, 1.4])["noisy"] is True  # IQR 0.4 / 1.2 = 0.33
    assert spread([1.0, 2.1, 2.1, 2.1, 2.1])["noise"] == "median/min 2.1 > 2"  # one fast call, the rest slow
    assert spread([1.0, 9.0])["noisy"] is None  # two calls: no spread to judge
    with pytest.raises(ValueError):
        spread([])


# ---------------------------------------------------------------------------------------------- regime
def test_compile_setting_follows_the_device(monkeypatch):
    assert BenchSettings(device="cpu").resolve().compile == "on"
    assert BenchSettings(device="cpu", compile="off").resolve().compile == "off"
    assert BenchSettings(device="cpu", models=["hstu"]).resolve().compile == "on"  # every model, not just ours
    assert "every model compiled" in BenchSettings(device="cpu").resolve().regime
    with pytest.raises(BenchError, match="--compile must be one of auto, on, off, got 'yes'"):
        BenchSettings(device="cpu", compile="yes").resolve()
    monkeypatch.setattr(bench_settings, "resolve_bench_device", lambda name: torch.device("cuda"))
    assert BenchSettings(device="cuda").resolve().compile == "off"
    with pytest.raises(BenchError, match="--compile on applies to CPU runs only"):
        BenchSettings(device="cuda", compile="on").resolve()


class _StandInCompiler:
    """``torch.compile`` replaced by a function that compiles nothing: the returned callable logs its calls
    (which model, which stage) and runs the function eagerly; ``fail`` names the (model, stage) whose compiled
    callable raises like a missing C++ compiler, from its ``fail_from``-th call on; ``wrong`` those whose
    compiled callable returns wrong user vectors (a miscompile)."""

    def __init__(self, log, fail=(), fail_from=1, wrong=()):
        self.log, self.fail, self.fail_from, self.wrong = log, set(fail), fail_from, set(wrong)

    def __call__(self, fn, **kwargs):
        owner = getattr(fn, "__self__", None)
        name = BENCH_NAME[type(owner).__name__] if owner is not None else "fuxi-linear"
        stage = "prefill" if fn.__name__ == "prefill" else "decode"
        calls = []

        def compiled(*args, **kw):
            calls.append(1)
            self.log.append(("compiled", name, stage))
            if (name, stage) in self.fail and len(calls) >= self.fail_from:
                from torch._dynamo.exc import TorchDynamoException

                raise TorchDynamoException("InvalidCxxCompiler: no working C++ compiler found")
            out = fn(*args, **kw)
            if (name, stage) in self.wrong:  # a miscompile: the user vectors off by 0.5
                return (out[0] + 0.5, *out[1:]) if isinstance(out, tuple) else out + 0.5
            return out

        return compiled


def _logged_run(monkeypatch, log, models=BENCH_MODELS, compile="on", **settings):
    """A run whose clock and stages write to ``log``: ("tick",) per clock read (the timed calls),
    ("stage", stage, T) as each stage starts."""
    for stage in ("prefill_stage", "decode_stage"):
        real = getattr(bench_run, stage)

        def logged(run, T, *args, _real=real, _stage=stage.split("_")[0]):
            log.append(("stage", _stage, T))
            return _real(run, T, *args)

        monkeypatch.setattr(bench_run, stage, logged)

    def clock():
        log.append(("tick",))
        return time.perf_counter()

    values = {**TINY_SETTINGS, "repeats": 3, "decode_repeats": 3, "compile": compile, **settings}
    return run_benchmark(BenchSettings(seq_lens=[8, 16], models=list(models), **values), clock=clock,
                         log=lambda m: log.append(("say", m)))


@pytest.fixture(scope="module")
def compiled_run():
    """One run in the compiled regime with the stand-in compiler (what is timed, and when it is compiled)."""
    mp, log = pytest.MonkeyPatch(), []
    try:
        mp.setattr(torch, "compile", _StandInCompiler(log))
        result = _logged_run(mp, log, decode_users=[3])
    finally:
        mp.undo()
    return result, log


def test_every_model_is_compiled_before_each_stage_is_timed(compiled_run):
    """At each stage and length, the first calls are one untimed call of every model's compiled function in
    turn (the compile), before any warm-up or timed call; then the timed calls run the compiled functions
    too."""
    result, log = compiled_run
    stages = [i for i, e in enumerate(log) if e[0] == "stage"]
    assert [log[i][1:] for i in stages] == [("prefill", 8), ("decode", 8), ("prefill", 16), ("decode", 16)]
    for start, end in zip(stages, stages[1:] + [len(log)]):
        stage = log[start][1]
        block = [e for e in log[start + 1:end] if e[0] in ("tick", "compiled")]
        first_tick = block.index(("tick",))
        # one compile call per model, before the warm-up (decode: bursts of 4 calls of one model) and the timing
        assert first_tick >= 4 and [e[1] for e in block[:4]] == list(BENCH_MODELS)
        assert all(e[2] == stage for e in block if e[0] == "compiled")
        assert sum(e[0] == "compiled" for e in block[first_tick:]) >= 4 * 3  # the timed calls are compiled
    assert result.compiles and all(c["failure"] is None for c in result.compiles)


@pytest.mark.parametrize("regime", ["compiled", "eager"])
def test_all_rows_of_one_run_share_one_regime(compiled_run, regime, monkeypatch):
    if regime == "compiled":
        result = compiled_run[0]
    else:
        result = _logged_run(monkeypatch, [], compile="off")
    timed = [r for r in result.rows if r["ms"] is not None]
    decode = [r for r in timed if r["stage"].startswith("decode")]
    assert len(decode) == 8 + (1 if regime == "compiled" else 0)
    assert {r["compiled"] for r in timed} == {regime == "compiled"}
    assert f"regime: every model {regime}" in format_report(result)
    if regime == "compiled":
        assert all(r["compile_s"] >= 0 and r["graphs_compiled"] == 0 for r in timed)  # the stand-in compiles none
    else:
        assert not result.compiles and all("compile_s" not in r for r in timed)


def test_a_failed_compile_is_reported_and_never_timed_eagerly(monkeypatch):
    """HSTU's decode step fails to compile (it falls back to eager steps, with a warning): its decode rows have
    no time. SASRec's prefill fails to compile: no prefill time, but its decode (from an eager, untimed prefill)
    is timed compiled. FuXi-Linear's step compiles, then fails on its 3rd call, inside the timing: that row is
    dropped too."""
    log = []
    monkeypatch.setattr(torch, "compile", _StandInCompiler(log, fail={("hstu", "decode"), ("sasrec", "prefill")}))
    with pytest.warns(RuntimeWarning, match="compiling the KV-cache decode step failed"):
        result = _logged_run(monkeypatch, log, models=["fuxi-linear", "hstu", "sasrec"])
    rows = {(r["model"], r["stage"], r["seq_len"]): r for r in result.rows}
    for key, status in [(("hstu", "decode", 8), "compile failed: TorchDynamoException: InvalidCxxCompiler"),
                        (("hstu", "decode", 16), "skipped: compile failed at T=8"),
                        (("sasrec", "prefill", 8), "compile failed: TorchDynamoException: InvalidCxxCompiler"),
                        (("sasrec", "prefill", 16), "skipped: compile failed at T=8")]:
        assert rows[key]["status"].startswith(status) and rows[key]["ms"] is None and rows[key]["compiled"] is False
    for key in [("hstu", "prefill", 8), ("hstu", "prefill", 16), ("sasrec", "decode", 8), ("sasrec", "decode", 16),
                ("fuxi-linear", "prefill", 8), ("fuxi-linear", "decode", 8)]:
        assert rows[key]["status"] == "ok" and rows[key]["ms"] > 0 and rows[key]["compiled"] is True
    text = format_report(result)
    assert "| decode | 8 | " in text and "failed" in text
    assert "hstu decode: compiling failed at T=8 (TorchDynamoException: InvalidCxxCompiler" in text
    assert ("sasrec", "prefill") not in {(e[1], e[2]) for e in log[log.index(("stage", "prefill", 16)):]
                                          if e[0] == "compiled"}  # not tried again at T=16


def test_a_compiled_call_that_computes_something_else_is_a_failed_compile(monkeypatch):
    log = []
    monkeypatch.setattr(torch, "compile", _StandInCompiler(log, wrong={("fuxi-alpha", "prefill"),
                                                                       ("fuxi-linear", "decode")}))
    result = _logged_run(monkeypatch, log, models=["fuxi-linear", "fuxi-alpha"])
    for model, stage in [("fuxi-alpha", "prefill"), ("fuxi-linear", "decode")]:
        row = result.row(model, stage, 8)
        assert row["ms"] is None
        assert row["status"] == "compile failed: output tensor 0 differs from the eager call's by up to 0.5"
    assert result.row("fuxi-linear", "prefill", 16)["ms"] > 0 and result.row("fuxi-alpha", "decode", 16)["ms"] > 0


def test_a_compile_failing_inside_the_timing_drops_the_row(monkeypatch):
    log = []
    monkeypatch.setattr(torch, "compile", _StandInCompiler(log, fail={("fuxi-linear", "decode")}, fail_from=3))
    with pytest.warns(RuntimeWarning, match="compiling the decode step failed"):
        result = _logged_run(monkeypatch, log, models=["fuxi-linear", "sasrec"])
    fl = result.row("fuxi-linear", "decode", 8)
    assert fl["ms"] is None and fl["status"].startswith("compile failed: TorchDynamoException")
    assert result.row("fuxi-linear", "decode", 16)["status"] == "skipped: compile failed at T=8"
    assert result.row("fuxi-linear", "prefill", 16)["ms"] > 0 and result.row("sasrec", "decode", 16)["ms"] > 0


@pytest.mark.parametrize("name", BENCH_MODELS)
def test_each_models_prefill_compiles_to_two_graphs_equal_to_eager(name, tiny_models, monkeypatch):
    """torch.compile(model.prefill), traced with aot_eager (dynamo + AOT autograd, no C++ compile): the input
    checks (host reads) then the whole prefill as one graph -- two graphs, not dozens (FuXi-Linear's
    parameter-derived operands cache broke its prefill into ~37 graphs before it stepped aside under tracing)
    -- and the same outputs as the eager prefill."""
    from torch._dynamo.utils import counters

    from fuxi_linear.bench import CompiledPrefill
    from fuxi_linear.bench.compile import compile_config, disagreement

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: real(fn, backend="aot_eager", dynamic=kw.get("dynamic")))
    settings, models = tiny_models
    model = models[name]
    inputs = make_inputs(settings.batch_size, 16, settings.num_items, settings.seed)
    before = counters["stats"]["unique_graphs"]
    with compile_config(True), torch.inference_mode():
        compiled = prefill_call(model, inputs, 24, CompiledPrefill(model))
        eager = prefill_call(model, inputs, 24)
    assert counters["stats"]["unique_graphs"] - before == 2
    assert disagreement(compiled, eager) is None


# ---------------------------------------------------------------------------------------------- flags, errors
def test_bench_without_fuxi_linear_has_no_speedups(capsys):
    assert main(["bench", *TINY, "--seq-lens", "8", "--models", "sasrec,hstu"]) == 0
    text = capsys.readouterr().out
    assert "| hstu ms | sasrec ms |" in text and "× vs" not in text


def test_peak_bandwidth_table_and_flags():
    assert nominal_peak_gbs("NVIDIA H200") == 4800.0
    assert nominal_peak_gbs("NVIDIA H100 80GB HBM3") == 3350.0
    assert nominal_peak_gbs("NVIDIA A100-SXM4-80GB") == 2039.0
    assert nominal_peak_gbs("Some Future GPU") is None
    assert nominal_peak_gbs("NVIDIA GH200 480GB") is None  # not the H200 figure: the name does not tell the memory
    assert BenchSettings(device="cpu").resolve().decode_users == []
    assert BenchSettings(device="cpu", decode_users="4,2").resolve().decode_users == [2, 4]
    with pytest.raises(BenchError, match="--peak-gbs"):
        BenchSettings(device="cpu", peak_gbs=-1).resolve()


@pytest.mark.parametrize("argv, message", [
    (["--models", "fuxi-linear,transformer"], "unknown model name(s) 'transformer'"),
    (["--models", ""], "--models"),
    (["--seq-lens", "64,abc"], "'abc'"),
    (["--seq-lens", "0,64"], "positive"),
    (["--seq-lens", ""], "--seq-lens"),
    (["--decode-users", "4,x"], "--decode-users must be a comma-separated list"),
    (["--dtype", "fp8"], "--dtype must be one of fp32, bf16, fp16"),
    (["--batch-size", "0"], "--batch-size must be a positive int"),
    (["--embedding-dim", "40", "--num-heads", "4"], "fuxi-linear: embedding_dim=40 must be divisible by 2 * "
                                                    "temporal_num_periods=16"),
    (["--embedding-dim", "48", "--num-heads", "5"], "embedding_dim=48 must be divisible by num_heads=5"),
    (["--device", "tpu"], "--device must be auto, cpu, cuda"),
])
def test_bad_flags_give_clear_errors(argv, message, capsys):
    assert main(["bench", "--device", "cpu", *argv]) == 2
    assert message in capsys.readouterr().err


def test_compile_flag_choices(capsys):
    with pytest.raises(SystemExit):
        main(["bench", "--compile", "yes"])
    assert "invalid choice: 'yes'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "--compile-step", "off"])  # replaced by --compile


@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_half_precision_on_a_cpu_without_native_kernels_is_an_error(dtype, monkeypatch, capsys):
    monkeypatch.setattr(bench_settings, "half_precision_supported", lambda device, dt: dt == torch.float32)
    assert main(["bench", "--device", "cpu", "--dtype", dtype]) == 2
    err = capsys.readouterr().err
    assert f"--dtype {dtype} is not supported" in err and "CUDA" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_cuda_requested_without_cuda(capsys):
    assert main(["bench", "--device", "cuda"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_plot_without_matplotlib_fails_before_measuring(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    monkeypatch.setattr(bench_run, "run_benchmark", lambda *a, **k: pytest.fail("measured before the check"))
    assert main(["bench", *TINY, "--seq-lens", "8", "--plot", str(tmp_path / "x.png")]) == 2
    assert "matplotlib" in capsys.readouterr().err


def test_out_of_memory_is_skipped_not_fatal(monkeypatch):
    real = bench_run.prefill_call

    def prefill(model, inputs, capacity=None, prefill=None):
        if type(model).__name__ == "HSTU" and inputs.item_ids.shape[1] >= 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        return real(model, inputs, capacity, prefill)

    monkeypatch.setattr(bench_run, "prefill_call", prefill)
    messages = []
    result = run_benchmark(BenchSettings(seq_lens=[8, 16, 32], models=["fuxi-linear", "hstu"], **TINY_SETTINGS),
                           log=messages.append)
    hstu = {(r["stage"], r["seq_len"]): r for r in result.rows if r["model"] == "hstu"}
    assert hstu[("prefill", 8)]["status"] == "ok" and hstu[("decode", 8)]["status"] == "ok"
    assert hstu[("prefill", 16)]["status"] == "out of memory" and hstu[("decode", 16)]["ms"] is None
    assert hstu[("prefill", 32)]["status"] == "skipped: out of memory at T=16"
    assert all(r["status"] == "ok" for r in result.rows if r["model"] == "fuxi-linear")
    assert any("out of memory" in m for m in messages)
    assert "OOM" in format_report(result)


def test_other_errors_propagate(monkeypatch):
    def broken(model, inputs, capacity=None, prefill=None):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(bench_run, "prefill_call", broken)
    with pytest.raises(RuntimeError, match="a real bug"):
        run_benchmark(BenchSettings(seq_lens=[8], models=["sasrec"], **TINY_SETTINGS))


def test_settings_defaults_follow_the_device():
    s = BenchSettings(device="cpu").resolve()
    assert s.seq_lens == [64, 128, 256, 512, 1024, 2048] and s.embedding_dim == 64
    assert any("smaller than the paper" in n for n in s.notes)
    assert s.max_seq_len >= 2048 + s.warmup + s.decode_repeats
    with pytest.raises(BenchError, match="--threads"):
        BenchSettings(device="cpu", threads=0).resolve()


# ---------------------------------------------------------------------------------------------- O(1) decode
@pytest.fixture(scope="module")
def tiny_models():
    settings = BenchSettings(seq_lens=[16, 64], **TINY_SETTINGS).resolve()
    return settings, build_bench_models(settings)


def _prefilled(settings, model, T):
    inputs = make_inputs(settings.batch_size, T, settings.num_items, settings.seed)
    with torch.inference_mode():
        _, state = prefill_call(model, inputs, T + 4)
    return inputs, state


def test_fuxi_linear_decode_is_constant_in_the_history_length(tiny_models):
    settings, models = tiny_models
    model = models["fuxi-linear"]
    (in16, s16), (in64, s64) = _prefilled(settings, model, 16), _prefilled(settings, model, 64)
    assert [t.shape for t in s16.tensors()] == [t.shape for t in s64.tensors()]
    assert s16.nbytes_per_user() == s64.nbytes_per_user() == state_bytes_per_user(s64, 64) == FL_STATE
    with torch.inference_mode():
        decode_call(model, s16.clone(), in16)  # the first step derives the step weights (cached afterwards)
        cost16 = step_cost(lambda: decode_call(model, s16, in16))
        cost64 = step_cost(lambda: decode_call(model, s64, in64))
    assert cost16 == cost64  # same FLOPs, tensor elements and ATen calls at T=16 and T=64
    assert cost16["flops"] > 0 and cost16["ops"] > 0


@pytest.mark.parametrize("name", ["hstu", "fuxi-alpha", "sasrec"])
def test_kv_cache_decode_grows_with_the_history(tiny_models, name):
    """The same counter sees the baselines' O(T) step: the check above is not vacuous."""
    settings, models = tiny_models
    model = models[name]
    (in16, c16), (in64, c64) = _prefilled(settings, model, 16), _prefilled(settings, model, 64)
    with torch.inference_mode():
        cost16 = step_cost(lambda: decode_call(model, c16, in16))
        cost64 = step_cost(lambda: decode_call(model, c64, in64))
    assert cost64["flops"] > cost16["flops"] and cost64["elements"] > cost16["elements"]


def test_kv_cache_bytes_count_the_filled_length_not_the_capacity(tiny_models):
    settings, models = tiny_models
    inputs = make_inputs(2, 16, settings.num_items)
    with torch.inference_mode():
        _, cache = prefill_call(models["hstu"], inputs, capacity=40)
    assert kv_cache_bytes_per_user(cache, 16) == 16 * (KV_EVENT + 8) + 8  # keys/values, timestamps, the length
    assert cache.nbytes_per_user() == 40 * (KV_EVENT + 8) + 8  # KVCache counts its 40 preallocated slots


# ---------------------------------------------------------------------------------------------- the suites
def test_the_pytest_benchmark_suites_run_once_as_tests():
    """``pytest benchmarks/ --benchmark-disable``: every benchmark of the operator and model suites runs once
    as a plain test (tiny lengths, eager: the compiled regime's compile times are the bench's business), so
    the suites cannot rot unnoticed."""
    env = {**os.environ, "FUXI_BENCH_DEVICE": "cpu", "FUXI_BENCH_SEQ_LENS": "16,32", "FUXI_BENCH_BATCH": "2",
           "FUXI_BENCH_COMPILE": "off", "FUXI_BENCH_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks/", "--benchmark-disable", "-q",
                           "-p", "no:cacheprovider"], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    tail = proc.stdout[-3000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, tail
    # op suite: 3 channels x (forward, forward+backward) x 2 lengths + 3 decode steps; model suite: 4 models x
    # (prefill, decode) x 2 lengths
    assert "31 passed" in proc.stdout, tail

