"""CPU decode speed: FuXi-Linear's eager and compiled ``model.step`` against the KV-cache steps of SASRec,
HSTU and FuXi-alpha, on the ``fuxi-linear bench`` CPU default model (2 blocks, D=64, H=4, dqk=16).

    python benchmarks/cpu_decode_speed.py [--seq-lens 256,2048] [--batch-size 4] [--threads 1,2]
                                          [--repeats 200] [--burst 5] [--warmup 3] [--no-validate-row]

For each thread count and history length T: every model prefills the same B random histories of T events
(``fuxi_linear.bench.make_inputs``), under ``torch.inference_mode()``; then decode steps are timed,
each on a fresh clone of the prefilled state (cloned outside the timed region, so every step is at exactly
T), in rounds over the models, a burst of consecutive steps per model and round whose first step is not
timed (:func:`fuxi_linear.bench.time_interleaved`, as ``fuxi-linear bench`` times decode). All steps validate their inputs, as the bench's do
(``model.step(state, ...)``); the ``fuxi-linear compiled validate=False`` row is the step without its
checks. ``fuxi-linear compiled`` is the same model after ``model.compile_step()``; its first step compiles
(or loads inductor's on-disk cache; "compile s"). Prints the medians in microseconds and each baseline's
median over FuXi-Linear's.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from typing import List, Optional

import torch

from fuxi_linear.bench import BenchSettings, build_bench_models, make_inputs, prefill_call, time_interleaved

BASELINES = ("sasrec", "hstu", "fuxi-alpha")


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


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
                calls = {name: (fn, (lambda clone=clone: (clone(),))) for name, (fn, clone) in calls.items()}
                times, _ = time_interleaved(calls, "cpu", warmup, repeats, catch_oom=False, burst=burst)
            medians = {name: 1e3 * statistics.median(t) for name, t in times.items()}  # ms -> us
            rows.append(dict(threads=n_threads, T=T, medians=medians, compile_s=compile_s,
                             load=f"{load_before} -> {_load()}"))
            failure = compiled.compiled_step.failure if compiled.compiled_step is not None else None
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
