"""The benchmark's report: the machine, regime and settings lines, markdown tables of ms per batch with
FuXi-Linear's speed-up over each baseline (noisy rows marked), the spread of every row, decode memory per user
and decode throughput, the machine's load before and after, and a closing warning naming the noisy rows; and
the JSON rows."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Dict, List, Optional

from ..utils import atomic_write_json
from .machine import load_text, machine_line
from .result import BenchResult
from .settings import PAPER_FFN_MULTIPLY, STAGES
from .timing import MIN_REPEATS_FOR_SPREAD, NOISY_IQR_OVER_MEDIAN, NOISY_MEDIAN_OVER_MIN

#: Appended to a noisy row's time (and to a speed-up read from one) in the tables.
NOISY_MARK = "*"
#: Appended to a time whose spread was not judged (fewer than MIN_REPEATS_FOR_SPREAD timed calls).
UNJUDGED_MARK = "?"


def _fmt_ms(ms: Optional[float]) -> str:
    """Three significant digits (rounded first, so that 0.9999999 reads 1.00)."""
    if ms is None:
        return "—"
    ms = float(f"{ms:.3g}")
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def format_bytes(n: Optional[int]) -> str:
    if n is None:
        return "—"
    for unit, size in (("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def speedups(result: BenchResult) -> List[Dict[str, Any]]:
    """``{"stage", "seq_len", "baseline", "speedup", "noisy"}``: baseline ms / FuXi-Linear ms for each measured
    pair (``noisy``: either row is)."""
    out = []
    s = result.settings
    if "fuxi-linear" not in s.models:
        return out
    for stage in STAGES:
        for T in s.seq_lens:
            ours = result.row("fuxi-linear", stage, T)
            for b in (m for m in s.models if m != "fuxi-linear"):
                theirs = result.row(b, stage, T)
                if ours and theirs and ours.get("ms") and theirs.get("ms"):
                    out.append(dict(stage=stage, seq_len=T, baseline=b, speedup=theirs["ms"] / ours["ms"],
                                    noisy=bool(ours.get("noisy") or theirs.get("noisy"))))
    return out


def _mark(row: Optional[Dict[str, Any]]) -> str:
    if not row or row.get("ms") is None:
        return ""
    return NOISY_MARK if row.get("noisy") else (UNJUDGED_MARK if row.get("noisy") is None else "")


def _cell(row: Optional[Dict[str, Any]]) -> str:
    """A row's median for a table: marked when noisy, "OOM" / "failed" / "—" when not timed."""
    if row is None:
        return "—"
    if row.get("ms") is not None:
        return _fmt_ms(row["ms"]) + _mark(row)
    status = str(row.get("status", ""))
    return "OOM" if status == "out of memory" else ("failed" if status.startswith("compile failed") else "—")


def row_label(row: Dict[str, Any]) -> str:
    """``"hstu prefill T=512"`` (plus the batch of a throughput row)."""
    label = f"{row['model']} {row['stage']} T={row['seq_len']}"
    return label + (f" N={row['batch_size']}" if row["stage"] == "decode-throughput" else "")


def format_report(result: BenchResult) -> str:
    """Machine line, regime, settings and notes, then markdown tables: ms per batch (median) with FuXi-Linear's
    speed-up over each baseline, the spread of every row (min and interquartile range), decode-state bytes per
    user and decode throughput; then the machine's load before and after, and a warning naming the noisy
    rows (when there are any)."""
    s = result.settings
    lines = [machine_line(result.machine), f"regime: {s.regime}",
             f"settings: batch {s.batch_size} users | model {s.num_blocks} blocks, D={s.embedding_dim}, "
             f"H={s.num_heads}, dqk={s.qk_dim}, FFN F={PAPER_FFN_MULTIPLY}D | median of {s.repeats} prefill / {s.decode_repeats} decode calls "
             f"after {s.warmup} warm-up" + (f" ({s.decode_warmup} for decode)" if s.decode_warmup != s.warmup else "")
             + ", models timed round-robin"
             + (f" (decode in bursts of {s.decode_burst} steps per model, the first untimed)" if s.decode_burst > 1
                else "") + " | "
             + ("CUDA events" if s.torch_device.type == "cuda" else "time.perf_counter")
             + " | inference mode, eval mode | decode = one step from a state prefilled at T (cloned per call)"]
    lines += [f"note: {n}" for n in result.notes + _compile_notes(result)]
    baselines = [m for m in s.models if m != "fuxi-linear"]
    has_ours = "fuxi-linear" in s.models
    header = ["stage", "T"] + [f"{m} ms" for m in s.models]
    if has_ours:
        header += [f"× vs {b}" for b in baselines]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for stage in STAGES:
        for T in s.seq_lens:
            cells = [stage, str(T)] + [_cell(result.row(m, stage, T)) for m in s.models]
            if has_ours:
                ours = result.row("fuxi-linear", stage, T)
                for b in baselines:
                    theirs = result.row(b, stage, T)
                    if ours and theirs and ours.get("ms") and theirs.get("ms"):
                        marks = sorted(set(_mark(ours) + _mark(theirs)))
                        cells.append(f"{theirs['ms'] / ours['ms']:.1f}×" + "".join(marks))
                    else:
                        cells.append("—")
            lines.append("| " + " | ".join(cells) + " |")
    lines += [f"{NOISY_MARK} noisy: IQR/median > {NOISY_IQR_OVER_MEDIAN} or median > {NOISY_MEDIAN_OVER_MIN:g}× min "
              f"(not to be read as a speed)" + (f"; {UNJUDGED_MARK} fewer than {MIN_REPEATS_FOR_SPREAD} timed calls: "
                                                f"spread not judged" if result.unjudged_rows else "")]
    lines += _spread_lines(result)
    header = ["T"] + list(s.models)
    lines += ["", "decode memory per user at length T (FuXi-Linear: DecodeState, constant; baselines: KV cache "
                  "filled to T, not its preallocated capacity):", "",
              "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for T in s.seq_lens:
        cells = [str(T)]
        for m in s.models:
            r = result.row(m, "prefill", T) or result.row(m, "decode", T)
            cells.append(format_bytes(r.get("state_bytes_per_user")) if r else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines += _throughput_lines(result)
    lines += ["", f"load before the run: {load_text(result.load_before)}; after: {load_text(result.load_after)}"]
    warning = noise_warning(result)
    if warning:
        lines += ["", warning]
    return "\n".join(lines)


def _spread_lines(result: BenchResult) -> List[str]:
    """The spread of every timed row: ``min / IQR`` in ms per model, stage and length."""
    s = result.settings
    header = ["stage", "T"] + [f"{m} min / IQR" for m in s.models]
    lines = ["", f"spread of the repeats (ms: fastest call / interquartile range):", "",
             "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for stage in STAGES:
        for T in s.seq_lens:
            cells = [stage, str(T)]
            for m in s.models:
                r = result.row(m, stage, T)
                cells.append(f"{_fmt_ms(r['ms_min'])} / {_fmt_ms(r['ms_iqr'])}{_mark(r)}"
                             if r and r.get("ms") is not None else "—")
            lines.append("| " + " | ".join(cells) + " |")
    return lines


def _compile_notes(result: BenchResult) -> List[str]:
    """What the compiled regime compiled before the timing (graphs and seconds per model and stage), and the
    models whose compile failed."""
    if not result.compiles:
        return []
    per: Dict[tuple, List[float]] = {}
    for c in result.compiles:
        total = per.setdefault((c["model"], c["stage"]), [0, 0.0])
        total[0] += c["graphs"]
        total[1] += c["seconds"]
    parts = [f"{m} {st} {g} graph{'s' if g != 1 else ''} in {sec:.0f} s" for (m, st), (g, sec) in per.items()]
    notes = ["compiled before the timing (untimed): " + ", ".join(parts)]
    for c in result.compiles:
        if c["failure"]:
            notes.append(f"{c['model']} {c['stage']}: compiling failed at T={c['seq_len']} ({c['failure']}): its rows "
                         f"from there on are not timed")
    return notes


def noise_warning(result: BenchResult) -> Optional[str]:
    """A warning naming every noisy row and the machine's load, or None when no row is noisy."""
    noisy = result.noisy_rows
    if not noisy:
        return None
    timed = [r for r in result.rows if r.get("ms") is not None]
    names = ", ".join(f"{row_label(r)} ({r.get('noise')})" for r in noisy)
    return (f"WARNING: {len(noisy)} of {len(timed)} timed rows are noisy, their repeats too spread out to be read as "
            f"speeds: {names}. The machine's load: {load_text(result.load_before)} before the run, "
            f"{load_text(result.load_after)} after. Re-run on an idle machine (or with more --repeats / "
            f"--decode-repeats) before reading those rows.")


def _fmt_rate(x: Optional[float], unit: str = "") -> str:
    if x is None:
        return "—"
    for suffix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if x >= size:
            return f"{x / size:.3g}{suffix}{unit}"
    return f"{x:.3g}{unit}"


def _throughput_lines(result: BenchResult) -> List[str]:
    """Decode throughput: users/s of every decode row (GB/s and % of peak on CUDA), and the N sweep."""
    s = result.settings
    cuda = s.torch_device.type == "cuda"
    decode = [r for r in result.rows if r["stage"] == "decode" and r.get("users_per_s")]
    sweep = [r for r in result.rows if r["stage"] == "decode-throughput"]
    if not decode and not sweep:
        return []
    header = ["model", "T", "users/step", "ms", "users/s"] + (["GB/s", "% of peak"] if cuda else [])
    lines = ["", "decode throughput (one event per user per step" + (
        "; GB/s = the minimum bytes a step moves / time" if cuda else "") + "):", "",
        "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in decode + sweep:
        cells = [r["model"], str(r["seq_len"]), str(r["batch_size"]), _cell(r),
                 _fmt_rate(r.get("users_per_s"))]
        if cuda:
            pct = r.get("pct_of_peak")
            cells += [f"{r['gbs']:.1f}" if r.get("gbs") is not None else "—", f"{pct:.0f}%" if pct is not None else "—"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_json(result: BenchResult, path: str | os.PathLike) -> Path:
    """The rows as a JSON list (one object per model, stage and length)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_json(path, result.rows, indent=1)
