"""`fuxi-linear demo`: its reading of a benchmark table (on synthetic rows: crossovers, speed-ups, memory, the
regime, noisy rows left out), its split of the lengths into runs, and the whole demo end to end on tiny
settings with a stub clock (so that which rows are noisy, and what the reading says, is known)."""
import json

import pytest

import fuxi_linear.end_to_end_demo as demo
from bench_stubs import StubClock, stub_calls
from fuxi_linear.end_to_end_demo import DemoSettings, _bench_settings, read_table
from fuxi_linear.cli import main

MODELS = ("fuxi-linear", "hstu", "fuxi-alpha", "sasrec")
LENS = (64, 128, 256, 512, 1024)


def _rows(ms_by_model, state_bytes, noisy=(), compiled=False):
    """Prefill rows with the given milliseconds per length (None: not measured, e.g. out of memory);
    ``noisy``: (model, T) pairs flagged noisy."""
    rows = []
    for model, times in ms_by_model.items():
        for T, ms in zip(LENS, times):
            nbytes = state_bytes if model == "fuxi-linear" else 1000 * T + 8
            flag = None if ms is None else (model, T) in noisy
            rows.append(dict(model=model, stage="prefill", seq_len=T, ms=ms, noisy=flag, compiled=compiled,
                             state_bytes_per_user=nbytes))
            rows.append(dict(model=model, stage="decode", seq_len=T, ms=1.0, noisy=False, compiled=compiled,
                             state_bytes_per_user=nbytes))
    return rows


def test_crossovers_speedups_and_memory_are_read_from_the_rows():
    rows = _rows({
        "fuxi-linear": [10, 12, 16, 24, 40],
        "hstu": [5, 13, 30, 90, 400],        # slower than FuXi-Linear from T=128 on
        "fuxi-alpha": [20, 11, 30, 90, 400],  # faster at 64, behind at 128, ahead again from 256: "from T=256"
        "sasrec": [2, 3, 6, 12, 30],          # never caught
    }, state_bytes=25_600)
    s = read_table(rows, MODELS, LENS)
    assert s.startswith("Reading the table (every model eager): FuXi-Linear's prefill beats HSTU from T=128 "
                        "(10.0× at T=1024)")
    assert "beats FuXi-α from T=256 (10.0× at T=1024)" in s
    assert "and is still behind SASRec at T=1024 (0.75×)" in s
    assert "decode state is 25.0 KiB per user at every length" in s
    assert "KV cache holds 1000.0 KiB per user at T=1024 (40× as much)" in s
    assert s.endswith(".") and ". " not in s and "\n" not in s  # one sentence
    compiled = read_table(_rows({"fuxi-linear": [1] * 5, "hstu": [2] * 5}, 512, compiled=True), MODELS, LENS)
    assert compiled.startswith("Reading the table (every model compiled): ")


def test_always_faster_and_missing_measurements():
    rows = _rows({
        "fuxi-linear": [1, 2, 3, 4, 5],
        "hstu": [2, 4, None, 8, 10],   # a length without a measurement is skipped
        "fuxi-alpha": [None] * 5,      # nothing measured: not mentioned
        "sasrec": [9, 9, 9, 9, 9],
    }, state_bytes=512)
    s = read_table(rows, MODELS, LENS)
    assert "beats HSTU at every length read (2.0× at T=1024; 4 of 5 lengths read)" in s
    assert "and beats SASRec at every length (1.8× at T=1024)" in s
    assert "FuXi-α" not in s and "left out" not in s
    assert "decode state is 512 B per user" in s and "(2000× as much)" in s
    # slower everywhere
    slow = _rows({"fuxi-linear": [9] * 5, "hstu": [1] * 5}, state_bytes=512)
    assert "is still behind HSTU at T=1024 (0.11×)" in read_table(slow, ("fuxi-linear", "hstu"), LENS)


def test_noisy_rows_are_left_out_of_the_reading_and_named():
    """HSTU's prefill at T=512 is noisy and reads faster than FuXi-Linear's (the kind of figure a busy machine
    produces): read, it would move the crossover to T=1024; left out, the crossover is T=128, and the
    sentence says which row was dropped. A noisy row of FuXi-Linear's drops that length for every baseline."""
    rows = _rows({"fuxi-linear": [10, 12, 16, 24, 40], "hstu": [5, 13, 30, 20, 400]}, state_bytes=512,
                 noisy={("hstu", 512)})
    s = read_table(rows, ("fuxi-linear", "hstu"), LENS)
    assert s.startswith("Reading the table (every model eager; 1 prefill row left out as too noisy to read: hstu "
                        "T=512): FuXi-Linear's prefill beats HSTU from T=128 (10.0× at T=1024; 4 of 5 lengths read)")
    rows = _rows({"fuxi-linear": [10, 12, 16, 24, 4000], "hstu": [5, 13, 30, 90, 400]}, state_bytes=512,
                 noisy={("fuxi-linear", 1024), ("hstu", 64)})
    s = read_table(rows, ("fuxi-linear", "hstu"), LENS)
    assert "2 prefill rows left out as too noisy to read: fuxi-linear T=1024, hstu T=64" in s
    # T=1024 (noisy) and T=64 (noisy) not read: "every length" only of those read, and it says so
    assert "beats HSTU at every length read (3.8× at T=512; 3 of 5 lengths read)" in s


def test_long_lengths_get_their_own_run_with_fewer_repeats():
    s = DemoSettings(device="cpu", bench_seq_lens=(4096, 64, 512, 1024), bench_long_from=1024, bench_repeats=5,
                     bench_long_repeats=3, bench_long_decode_repeats=4, progress=False)
    short, long = _bench_settings(s)
    assert short.seq_lens == [64, 512] and short.repeats == 5 and short.warmup > 0
    assert long.seq_lens == [1024, 4096] and long.repeats == 3 and long.decode_repeats == 4 and long.warmup == 0
    assert any("T >= 1024" in n for n in long.notes)
    assert short.compile == long.compile == "off"  # the demo's default regime: every model eager
    assert DemoSettings().bench_long_repeats >= 3  # every row's spread can be judged
    only_short = _bench_settings(DemoSettings(device="cpu", bench_seq_lens=(8, 16), progress=False, compile="on"))
    assert len(only_short) == 1 and only_short[0].seq_lens == [8, 16] and only_short[0].compile == "on"


def test_demo_end_to_end_with_a_noisy_row(tmp_path, monkeypatch):
    """Train, evaluate, benchmark on tiny settings; the benchmark's clock is a stub and SASRec's prefill at T=16
    is noisy (alternating 1 and 9 ms calls), so the reading leaves it out and says so, and the demo ends with
    a warning. The metrics written are the training run's own and the most-popular baseline's, recomputed
    here from the same split."""
    from fuxi_linear.data import leave_one_out
    from fuxi_linear.evaluation import most_popular_metrics
    from fuxi_linear.training import load_log

    clock, calls = StubClock(), {}

    def sasrec_prefill(T):
        calls[T] = calls.get(T, 0) + 1
        return (9.0 if calls[T] % 2 else 1.0) if T == 16 else 2.0

    stub_calls(monkeypatch, clock, {"fuxi-linear": 3.0, "hstu": lambda T: T / 4, "fuxi-alpha": lambda T: T / 2,
                                    "sasrec": sasrec_prefill}, {m: (lambda T, i: 0.5) for m in MODELS})
    real_run = demo.run_benchmark
    monkeypatch.setattr(demo, "run_benchmark", lambda settings, log: real_run(settings, log=log, clock=clock))
    lines = []
    settings = DemoSettings(output=str(tmp_path / "demo"), device="cpu", epochs=1, synthetic_users=60,
                            synthetic_items=80, synthetic_mean_events=30, max_seq_len=20, embedding_dim=32,
                            num_blocks=1, num_heads=2, batch_size=32, num_negatives=16, bench_seq_lens=(8, 16),
                            bench_batch_size=2, bench_repeats=4, bench_decode_repeats=3, threads=1, progress=False,
                            extra_train=dict(temporal_num_periods=4),
                            extra_bench=dict(embedding_dim=32, num_blocks=1, num_heads=2, qk_dim=8, warmup=0))
    summary = demo.run_demo(settings, log=lines.append)
    out = tmp_path / "demo"
    saved = json.loads((out / "demo.json").read_text())
    trained = json.loads((out / "train" / "metrics.json").read_text())
    assert saved["fuxi_linear"] == trained["test"]  # the training run's test metrics, as written there
    cfg = demo._train_config(settings)
    splits = leave_one_out(load_log(cfg), cfg.max_seq_len, mode=cfg.split, train_stride=cfg.train_stride)
    assert saved["most_popular"] == pytest.approx(most_popular_metrics(splits, exclude_history=cfg.exclude_history,
                                                                       mrr_cap=cfg.mrr_cap))
    for who in ("fuxi_linear", "most_popular"):  # one held-out event per user: these orders always hold
        m = saved[who]
        assert m["hr@50"] >= m["hr@10"] >= m["ndcg@10"] and m["ndcg@50"] >= m["ndcg@10"] and m["hr@50"] > 0
    rows = json.loads((out / "bench.json").read_text())
    assert len(rows) == 4 * 2 * 2 and summary["bench"]["rows"] == rows
    assert {r["compiled"] for r in rows} == {False} and "every model eager" in saved["bench"]["regime"]
    assert [(r["model"], r["stage"], r["seq_len"]) for r in rows if r["noisy"]] == [("sasrec", "prefill", 16)]
    assert saved["bench"]["noisy_rows"] == ["sasrec prefill T=16"]
    reading = saved["bench"]["reading"]
    assert reading.startswith("Reading the table (every model eager; 1 prefill row left out as too noisy to read: "
                              "sasrec T=16): FuXi-Linear's prefill beats HSTU from T=16 (1.3× at T=16)")
    assert "beats FuXi-α at every length (2.7× at T=16)" in reading
    assert "behind SASRec at T=8 (0.67×; 1 of 2 lengths read)" in reading
    text = "\n".join(lines)
    assert "| ndcg@10 |" in text and "most popular" in text and "machine: cpu" in text and "× vs hstu" in text
    assert "WARNING: 1 of 16 timed rows are noisy" in text and reading in text
    assert lines[-1].startswith("warning: 1 benchmark rows were noisy")
    if _has_matplotlib():
        assert (out / "bench.png").is_file()


def _has_matplotlib():
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_demo_cli_wiring(monkeypatch, tmp_path):
    seen = []
    monkeypatch.setattr(demo, "run_demo", seen.append)
    assert main(["demo", "--output", str(tmp_path / "d"), "--epochs", "2", "--no-bench", "--no-progress",
                 "--compile", "on"]) == 0
    assert main(["demo", "--no-bench"]) == 0
    first, default = seen
    assert first.output == str(tmp_path / "d") and first.epochs == 2 and not first.bench and not first.progress
    assert first.compile == "on" and default.compile == "off" and default.output == "runs/demo"
