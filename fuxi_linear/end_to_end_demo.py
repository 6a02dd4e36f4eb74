"""``fuxi-linear demo``: the README's main job end to end on the embedded synthetic data, in a few minutes.

1. train FuXi-Linear briefly on a small synthetic time-aware log (:func:`fuxi_linear.training.train`);
2. evaluate it on the held-out test events (full ranking) next to the most-popular baseline;
3. run a serving benchmark (prefill and decode of FuXi-Linear vs HSTU, FuXi-α and SASRec) at history lengths
   from 64 to 4096 events (:mod:`fuxi_linear.bench`), long enough to show where the linear model
   overtakes the quadratic ones, every model eager by default (``compile="on"``: every model compiled), and
   print one sentence that reads the table's steady rows (:func:`read_table`: noisy rows are left out and
   named), then a warning when rows were noisy.

Writes ``DIR/train/`` (checkpoint and metrics of the run), ``DIR/bench.json``, ``DIR/bench.png`` (when
matplotlib is installed) and ``DIR/demo.json`` (the metrics of both recommenders, the benchmark rows and the
sentence).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch

from .utils import atomic_write_json
from .bench.plot import plot_results
from .bench.report import format_bytes, format_report, row_label, write_json
from .bench.result import BenchResult
from .bench.run import run_benchmark
from .bench.settings import BENCH_MODELS, BenchError, BenchSettings

METRIC_KEYS = ("ndcg@10", "ndcg@50", "hr@10", "hr@50", "mrr")


@dataclass
class DemoSettings:
    """Sizes of the demo (defaults: about two minutes on a quiet 2-core CPU)."""

    output: str = "runs/demo"
    device: str = "auto"
    seed: int = 42
    # training
    epochs: int = 4
    synthetic_users: int = 400
    synthetic_items: int = 500
    synthetic_mean_events: int = 120
    max_seq_len: int = 100
    embedding_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 4
    batch_size: int = 64
    num_negatives: int = 128
    lr: float = 3e-3
    dropout: float = 0.2
    # benchmark
    bench: bool = True
    bench_seq_lens: Sequence[int] = (64, 128, 256, 512, 1024, 2048, 4096)
    bench_batch_size: int = 4
    bench_models: Sequence[str] = BENCH_MODELS
    bench_repeats: int = 9
    bench_decode_repeats: int = 45
    #: from this length on, every model is timed with ``bench_long_repeats`` prefill calls and no prefill warm-up: a
    #: quadratic model's prefill takes seconds there (the whole demo stays under two minutes on 2 cores). Five
    #: calls: with three (the fewest whose spread can be judged) one slow call already flagged rows on an idle
    #: machine (a noisy row is flagged and left out of the reading).
    bench_long_from: int = 1024
    bench_long_repeats: int = 5
    bench_long_decode_repeats: int = 24
    #: the benchmark's regime (``--compile``): "off" = every model eager. The compiled regime compiles every
    #: model's prefill at each of the 7 lengths first (about ten minutes on 2 cores the first time).
    compile: str = "off"
    #: CPU torch threads for the whole demo (None = torch's setting). 1 avoids OpenMP stalls when other
    #: processes share the cores, which make small ops slower with 2+ threads than with 1.
    threads: Optional[int] = None
    progress: bool = True
    extra_train: Dict[str, Any] = field(default_factory=dict)  # more TrainConfig fields (tests)
    extra_bench: Dict[str, Any] = field(default_factory=dict)  # more BenchSettings fields (model size, ...)


def _train_config(s: DemoSettings):
    from .training import TrainConfig

    values = dict(dataset="synthetic", model="fuxi-linear", epochs=s.epochs, synthetic_users=s.synthetic_users,
                  synthetic_items=s.synthetic_items, synthetic_mean_events=s.synthetic_mean_events,
                  max_seq_len=s.max_seq_len, embedding_dim=s.embedding_dim, num_blocks=s.num_blocks,
                  num_heads=s.num_heads, batch_size=s.batch_size, num_negatives=s.num_negatives, lr=s.lr,
                  dropout=s.dropout, seed=s.seed, device=s.device, output=str(Path(s.output) / "train"),
                  progress=s.progress)
    values.update(s.extra_train)
    return TrainConfig(**values)


def _metrics_table(ours: Dict[str, float], popular: Dict[str, float]) -> str:
    lines = ["| metric | FuXi-Linear | most popular |", "|---|---|---|"]
    for k in METRIC_KEYS:
        if k in ours and k in popular:
            lines.append(f"| {k} | {ours[k]:.4f} | {popular[k]:.4f} |")
    return "\n".join(lines)


def run_demo(s: DemoSettings, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train, evaluate, benchmark; returns (and writes to ``DIR/demo.json``) the summary."""
    from .data import leave_one_out
    from .evaluation import most_popular_metrics
    from .training import load_log, train

    started = time.time()
    threads_before = torch.get_num_threads()
    if s.threads is not None:
        torch.set_num_threads(s.threads)
    try:
        cfg = _train_config(s)  # validates the settings before anything runs
        if s.bench:
            bench_settings = _bench_settings(s)  # validated before training starts
        out = Path(s.output)
        log(f"== 1/3 training FuXi-Linear on synthetic data: {s.synthetic_users} users, {s.synthetic_items} items, "
            f"~{s.synthetic_mean_events} events per user; L={s.max_seq_len}, {s.num_blocks} blocks, "
            f"D={s.embedding_dim}, {s.epochs} epochs ==")
        metrics = train(cfg, log=log)
        log("== 2/3 evaluation: held-out last event of each user, full ranking (history items excluded) ==")
        splits = leave_one_out(load_log(cfg), cfg.max_seq_len, mode=cfg.split, train_stride=cfg.train_stride)
        popular = most_popular_metrics(splits, exclude_history=cfg.exclude_history, mrr_cap=cfg.mrr_cap)
        ours = metrics["test"]
        log(_metrics_table(ours, popular))
        lift = ours["ndcg@10"] / popular["ndcg@10"] if popular["ndcg@10"] > 0 else float("inf")
        log(f"FuXi-Linear NDCG@10 is {lift:.1f}x the most-popular baseline's ({int(ours['num_examples'])} test users)")
        summary: Dict[str, Any] = {"fuxi_linear": ours, "most_popular": popular, "train_seconds": metrics["seconds"],
                                   "train_config": cfg.to_dict(), "num_parameters": metrics["num_parameters"]}
        if s.bench:
            log("== 3/3 serving speed: prefill a history of T events / decode one new event, batch "
                f"{s.bench_batch_size} ==")
            result = _merge([run_benchmark(b, log=log) for b in bench_settings])
            log(format_report(result))
            sentence = read_table(result.rows, result.settings.models, result.settings.seq_lens)
            log(sentence)
            write_json(result, out / "bench.json")
            summary["bench"] = {"machine": result.machine, "regime": result.settings.regime, "rows": result.rows,
                                "reading": sentence, "noisy_rows": [row_label(r) for r in result.noisy_rows],
                                "load_before": result.load_before, "load_after": result.load_after}
            try:
                log(f"wrote {plot_results(result, out / 'bench.png')}")
            except BenchError as err:  # matplotlib is an optional extra
                log(f"no plot: {err}")
        summary["seconds"] = round(time.time() - started, 1)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "demo.json", summary, indent=1)
        log(f"done in {summary['seconds']:.0f} s; wrote {out / 'demo.json'}")
        if s.bench and summary["bench"]["noisy_rows"]:
            log(f"warning: {len(summary['bench']['noisy_rows'])} benchmark rows were noisy (named in the warning under "
                f"the table) and were left out of the reading; re-run on an idle machine to read them")
        return summary
    finally:
        torch.set_num_threads(threads_before)


def _bench_settings(s: DemoSettings) -> List[BenchSettings]:
    """The benchmark as resolved settings: the short lengths with the full repeats, the long ones (from
    ``bench_long_from``) with ``bench_long_repeats`` and no prefill warm-up (decode always warms up once)."""
    lens = sorted(set(int(T) for T in s.bench_seq_lens))
    base = dict(device=s.device, batch_size=s.bench_batch_size, models=list(s.bench_models), seed=s.seed,
                progress=s.progress, compile=s.compile)
    base.update(s.extra_bench)
    groups = []
    short = [T for T in lens if T < s.bench_long_from]
    long = [T for T in lens if T >= s.bench_long_from]
    if short:
        groups.append(BenchSettings(**{**dict(repeats=s.bench_repeats, decode_repeats=s.bench_decode_repeats),
                                       **base, "seq_lens": short}).resolve())
    if long:
        long_base = {**base, "warmup": 0}
        note = (f"T >= {s.bench_long_from}: median of {s.bench_long_repeats} prefill / {s.bench_long_decode_repeats} "
                f"decode calls, no prefill warm-up (a quadratic model's prefill takes seconds there)")
        groups.append(BenchSettings(**{**long_base, "seq_lens": long, "repeats": s.bench_long_repeats,
                                       "decode_repeats": s.bench_long_decode_repeats,
                                       "notes": [note] if short else []}).resolve())
    return groups


def _merge(results: Sequence[BenchResult]) -> BenchResult:
    """One result from runs over disjoint lengths: the first run's settings (with every length) and machine,
    the load before the first run and after the last."""
    first = results[0]
    if len(results) == 1:
        return first
    lens = sorted(T for r in results for T in r.settings.seq_lens)
    settings = replace(first.settings, seq_lens=lens)
    notes = [n for r in results for n in r.notes]
    notes = [n for i, n in enumerate(notes) if n not in notes[:i]]
    order = {m: i for i, m in enumerate(first.settings.models)}
    rows = sorted((row for r in results for row in r.rows),
                  key=lambda row: (order[row["model"]], row["stage"], row["seq_len"]))
    return BenchResult(settings=settings, machine=first.machine, rows=rows, notes=notes,
                       load_before=first.load_before, load_after=results[-1].load_after,
                       compiles=[c for r in results for c in r.compiles])


DISPLAY_NAMES = {"fuxi-linear": "FuXi-Linear", "hstu": "HSTU", "fuxi-alpha": "FuXi-α", "sasrec": "SASRec"}


def read_table(rows: Sequence[Dict[str, Any]], models: Sequence[str], seq_lens: Sequence[int],
               stage: str = "prefill") -> str:
    """One sentence that reads a benchmark table: the regime of its figures, then for each baseline the length
    from which FuXi-Linear's ``stage`` is faster at every measured length (or that it is faster everywhere, or
    still behind at the longest length), its speed-up at the longest length, and its decode state against the
    KV caches there.

    Only steady rows are read: a row whose repeats were too spread out (``noisy`` True) or not judged
    (``noisy`` None: too few repeats) is left out, and the sentence says how many were and which.

    ``rows`` are :func:`fuxi_linear.bench.run_benchmark` rows (``model``, ``stage``, ``seq_len``, ``ms``
    (None when not measured), ``noisy``, ``compiled``, ``state_bytes_per_user``).
    """
    timed = [r for r in rows if r["stage"] == stage and r.get("ms") is not None and r["seq_len"] in seq_lens]
    dropped = [r for r in timed if r.get("noisy") is not False]
    ms = {(r["model"], r["stage"], r["seq_len"]): r["ms"] for r in timed if r.get("noisy") is False}
    nbytes = {(r["model"], r["seq_len"]): r.get("state_bytes_per_user") for r in rows if r["stage"] == "prefill"}
    regimes = {bool(r.get("compiled")) for r in timed}
    regime = ("every model eager" if regimes == {False} else "every model compiled" if regimes == {True} else
              "mixed regimes")
    lens = sorted(seq_lens)
    phrases = []
    for b in (m for m in models if m != "fuxi-linear"):
        pairs = [(T, ms.get(("fuxi-linear", stage, T)), ms.get((b, stage, T))) for T in lens]
        pairs = [(T, ours, theirs) for T, ours, theirs in pairs if ours and theirs]
        name = DISPLAY_NAMES.get(b, b)
        if not pairs:
            continue
        T_last, ours, theirs = pairs[-1]
        partial = f"; {len(pairs)} of {len(lens)} lengths read" if len(pairs) < len(lens) else ""
        if ours >= theirs:
            phrases.append(f"is still behind {name} at T={T_last} ({theirs / ours:.2f}×{partial})")
            continue
        start = len(pairs) - 1
        while start > 0 and pairs[start - 1][1] < pairs[start - 1][2]:
            start -= 1
        where = ("at every length" + (" read" if partial else "")) if start == 0 else f"from T={pairs[start][0]}"
        phrases.append(f"beats {name} {where} ({theirs / ours:.1f}× at T={T_last}{partial})")
    intro = f"Reading the table ({regime}"
    if dropped:
        intro += (f"; {len(dropped)} {stage} row{'s' if len(dropped) != 1 else ''} left out as too noisy to read: "
                  + ", ".join(f"{r['model']} T={r['seq_len']}" for r in dropped))
    intro += ")"
    if not phrases:
        return intro + ": no baseline was measured next to FuXi-Linear in steady rows."
    if len(phrases) > 1:
        phrases[-1] = "and " + phrases[-1]
    sentence = f"{intro}: FuXi-Linear's {stage} " + (", " if len(phrases) > 2 else " ").join(phrases)
    T_max = lens[-1]
    ours_state = nbytes.get(("fuxi-linear", T_max))
    caches = [nbytes.get((b, T_max)) for b in models if b != "fuxi-linear"]
    caches = [c for c in caches if c]
    if ours_state and caches:
        lo, hi = min(caches), max(caches)
        same = format_bytes(lo) == format_bytes(hi)
        size = format_bytes(hi) if same else f"{format_bytes(lo)}-{format_bytes(hi)}"
        more = ("" if same else "at least ") + f"{lo / ours_state:.0f}×"
        sentence += (f"; its decode state is {format_bytes(ours_state)} per user at every length, while a KV cache "
                     f"holds {size} per user at T={T_max} ({more} as much)")
    return sentence + "."


__all__ = ["DemoSettings", "run_demo", "read_table"]
