"""CPU decode speed: FuXi-Linear's eager and compiled ``model.step`` against the KV-cache steps of SASRec,
HSTU and FuXi-alpha, on the ``fuxi-linear bench`` CPU default model (2 blocks, D=64, H=4, dqk=16).

    python benchmarks/cpu_decode_speed.py [--seq-lens 256,2048] [--batch-size 4] [--threads 1,2]
                                          [--repeats 200] [--burst 5] [--warmup 3] [--no-validate-row]

For each thread count and history length T: every model prefills the same B random histories of T events
(``fuxi_linear.bench.make_inputs``), under ``torch.inference_mode()``; then decode steps are timed,
each on a fresh clone of the prefilled state (cloned outside the timed region, so every step is at exactly
T), in rounds over the models in a shuffled order, a burst of consecutive steps per model and round whose
first step is not timed (see :func:`time_round_robin`). All steps validate their inputs, as the bench's do
(``model.step(state, ...)``); the ``fuxi-linear compiled validate=False`` row is the step without its
checks. ``fuxi-linear compiled`` is the same model after ``model.compile_step()``; its first step compiles
(or loads inductor's on-disk cache; "compile s"). Prints the medians in microseconds and each baseline's
median over FuXi-Linear's.
"""
from __future__ import annotations

import argparse
import copy
import os
import random
import statistics
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

from fuxi_linear.bench import BenchSettings, build_bench_models, make_inputs, prefill_call

BASELINES = ("sasrec", "hstu", "fuxi-alpha")


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def time_round_robin(calls: Dict[str, Tuple[Callable, Callable]], warmup: int, repeats: int, burst: int = 1,
                     seed: int = 0) -> Dict[str, List[float]]:
    """``name -> (fn, setup)``: ``repeats`` timed calls ``fn(setup())`` per name (setup untimed), in rounds
    after ``warmup`` untimed rounds; microseconds per call.

    Each round visits every name once, in a shuffled order, and runs ``burst`` consecutive calls of it of
    which the first is untimed when ``burst > 1``: a step right after another model's step and its state
    copy runs with that model's data in the caches (at T = 2048 a baseline's KV cache and its clone are
    megabytes), which a serving loop that only decodes never sees; ``burst=1`` times those cold calls.
    The shuffle keeps any such order effect from favouring one model.
    """
    times: Dict[str, List[float]] = {name: [] for name in calls}
    order = list(calls)
    shuffle = random.Random(seed).shuffle
    timed_per_round = max(burst - 1, 1)
    rounds = warmup + -(-repeats // timed_per_round)
    for r in range(rounds):
        shuffle(order)
        for name in order:
            fn, setup = calls[name]
            for i in range(burst):
                arg = setup()
                start = time.perf_counter()
                fn(arg)
                elapsed = time.perf_counter() - start
                if r >= warmup and (burst == 1 or i > 0) and len(times[name]) < repeats:
                    times[name].append(elapsed * 1e6)
    return times


def run(seq_lens: List[int], batch_size: int, threads: List[int], warmup: int, repeats: int, burst: int = 5,
        unvalidated_row: bool = True) -> List[dict]:
    rows = []
    steps = 2  # each timed step is on a fresh clone of the prefilled state
    settings = BenchSettings(device="cpu", seq_lens=seq_lens, batch_size=batch_size,
                             models=["fuxi-linear", *BASELINES], progress=False, compile_step="off").resolve()
    models = build_bench_models(settings)
    eager = models["fuxi-linear"]
    compiled = copy.deepcopy(eager).compile_step()
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for T in seq_lens:
            inputs = make_inputs(batch_size, T, settings.num_items)
            step = inputs.step
            with torch.inference_mode():
                states = {name: prefill_call(m, inputs, capacity=T + steps)[1] for name, m in models.items()}
                compile_s: Optional[float] = None
                start = time.perf_counter()
                compiled.step(states["fuxi-linear"].clone(), *step)  # compiles on the first call of its kind
                compile_s = time.perf_counter() - start
                calls = {
                    "fuxi-linear eager": (lambda s: eager.step(s, *step), states["fuxi-linear"].clone),
                    "fuxi-linear compiled": (lambda s: compiled.step(s, *step), states["fuxi-linear"].clone),
                }
                if unvalidated_row:
                    calls["fuxi-linear compiled validate=False"] = (
                        lambda s: compiled.step(s, *step, validate=False), states["fuxi-linear"].clone)
                for name in BASELINES:
                    calls[name] = ((lambda s, m=models[name]: m.step(s, *step)), states[name].clone)
                load_before = _load()
                times = time_round_robin(calls, warmup, repeats, burst)
            medians = {name: statistics.median(t) for name, t in times.items()}
            rows.append(dict(threads=n_threads, T=T, medians=medians, compile_s=compile_s,
                             load=f"{load_before} -> {_load()}"))
            failure = compiled._compiled_step.failure if compiled._compiled_step is not None else None
            if failure:
                rows[-1]["note"] = f"compiled step fell back to eager: {failure}"
    return rows


def print_rows(rows: List[dict], batch_size: int) -> None:
    print(f"machine: cpu ({os.cpu_count()} CPUs) | torch {torch.__version__} | B={batch_size} | CPU bench default "
          f"model (2 blocks, D=64, H=4, dqk=16) | microseconds per step, median")
    names = list(rows[0]["medians"])
    header = ["threads", "T"] + names + [f"{b} / compiled" for b in BASELINES] + ["hstu / eager", "compile s",
                                                                                  "load avg (before -> after)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in rows:
        m = r["medians"]
        cells = [str(r["threads"]), str(r["T"])] + [f"{m[n]:.0f}" for n in names]
        cells += [f"{m[b] / m['fuxi-linear compiled']:.2f}x" for b in BASELINES]
        cells += [f"{m['hstu'] / m['fuxi-linear eager']:.2f}x", f"{r['compile_s']:.1f}", r["load"]]
        print("| " + " | ".join(cells) + " |")
        if r.get("note"):
            print(f"note: {r['note']}")


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-lens", default="256,2048")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--repeats", type=int, default=200, help="timed steps per model and setting")
    p.add_argument("--burst", type=int, default=5,
                   help="consecutive steps of one model per visit, the first untimed (1: time every step "
                        "right after another model's)")
    p.add_argument("--no-validate-row", action="store_true", help="omit the compiled validate=False row")
    a = p.parse_args(argv)
    seq_lens = [int(x) for x in a.seq_lens.split(",")]
    threads = [int(x) for x in a.threads.split(",")]
    rows = run(seq_lens, a.batch_size, threads, a.warmup, a.repeats, a.burst, not a.no_validate_row)
    print_rows(rows, a.batch_size)


if __name__ == "__main__":
    main()
