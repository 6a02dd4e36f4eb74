"""A stub clock for the benchmark's timings, and stand-ins of its timed calls that advance it by known
amounts: a run's rows then have exact, known times (tests/test_bench.py, tests/test_demo.py)."""
import fuxi_linear.bench.run as bench_run

#: class name -> the bench's model name
BENCH_NAME = {"FuXiLinear": "fuxi-linear", "HSTU": "hstu", "FuXiAlpha": "fuxi-alpha", "SASRec": "sasrec"}
#: what the stubbed machine load reads before and after a run
LOAD_BEFORE = {"load_average": [3.5, 3.0, 2.5], "busy_cpus": 1.8}
LOAD_AFTER = {"load_average": [3.9, 3.1, 2.6], "busy_cpus": 1.6}


class StubClock:
    """A host clock that only moves when a stubbed call advances it (seconds)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def stub_calls(monkeypatch, clock, prefill_ms, decode_ms):
    """Replace the bench's prefill and decode calls by the real calls plus a known advance of ``clock``:
    ``prefill_ms[model]`` (ms, or a function of the length T), ``decode_ms[model](T, i)`` for the i-th decode call
    of that model at length T. The machine's load reads LOAD_BEFORE, then LOAD_AFTER (then again, for a
    second run)."""
    counts = {}
    real_prefill, real_decode = bench_run.prefill_call, bench_run.decode_call

    def prefill(model, inputs, capacity=None, prefill=None):
        ms = prefill_ms[BENCH_NAME[type(model).__name__]]
        clock.now += (ms(inputs.item_ids.shape[1]) if callable(ms) else ms) / 1e3
        return real_prefill(model, inputs, capacity, prefill)

    def decode(model, state, inputs):
        name, T = BENCH_NAME[type(model).__name__], inputs.item_ids.shape[1]
        i = counts[(name, T)] = counts.get((name, T), -1) + 1
        clock.now += decode_ms[name](T, i) / 1e3
        return real_decode(model, state, inputs)

    loads = [LOAD_BEFORE, LOAD_AFTER]
    reads = []

    def load_snapshot():
        reads.append(1)
        return loads[(len(reads) - 1) % 2]

    monkeypatch.setattr(bench_run, "prefill_call", prefill)
    monkeypatch.setattr(bench_run, "decode_call", decode)
    monkeypatch.setattr(bench_run, "load_snapshot", load_snapshot)
