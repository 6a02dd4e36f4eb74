"""The benchmark's report: the machine and settings lines, markdown tables of ms per batch with FuXi-Linear's
speed-up over each baseline, decode memory per user and decode throughput; and the JSON rows."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from ..utils import atomic_write_json
from .machine import machine_line
from .settings import STAGES

if TYPE_CHECKING:
    from .run import BenchResult


def _fmt_ms(ms: Optional[float]) -> str:
    if ms is None:
        return "—"
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
    """``{"stage", "seq_len", "baseline", "speedup"}``: baseline ms / FuXi-Linear ms for each measured pair."""
    out = []
    s = result.settings
    if "fuxi-linear" not in s.models:
        return out
    for stage in STAGES:
        for T in s.seq_lens:
            ours = result.ms("fuxi-linear", stage, T)
            for b in (m for m in s.models if m != "fuxi-linear"):
                theirs = result.ms(b, stage, T)
                if ours and theirs:
                    out.append(dict(stage=stage, seq_len=T, baseline=b, speedup=theirs / ours))
    return out


def format_report(result: BenchResult) -> str:
    """Machine line, settings, then markdown tables: ms per batch with FuXi-Linear's speed-up over each
    baseline, and decode-state bytes per user."""
    s = result.settings
    lines = [machine_line(result.machine),
             f"settings: batch {s.batch_size} users | model {s.num_blocks} blocks, D={s.embedding_dim}, "
             f"H={s.num_heads}, dqk={s.qk_dim} | median of {s.repeats} prefill / {s.decode_repeats} decode calls "
             f"after {s.warmup} warm-up" + (f" ({s.decode_warmup} for decode)" if s.decode_warmup != s.warmup else "")
             + ", models timed round-robin"
             + (f" (decode in bursts of {s.decode_burst} steps per model, the first untimed)" if s.decode_burst > 1
                else "") + " | "
             + ("CUDA events" if s.torch_device.type == "cuda" else "time.perf_counter")
             + " | inference mode, eval mode | decode = one step from a state prefilled at T (cloned per call)"]
    lines += [f"note: {n}" for n in result.notes]
    baselines = [m for m in s.models if m != "fuxi-linear"]
    has_ours = "fuxi-linear" in s.models
    header = ["stage", "T"] + [f"{m} ms" for m in s.models]
    if has_ours:
        header += [f"× vs {b}" for b in baselines]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for stage in STAGES:
        for T in s.seq_lens:
            cells = [stage, str(T)]
            for m in s.models:
                r = result.row(m, stage, T)
                cells.append(_fmt_ms(r["ms"]) if r and r["ms"] is not None else ("OOM" if r else "—"))
            if has_ours:
                ours = result.ms("fuxi-linear", stage, T)
                for b in baselines:
                    theirs = result.ms(b, stage, T)
                    cells.append(f"{theirs / ours:.1f}×" if ours and theirs else "—")
            lines.append("| " + " | ".join(cells) + " |")
    header = ["T"] + list(s.models)
    lines += ["", "decode memory per user at length T (FuXi-Linear: DecodeState, constant; baselines: KV cache "
                  "filled to T, not its preallocated capacity):", "",
              "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for T in s.seq_lens:
        cells = [str(T)]
        for m in s.models:
            r = result.row(m, "prefill", T)
            cells.append(format_bytes(r.get("state_bytes_per_user")) if r else "—")
        lines.append("| " + " | ".join(cells) + " |")
    lines += _throughput_lines(result)
    return "\n".join(lines)


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
        cells = [r["model"], str(r["seq_len"]), str(r["batch_size"]), _fmt_ms(r["ms"]), _fmt_rate(r.get("users_per_s"))]
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
