"""The demo's reading of a benchmark table (on synthetic rows) and its split of the lengths into runs."""
from fuxi_linear.bench.demo import DemoSettings, _bench_settings, read_table

MODELS = ("fuxi-linear", "hstu", "fuxi-alpha", "sasrec")
LENS = (64, 128, 256, 512, 1024)


def _rows(ms_by_model, state_bytes):
    """Prefill rows with the given milliseconds per length (None: not measured, e.g. out of memory)."""
    rows = []
    for model, times in ms_by_model.items():
        for T, ms in zip(LENS, times):
            nbytes = state_bytes if model == "fuxi-linear" else 1000 * T + 8
            rows.append(dict(model=model, stage="prefill", seq_len=T, ms=ms, state_bytes_per_user=nbytes))
            rows.append(dict(model=model, stage="decode", seq_len=T, ms=1.0, state_bytes_per_user=nbytes))
    return rows


def test_crossovers_speedups_and_memory_are_read_from_the_rows():
    rows = _rows({
        "fuxi-linear": [10, 12, 16, 24, 40],
        "hstu": [5, 13, 30, 90, 400],        # slower than FuXi-Linear from T=128 on
        "fuxi-alpha": [20, 11, 30, 90, 400],  # faster at 64, behind at 128, ahead again from 256: "from T=256"
        "sasrec": [2, 3, 6, 12, 30],          # never caught
    }, state_bytes=25_600)
    s = read_table(rows, MODELS, LENS)
    assert s.startswith("Reading the table: FuXi-Linear's prefill beats HSTU from T=128 (10.0× at T=1024)")
    assert "beats FuXi-α from T=256 (10.0× at T=1024)" in s
    assert "and is still behind SASRec at T=1024 (0.75×)" in s
    assert "decode state is 25.0 KiB per user at every length" in s
    assert "KV cache holds 1000.0 KiB per user at T=1024 (40× as much)" in s
    assert s.endswith(".") and ". " not in s and "\n" not in s  # one sentence


def test_always_faster_and_missing_measurements():
    rows = _rows({
        "fuxi-linear": [1, 2, 3, 4, 5],
        "hstu": [2, 4, None, 8, 10],   # a length without a measurement is skipped
        "fuxi-alpha": [None] * 5,      # nothing measured: not mentioned
        "sasrec": [9, 9, 9, 9, 9],
    }, state_bytes=512)
    s = read_table(rows, MODELS, LENS)
    assert "beats HSTU at every length (2.0× at T=1024)" in s and "and beats SASRec at every length (1.8× at T=1024)" in s
    assert "FuXi-α" not in s
    assert "decode state is 512 B per user" in s and "(2000× as much)" in s
    # slower everywhere
    slow = _rows({"fuxi-linear": [9] * 5, "hstu": [1] * 5}, state_bytes=512)
    assert "is still behind HSTU at T=1024 (0.11×)" in read_table(slow, ("fuxi-linear", "hstu"), LENS)


def test_long_lengths_get_their_own_run_with_fewer_repeats():
    s = DemoSettings(device="cpu", bench_seq_lens=(4096, 64, 512, 1024), bench_long_from=1024, bench_repeats=5,
                     bench_long_repeats=1, bench_long_decode_repeats=3, progress=False)
    short, long = _bench_settings(s)
    assert short.seq_lens == [64, 512] and short.repeats == 5 and short.warmup > 0
    assert long.seq_lens == [1024, 4096] and long.repeats == 1 and long.decode_repeats == 3 and long.warmup == 0
    assert any("T >= 1024" in n for n in long.notes)
    only_short = _bench_settings(DemoSettings(device="cpu", bench_seq_lens=(8, 16), progress=False))
    assert len(only_short) == 1 and only_short[0].seq_lens == [8, 16]
