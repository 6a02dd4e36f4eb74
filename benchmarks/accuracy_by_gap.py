"""Test metrics of trained checkpoints, split by the gap between a user's last history event and the test target.

On the embedded synthetic log the break before a session decides its first topic (home topic after >= 6 h,
quick-check topic after a shorter break), so only a model that sees the gap to the request time can tell a
comeback from a continuation; this table shows where a temporal channel's gain comes from
(``benchmarks/ACCURACY.md``). Each checkpoint is re-scored on its own run's test split (its saved
``TrainConfig`` rebuilds the data), in float32, full ranking, with the run's history exclusion.

    python benchmarks/accuracy_by_gap.py runs/temporal-on/checkpoint.pt runs/temporal-off/checkpoint.pt
"""
from __future__ import annotations

import argparse
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from fuxi_linear.training.checkpoint import load_checkpoint, model_from_checkpoint
from fuxi_linear.data import leave_one_out
from fuxi_linear.training import evaluate, load_log
from fuxi_linear.training.train_config import TrainConfig

#: (label, lower bound in seconds, upper bound in seconds) of the gap before the target.
GAP_BUCKETS: Tuple[Tuple[str, float, float], ...] = (
    ("in session (< 30 min)", 0.0, 1800.0),
    ("short break (30 min - 6 h)", 1800.0, 6 * 3600.0),
    ("comeback (>= 6 h)", 6 * 3600.0, float("inf")),
)


def gaps_before_targets(dataset) -> np.ndarray:
    """``(len(dataset),)`` int64: the target's time minus the last input event's time, per example."""
    log = dataset.log
    return log.timestamps[dataset.targets] - log.timestamps[dataset.targets - 1]


def metrics_by_gap(path: str, device: str = "cpu") -> List[Dict[str, object]]:
    """One row per gap bucket: ``{"checkpoint", "bucket", "users", "ndcg@10", "hr@10"}`` of the test split."""
    ckpt = load_checkpoint(path)
    cfg = TrainConfig(**dict(ckpt["train_config"], progress=False, device=device))
    data = load_log(cfg)
    if data.timestamp_unit != "s":
        raise ValueError(f"{path}: the gap buckets are in seconds, the data's timestamps are in "
                         f"{data.timestamp_unit}")
    splits = leave_one_out(data, cfg.max_seq_len, mode=cfg.split, train_stride=cfg.train_stride)
    model = model_from_checkpoint(ckpt, torch.device(device))
    gaps = gaps_before_targets(splits.test)
    rows = []
    for label, lo, hi in GAP_BUCKETS:
        index = np.flatnonzero((gaps >= lo) & (gaps < hi))
        if index.size == 0:
            rows.append({"checkpoint": path, "bucket": label, "users": 0, "ndcg@10": float("nan"),
                         "hr@10": float("nan")})
            continue
        subset = torch.utils.data.Subset(splits.test, index.tolist())
        m = evaluate(model, subset, cfg, torch.device(device), label)
        rows.append({"checkpoint": path, "bucket": label, "users": int(index.size), "ndcg@10": m["ndcg@10"],
                     "hr@10": m["hr@10"]})
    return rows


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="DIR/checkpoint.pt of each run")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    print("| checkpoint | gap before the target | users | NDCG@10 | HR@10 |")
    print("|---|---|---|---|---|")
    for path in args.checkpoints:
        for r in metrics_by_gap(path, args.device):
            print(f"| {r['checkpoint']} | {r['bucket']} | {r['users']} | {r['ndcg@10']:.4f} | {r['hr@10']:.4f} |")


if __name__ == "__main__":
    main()
