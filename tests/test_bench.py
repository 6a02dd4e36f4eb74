"""`fuxi-linear bench` / `demo` and the timing library, on tiny settings (fast on a CPU).

Timings themselves are not asserted (a shared CPU is too noisy): the tests check the rows, files and errors,
and that FuXi-Linear's decode step is O(1) by construction — its state and the work of a step (FLOPs, tensor
elements touched, ATen calls) are identical whatever the history length behind the state.
"""
import json
import sys

import pytest
import torch

import fuxi_linear.bench.run as bench_run
import fuxi_linear.bench.settings as bench_settings
from fuxi_linear.bench import (BENCH_MODELS, BenchError, BenchSettings, build_bench_models, decode_call, format_report,
                               kv_cache_bytes_per_user, make_inputs, nominal_peak_gbs, prefill_call, run_benchmark,
                               state_bytes_per_user, time_call)
from fuxi_linear.cli import main
from step_cost import step_cost

TINY = ["--device", "cpu", "--batch-size", "2", "--embedding-dim", "32", "--num-blocks", "1", "--num-heads", "2",
        "--qk-dim", "8", "--warmup", "0", "--repeats", "2", "--decode-repeats", "2", "--threads", "1",
        "--no-progress", "--compile-step", "off"]
TINY_SETTINGS = dict(device="cpu", batch_size=2, embedding_dim=32, num_blocks=1, num_heads=2, qk_dim=8, warmup=0,
                     repeats=1, decode_repeats=1, threads=1, progress=False, compile_step="off")


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
    assert {(r["model"], r["stage"], r["seq_len"]) for r in rows} == {
        (m, st, T) for m in BENCH_MODELS for st in ("prefill", "decode") for T in (8, 16)}
    assert len(rows) == 16
    for r in rows:
        assert r["status"] == "ok" and r["ms"] > 0 and r["batch_size"] == 2
        assert r["device"] == "cpu" and r["dtype"] == "fp32" and r["repeats"] == 2
        assert r["ms_q25"] <= r["ms"] <= r["ms_q75"]
    nbytes = {(r["model"], r["seq_len"]): r["state_bytes_per_user"] for r in rows}
    assert nbytes[("fuxi-linear", 8)] == nbytes[("fuxi-linear", 16)]
    for m in ("hstu", "fuxi-alpha", "sasrec"):  # KV caches grow with the filled length, not the capacity
        assert nbytes[(m, 16)] - nbytes[(m, 8)] == nbytes[(m, 8)] - 8  # 8 bytes: the length counter
    text = capsys.readouterr().out
    assert "machine: cpu" in text and "torch " in text and "threads" in text
    assert "| decode | 16 |" in text and "× vs hstu" in text and "× vs sasrec" in text
    if _has_matplotlib():
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_decode_throughput_rows_and_table(tmp_path, capsys):
    """users/s on every decode row, the N sweep as extra rows (stage "decode-throughput"), a throughput
    table; on a CPU no GB/s or % of peak (those are CUDA figures)."""
    out = tmp_path / "rows.json"
    assert main(["bench", *TINY, "--seq-lens", "8", "--decode-users", "5,3", "--models", "fuxi-linear,sasrec",
                 "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    decode = [r for r in rows if r["stage"] == "decode"]
    sweep = [r for r in rows if r["stage"] == "decode-throughput"]
    assert len(decode) == 2 and [r["batch_size"] for r in sweep] == [3, 5]
    for r in decode + sweep:
        assert r["users_per_s"] == pytest.approx(r["batch_size"] / (r["ms"] / 1e3))
        assert "gbs" not in r and r["bytes_per_step"] > 0
    fl = next(r for r in decode if r["model"] == "fuxi-linear")
    assert fl["bytes_per_step"] == 2 * (2 * fl["state_bytes_per_user"] + 8 + 16 + 32 * 4)
    assert all(r["model"] == "fuxi-linear" and r["status"] == "ok" for r in sweep)
    text = capsys.readouterr().out
    assert "decode throughput" in text and "| fuxi-linear | 256 | 5 |" in text and "GB/s" not in text


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


def test_compile_step_setting_follows_the_device_and_the_models():
    assert BenchSettings(device="cpu").resolve().compile_step == "on"
    assert BenchSettings(device="cpu", compile_step="off").resolve().compile_step == "off"
    assert BenchSettings(device="cpu", models=["hstu"]).resolve().compile_step == "off"
    assert any("compiled step" in n for n in BenchSettings(device="cpu").resolve().notes)
    with pytest.raises(BenchError, match="--compile-step must be one of auto, on, off, got 'yes'"):
        BenchSettings(device="cpu", compile_step="yes").resolve()


@pytest.mark.parametrize("compiles", [True, False])
def test_bench_times_the_compiled_step_after_an_untimed_compile(monkeypatch, compiles):
    """``--compile-step on`` (the CPU default): FuXi-Linear's decode rows say which step they timed, the first
    (compiling) call of each batch size is untimed, and a failed compile is a note, not an error. The compile
    is replaced by a stand-in (the uncompiled function; or one that fails like a missing C++ compiler) so that
    the test does not pay inductor's tens of seconds."""
    import torch._dynamo
    import fuxi_linear.compiled_step as compiled_step

    firsts = []

    def stand_in(fn, options):
        def call(*args):
            firsts.append(bench_run.time_interleaved.calls)
            if not compiles:
                raise torch._dynamo.exc.TorchDynamoException("InvalidCxxCompiler: no working C++ compiler found")
            return fn(*args)
        return call

    timed = bench_run.time_interleaved

    def counting(*args, **kwargs):
        counting.calls += 1
        return timed(*args, **kwargs)

    counting.calls = 0
    monkeypatch.setattr(bench_run, "time_interleaved", counting)
    monkeypatch.setattr(compiled_step, "_compile", stand_in)
    settings = BenchSettings(seq_lens=[8, 16], models=["fuxi-linear", "sasrec"], decode_users=[3],
                             **{**TINY_SETTINGS, "compile_step": "on"})
    with pytest.warns(RuntimeWarning, match="decode steps run eagerly") if not compiles else _no_warning():
        result = run_benchmark(settings)
    rows = [r for r in result.rows if r["model"] == "fuxi-linear" and r["stage"].startswith("decode")]
    assert len(rows) == 3 and all(r["decode_step"] == ("compiled" if compiles else "eager") for r in rows)
    assert all("decode_step" not in r for r in result.rows if r["model"] == "sasrec")
    # the first call of the step came before any decode timing (prefill T=8 was timed once: counter 1)
    assert firsts and firsts[0] == 1
    failed_note = [n for n in result.notes if "compiling FuXi-Linear's decode step failed" in n]
    assert bool(failed_note) != compiles


class _no_warning:
    def __enter__(self):
        import warnings

        self._cm = warnings.catch_warnings()
        self._cm.__enter__()
        warnings.simplefilter("error", RuntimeWarning)

    def __exit__(self, *exc):
        return self._cm.__exit__(*exc)


def test_bench_without_fuxi_linear_has_no_speedups(capsys):
    assert main(["bench", *TINY, "--seq-lens", "8", "--models", "sasrec,hstu"]) == 0
    text = capsys.readouterr().out
    assert "| hstu ms | sasrec ms |" in text and "×" not in text


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

    def prefill(model, inputs, capacity=None):
        if type(model).__name__ == "HSTU" and inputs.item_ids.shape[1] >= 16:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 64.00 GiB")
        return real(model, inputs, capacity)

    monkeypatch.setattr(bench_run, "prefill_call", prefill)
    messages = []
    result = run_benchmark(BenchSettings(seq_lens=[8, 16, 32], models=["fuxi-linear", "hstu"], **TINY_SETTINGS),
                           log=messages.append)
    hstu = {(r["stage"], r["seq_len"]): r for r in result.rows if r["model"] == "hstu"}
    assert hstu[("prefill", 8)]["status"] == "ok" and hstu[("decode", 8)]["status"] == "ok"
    assert hstu[("prefill", 16)]["status"] == "out of memory" and hstu[("decode", 16)]["ms"] is None
    assert hstu[("prefill", 32)]["status"].startswith("skipped")
    assert all(r["status"] == "ok" for r in result.rows if r["model"] == "fuxi-linear")
    assert any("out of memory" in m for m in messages)
    assert "OOM" in format_report(result)


def test_other_errors_propagate(monkeypatch):
    def broken(model, inputs, capacity=None):
        raise RuntimeError("a real bug")

    monkeypatch.setattr(bench_run, "prefill_call", broken)
    with pytest.raises(RuntimeError, match="a real bug"):
        run_benchmark(BenchSettings(seq_lens=[8], models=["sasrec"], **TINY_SETTINGS))


def test_time_call_excludes_warmup_and_setup():
    calls = []
    times = time_call(lambda x: calls.append(("call", x)), "cpu", warmup=2, repeats=3,
                      setup=lambda: (calls.append(("setup", None)) or (len(calls),)))
    assert len(times) == 3 and all(t >= 0 for t in times)
    assert [c[0] for c in calls] == ["setup", "call"] * 5  # a fresh setup before every call, warm-up included


def test_bursts_time_all_but_the_first_call_of_each_burst(monkeypatch):
    """Two functions round-robin in bursts of 3: a burst's first call is untimed, each gets exactly ``repeats``
    timed calls, and the rounds alternate the functions."""
    import fuxi_linear.bench.timing as timing

    log, timed = [], []
    real = timing._time_once

    def counted(fn, args, device):
        timed.append(1)
        return real(fn, args, device)

    monkeypatch.setattr(timing, "_time_once", counted)
    calls = {name: ((lambda n=name: log.append(n)), None) for name in ("a", "b")}
    times, failed = timing.time_interleaved(calls, "cpu", warmup=1, repeats=5, burst=3)
    assert not failed and [len(times[n]) for n in "ab"] == [5, 5] and len(timed) == 10
    # warm-up round: 3 + 3; then 3 rounds (2 timed per burst): a a a b b b | a a a b b b | a a b b
    assert "".join(log) == "aaabbb" + "aaabbb" * 2 + "aabb"
    assert bench_settings.timed_rounds(5, 3) == 3 and bench_settings.timed_rounds(5, 1) == 5
    s = BenchSettings(device="cpu", warmup=1, decode_repeats=5, decode_burst=3).resolve()
    assert s.steps_per_state == (1 + 3) * 3 + 1  # a state stepped in place has room for every call
    s = BenchSettings(device="cpu", warmup=0, decode_repeats=5, decode_burst=3).resolve()
    assert s.decode_warmup == 1 and s.steps_per_state == (1 + 3) * 3 + 1  # decode always warms up once


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
    assert s16.nbytes_per_user() == s64.nbytes_per_user() == state_bytes_per_user(s64, 64)
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
    L, H, dqk, dv = settings.num_blocks, settings.num_heads, settings.qk_dim, settings.embedding_dim // 2
    expected = 16 * (L * H * (dqk + dv) * 4 + 8) + 8  # fp32 keys/values, int64 timestamps, the length
    assert kv_cache_bytes_per_user(cache, 16) == expected
    assert cache.nbytes_per_user() > expected  # KVCache counts its 40 preallocated slots


def test_settings_defaults_follow_the_device():
    s = BenchSettings(device="cpu").resolve()
    assert s.seq_lens == [64, 128, 256, 512] and s.embedding_dim == 64
    assert any("smaller than the paper" in n for n in s.notes)
    assert s.max_seq_len >= 512 + s.warmup + s.decode_repeats
    with pytest.raises(BenchError, match="--threads"):
        BenchSettings(device="cpu", threads=0).resolve()


# ---------------------------------------------------------------------------------------------- demo
def test_demo_end_to_end(tmp_path):
    from fuxi_linear.bench.demo import DemoSettings, run_demo

    lines = []
    settings = DemoSettings(output=str(tmp_path / "demo"), device="cpu", epochs=1, synthetic_users=60,
                            synthetic_items=80, synthetic_mean_events=30, max_seq_len=20, embedding_dim=32,
                            num_blocks=1, num_heads=2, batch_size=32, num_negatives=16, bench_seq_lens=(8, 16),
                            bench_batch_size=2, bench_repeats=1, bench_decode_repeats=1, threads=1, progress=False,
                            extra_train=dict(temporal_num_periods=4),
                            extra_bench=dict(embedding_dim=32, num_blocks=1, num_heads=2, qk_dim=8, warmup=0,
                                             compile_step="off"))
    summary = run_demo(settings, log=lines.append)
    out = tmp_path / "demo"
    assert (out / "train" / "metrics.json").is_file() and (out / "train" / "checkpoint.pt").is_file()
    saved = json.loads((out / "demo.json").read_text())
    for who in ("fuxi_linear", "most_popular"):
        assert set(saved[who]) >= {"ndcg@10", "hr@10", "mrr"}
        assert 0.0 <= saved[who]["ndcg@10"] <= 1.0
    rows = json.loads((out / "bench.json").read_text())
    assert len(rows) == 4 * 2 * 2 and summary["bench"]["rows"] == rows
    if _has_matplotlib():
        assert (out / "bench.png").is_file()
    text = "\n".join(lines)
    assert "| ndcg@10 |" in text and "most popular" in text and "machine: cpu" in text and "× vs hstu" in text


def test_demo_cli_wiring(monkeypatch, tmp_path):
    import fuxi_linear.bench.demo as demo

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda s: seen.setdefault("settings", s))
    assert main(["demo", "--output", str(tmp_path / "d"), "--epochs", "2", "--no-bench", "--no-progress"]) == 0
    s = seen["settings"]
    assert s.output == str(tmp_path / "d") and s.epochs == 2 and not s.bench and not s.progress
    assert demo.DemoSettings().output == "runs/demo"


@pytest.mark.parametrize("old, new, names", [
    ("fuxi_linear.benchmarking", "fuxi_linear.bench", ["run_benchmark", "BenchSettings", "HostSyncCounter"]),
    ("fuxi_linear.demo", "fuxi_linear.bench.demo", ["run_demo", "DemoSettings", "read_table"]),
])
def test_old_module_paths_warn_and_give_the_same_objects(old, new, names, monkeypatch):
    import importlib

    monkeypatch.delitem(sys.modules, old, raising=False)  # imported afresh, so its warning is raised here
    with pytest.warns(DeprecationWarning, match=f"{old} is deprecated: import from {new}"):
        module = importlib.import_module(old)
    current = importlib.import_module(new)
    assert all(getattr(module, n) is getattr(current, n) for n in names)
