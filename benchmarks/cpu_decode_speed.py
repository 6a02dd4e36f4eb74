"""CPU decode speed in both regimes: every model's ``model.step`` eager and compiled (``model.compile_step()``:
FuXi-Linear's step and the KV-cache baselines' steps, one inductor graph each), on the ``fuxi-linear bench`` CPU
default model, in one run.

    python benchmarks/cpu_decode_speed.py [--seq-lens 256,2048] [--batch-size 4] [--threads 1,2]
                                          [--repeats 200] [--burst 5] [--warmup 3]

For each thread count and history length T: every model prefills the same B random histories of T events
(``fuxi_linear.bench.make_inputs``), under ``torch.inference_mode()``; then decode steps are timed, each on a
fresh clone of the prefilled state (cloned outside the timed region, so every step is at exactly T), in rounds
over the 8 variants (4 models x eager / compiled), a burst of consecutive steps per variant and round whose
first step is not timed (:func:`fuxi_linear.bench.time_interleaved`, as ``fuxi-linear bench`` times decode).
Every step validates its inputs, as the bench's do. A compiled variant's first step compiles (or loads
inductor's on-disk cache), untimed ("compile s"); a compiled step that falls back to eager code is reported,
and its column left empty.

Prints, per row, the median and min of each variant in microseconds, the speed-up of compiling each model
(eager / compiled) and FuXi-Linear's speed-up over each baseline within each regime, with the load average
before and after.
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from typing import Dict, List, Optional

import torch

from fuxi_linear.bench import BenchSettings, build_bench_models, make_inputs, prefill_call, time_interleaved
from fuxi_linear.bench.compile import step_compile_failure

MODELS = ("fuxi-linear", "sasrec", "hstu", "fuxi-alpha")
REGIMES = ("eager", "compiled")


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        return "n/a"


def run(seq_lens: List[int], batch_size: int, threads: List[int], warmup: int, repeats: int,
        burst: int = 5) -> List[dict]:
    rows = []
    settings = BenchSettings(device="cpu", seq_lens=seq_lens, batch_size=batch_size, models=list(MODELS),
                             progress=False, compile="off").resolve()
    eager = build_bench_models(settings)
    variants = {(name, "eager"): m for name, m in eager.items()}
    variants.update({(name, "compiled"): copy.deepcopy(m).compile_step() for name, m in eager.items()})
    for n_threads in threads:
        torch.set_num_threads(n_threads)
        for T in seq_lens:
            inputs = make_inputs(batch_size, T, settings.num_items)
            step = inputs.step
            with torch.inference_mode():
                states = {key: prefill_call(m, inputs, capacity=T + 2)[1] for key, m in variants.items()}
                compile_s: Dict[str, float] = {}
                for (name, regime), m in variants.items():
                    if regime == "compiled":  # the first step compiles (or loads inductor's cache): untimed
                        start = time.perf_counter()
                        m.step(states[(name, regime)].clone(), *step)
                        compile_s[name] = time.perf_counter() - start
                load_before = _load()
                calls = {key: ((lambda s, m=m: m.step(s, *step)), (lambda st=states[key]: (st.clone(),)))
                         for key, m in variants.items()}
                times, _ = time_interleaved(calls, "cpu", warmup, repeats, catch_oom=False, burst=burst)
            failures = {name: step_compile_failure(variants[(name, "compiled")]) for name in MODELS}
            rows.append(dict(threads=n_threads, T=T, load=f"{load_before} -> {_load()}", compile_s=compile_s,
                             medians={key: 1e3 * statistics.median(t) for key, t in times.items()
                                      if not (key[1] == "compiled" and failures[key[0]])},
                             mins={key: 1e3 * min(t) for key, t in times.items()},
                             failures={k: v for k, v in failures.items() if v}))
    return rows


def print_rows(rows: List[dict], batch_size: int) -> None:
    print(f"machine: cpu ({os.cpu_count()} CPUs) | torch {torch.__version__} | B={batch_size} | CPU bench default "
          f"model (2 blocks, D=64, H=4, dqk=16) | microseconds per step: median (min)")
    header = ["threads", "T"] + [f"{m} {r}" for r in REGIMES for m in MODELS] + \
        [f"{m} eager / compiled" for m in MODELS] + \
        [f"{b} / fuxi-linear, {r}" for r in REGIMES for b in MODELS[1:]] + ["compile s", "load avg (before -> after)"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))

    def ratio(a: Optional[float], b: Optional[float]) -> str:
        return f"{a / b:.2f}x" if a and b else "—"

    for r in rows:
        med, low = r["medians"], r["mins"]
        cells = [str(r["threads"]), str(r["T"])]
        cells += [f"{med[(m, g)]:.0f} ({low[(m, g)]:.0f})" if (m, g) in med else "failed"
                  for g in REGIMES for m in MODELS]
        cells += [ratio(med.get((m, "eager")), med.get((m, "compiled"))) for m in MODELS]
        cells += [ratio(med.get((b, g)), med.get(("fuxi-linear", g))) for g in REGIMES for b in MODELS[1:]]
        cells += [" ".join(f"{m} {s:.1f}" for m, s in r["compile_s"].items()), r["load"]]
        print("| " + " | ".join(cells) + " |")
        for name, failure in r["failures"].items():
            print(f"note: {name}'s compiled step fell back to eager steps ({failure}); its compiled column is empty")


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq-lens", default="256,2048")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--warmup", type=int, default=3, help="untimed rounds first")
    p.add_argument("--repeats", type=int, default=200, help="timed steps per variant and setting")
    p.add_argument("--burst", type=int, default=5,
                   help="consecutive steps of one variant per visit, the first untimed (1: time every step "
                        "right after another variant's)")
    a = p.parse_args(argv)
    seq_lens = [int(x) for x in a.seq_lens.split(",")]
    threads = [int(x) for x in a.threads.split(",")]
    rows = run(seq_lens, a.batch_size, threads, a.warmup, a.repeats, a.burst)
    print_rows(rows, a.batch_size)


if __name__ == "__main__":
    main()
