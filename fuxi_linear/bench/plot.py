"""The Figure-2-style plot of a benchmark (ms vs history length, log-log; needs the optional matplotlib)."""
from __future__ import annotations

import math
import os
from pathlib import Path

from .result import BenchResult
from .settings import STAGES, BenchError


def require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib, which is not installed: pip install 'fuxi-linear[plot]' "
                         "(or pip install matplotlib)") from None
    return plt


def _minor_label(value: float, _position) -> str:
    mantissa = value / 10 ** math.floor(math.log10(value)) if value > 0 else 0
    return f"{value:g}" if round(mantissa, 6) in (2.0, 5.0) else ""


def plot_results(result: BenchResult, path: str | os.PathLike) -> Path:
    """Figure-2-style PNG: ms per batch vs history length, log-log, prefill and decode panels. Each point is a
    row's median with its interquartile range as an error bar; a noisy row's point is drawn hollow (its
    spread too large to read it as a speed)."""
    plt = require_matplotlib()
    from matplotlib.ticker import FuncFormatter, NullLocator

    s = result.settings
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.4))
    styles = {"fuxi-linear": dict(color="tab:red", marker="o", linewidth=2.2),
              "hstu": dict(color="tab:blue", marker="s"), "fuxi-alpha": dict(color="tab:green", marker="^"),
              "sasrec": dict(color="tab:purple", marker="D")}
    any_noisy = False
    for ax, stage in zip(axes, STAGES):
        for m in s.models:
            rows = [result.row(m, stage, T) for T in s.seq_lens]
            rows = [r for r in rows if r and r.get("ms") is not None]
            if not rows:
                continue
            style = styles.get(m, {})
            x, y = [r["seq_len"] for r in rows], [r["ms"] for r in rows]
            low = [r["ms"] - r.get("ms_q25", r["ms"]) for r in rows]
            high = [r.get("ms_q75", r["ms"]) - r["ms"] for r in rows]
            ax.errorbar(x, y, yerr=[low, high], label=m, capsize=3, **style)
            noisy = [r for r in rows if r.get("noisy")]
            if noisy:  # hollow markers over the filled ones
                any_noisy = True
                ax.plot([r["seq_len"] for r in noisy], [r["ms"] for r in noisy], linestyle="none",
                        marker=style.get("marker", "o"), markersize=9, markerfacecolor="white",
                        markeredgecolor=style.get("color", "black"), markeredgewidth=1.5)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(_minor_label))  # 2 and 5 of each decade, plain numbers
        ax.set_xticks(list(s.seq_lens), [str(T) for T in s.seq_lens])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("history length T (events)")
        ax.set_ylabel("ms per batch" if stage == "prefill" else "ms per step (one event per user)")
        ax.set_title(f"{stage} (batch {s.batch_size})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    info = result.machine
    regime = "every model compiled" if s.compiled else "every model eager"
    fig.suptitle(f"{info['device']}: {info['device_name']} | {s.dtype} | {s.num_blocks} blocks D={s.embedding_dim} "
                 f"H={s.num_heads} dqk={s.qk_dim} | {regime} | median, bars: interquartile range"
                 + (" | hollow: noisy row" if any_noisy else ""), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
