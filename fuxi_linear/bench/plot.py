"""The Figure-2-style plot of a benchmark (ms vs history length, log-log; needs the optional matplotlib)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .settings import STAGES, BenchError

if TYPE_CHECKING:
    from .run import BenchResult


def require_matplotlib():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise BenchError("--plot needs matplotlib, which is not installed: pip install 'fuxi-linear[plot]' "
                         "(or pip install matplotlib)") from None
    return plt


def plot_results(result: BenchResult, path: str | os.PathLike) -> Path:
    """Figure-2-style PNG: ms per batch vs history length, log-log, prefill and decode panels."""
    plt = require_matplotlib()
    from matplotlib.ticker import NullLocator

    s = result.settings
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    styles = {"fuxi-linear": dict(color="tab:red", marker="o", linewidth=2.2),
              "hstu": dict(color="tab:blue", marker="s"), "fuxi-alpha": dict(color="tab:green", marker="^"),
              "sasrec": dict(color="tab:purple", marker="D")}
    for ax, stage in zip(axes, STAGES):
        for m in s.models:
            pts = [(T, result.ms(m, stage, T)) for T in s.seq_lens]
            pts = [(T, ms) for T, ms in pts if ms is not None]
            if pts:
                ax.plot(*zip(*pts), label=m, **styles.get(m, {}))
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(list(s.seq_lens), [str(T) for T in s.seq_lens])
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("history length T (events)")
        ax.set_ylabel("ms per batch" if stage == "prefill" else "ms per step (one event per user)")
        ax.set_title(f"{stage} (batch {s.batch_size})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    info = result.machine
    fig.suptitle(f"{info['device']}: {info['device_name']} | {s.dtype} | {s.num_blocks} blocks D={s.embedding_dim} "
                 f"H={s.num_heads} dqk={s.qk_dim}", fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
