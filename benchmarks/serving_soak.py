"""Serving soak: a ``fuxi_linear.serving.Decoder`` run for many steps with admit / evict churn on the CPU,
checking that nothing accumulates -- resident memory and step time stay flat after warm-up -- and that the
users served stay exact (sampled users equal a fresh prefill of their whole history).

    python benchmarks/serving_soak.py                       # 100,000 steps (the RESULTS.md run)
    python benchmarks/serving_soak.py --steps 3000 --json out.json   # the short run CI makes

The loop: a pool of ``--max-users`` rows kept about three quarters full; each iteration steps a random batch
of 1-16 admitted users (one new event each), admits 1-4 new users with short histories when rows are free
(probability ``--churn``), evicts a random user (the same probability) and every user about to reach the
model's position tables (after ``max_positions`` events a user must be re-admitted). Every ``--check-every``
steps up to 4 of the users just stepped are compared with a fresh ``prefill`` of their whole history
(float32: the largest difference is reported and must stay below ``--tol``).

A user's next event happens at the time of the request that served them (the click on what was shown), and
its own request comes 1-600 s later. That is when decode equals a fresh prefill exactly: the temporal query of
an event uses the time of the NEXT event (SPEC §3), so with several blocks the later blocks' states hold the
last event as seen from its request time; an event at another time than the request makes decode differ from
a prefill of the longer history (up to ~1e-3 on this model) -- except where the decay clamp saturates (gaps
far beyond the periods), which is where ``tests/test_serving.py`` sits.

Measured per window of ``--window`` steps: the median and 99th-percentile time of ``Decoder.step`` (the
call alone) and the process's resident memory (``/proc/self/statm``; Linux) at the window's end. The first
``--warmup`` windows are warm-up (allocator pools, first-use caches). Reported: the memory growth after
warm-up (the largest RSS of a later window minus the RSS at the end of warm-up) and the step-time drift (the
last window's median over the first post-warm-up window's). On a shared, busy CPU the step times follow
the load; the memory figure does not.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

from fuxi_linear import FuXiLinear, FuXiLinearConfig
from fuxi_linear.serving import Decoder


def resident_mb() -> Optional[float]:
    """This process's resident set size in MB (Linux ``/proc/self/statm``), or None elsewhere."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def build_model(seed: int) -> FuXiLinear:
    """The soak's model: 2 blocks, D = 32, 500 items, 64-event histories (76 positions), float32, eval mode."""
    torch.manual_seed(seed)
    cfg = FuXiLinearConfig(num_items=500, max_seq_len=64, embedding_dim=32, num_blocks=2, num_heads=2, qk_dim=8,
                           ffn_multiply=2, temporal_num_periods=2, positional_dim=8, dropout=0.0)
    model = FuXiLinear(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


class Users:
    """Every admitted user's whole history (the oracle) and random new events."""

    def __init__(self, num_items: int, rng: random.Random):
        self.num_items, self.rng = num_items, rng
        self.events: Dict[int, List[tuple]] = {}
        self.request: Dict[int, int] = {}  # each user's last request time: the time of their next event
        self.next_id = 0

    def new(self, length: int) -> int:
        user, self.next_id = self.next_id, self.next_id + 1
        t = 1_700_000_000 + self.rng.randrange(86_400)
        history = []
        for _ in range(length):
            t += self.rng.randrange(0, 20_000)
            history.append((self.rng.randrange(1, self.num_items + 1), t))
        self.events[user] = history
        self.request[user] = t + self.rng.randrange(1, 600)
        return user

    def next_event(self, user: int) -> tuple:
        """``(item, time, request time)``: the event at the user's last request time, the next request after."""
        t = self.request[user]
        self.request[user] = t + self.rng.randrange(1, 600)
        return self.rng.randrange(1, self.num_items + 1), t, self.request[user]

    def batch(self, users: List[int], query: List[int]) -> tuple:
        T = max(len(self.events[u]) for u in users)
        ids = torch.zeros(len(users), T, dtype=torch.int64)
        ts = torch.zeros(len(users), T, dtype=torch.int64)
        for i, u in enumerate(users):
            for j, (item, t) in enumerate(self.events[u]):
                ids[i, j], ts[i, j] = item, t
        return ids, ts, torch.tensor([len(self.events[u]) for u in users]), torch.tensor(query)


def run_soak(steps: int, max_users: int = 64, window: int = 5000, warmup: int = 1, churn: float = 0.3,
             check_every: int = 250, tol: float = 5e-6, seed: int = 0, padded: bool = False,
             log=print) -> dict:
    """Run the soak; returns the per-window table and the summary (see the module docstring)."""
    rng = random.Random(seed)
    model = build_model(seed)
    limit = model.config.max_positions
    decoder = Decoder(model, max_users=max_users, device="cpu", pad_to_buckets=padded)
    users = Users(model.config.num_items, rng)

    def admit(n: int) -> None:
        new = [users.new(rng.randrange(1, 21)) for _ in range(min(n, decoder.num_free_rows))]
        if new:
            decoder.admit(new, *users.batch(new, [users.request[u] for u in new]))

    def evict(victims: List[int]) -> None:
        decoder.evict(victims)
        for u in victims:
            del users.events[u], users.request[u]

    admit(max_users * 3 // 4)
    windows, times, worst_error, checks = [], [], 0.0, 0
    started = time.perf_counter()
    with torch.inference_mode():
        for i in range(1, steps + 1):
            full = [u for u in decoder.users if len(users.events[u]) >= limit - 1]
            if full:
                evict(full)
            if rng.random() < churn and decoder.users:
                evict([rng.choice(decoder.users)])
            if rng.random() < churn or len(decoder.users) < max_users // 2:
                admit(rng.randrange(1, 5))
            batch = rng.sample(decoder.users, min(len(decoder.users), rng.randrange(1, 17)))
            new = [users.next_event(u) for u in batch]
            items = torch.tensor([e[0] for e in new])
            ts = torch.tensor([e[1] for e in new])
            qts = torch.tensor([e[2] for e in new])
            began = time.perf_counter()
            out = decoder.step(batch, items, ts, qts)
            times.append(time.perf_counter() - began)
            for u, (item, t, _) in zip(batch, new):
                users.events[u].append((item, t))
            if i % check_every == 0:
                sample = batch[:4]
                fresh = model.prefill(*users.batch(sample, [e[2] for e in new[:len(sample)]]))[0]
                error = float((out[:len(sample)] - fresh).abs().max())
                worst_error, checks = max(worst_error, error), checks + 1
                if not error <= tol:
                    raise AssertionError(f"step {i}: users {sample} differ from a fresh prefill by {error:.3g} "
                                         f"> {tol:g}")
            if i % window == 0 or i == steps:
                ordered = sorted(times)
                row = {"steps": i, "median_us": round(statistics.median(times) * 1e6, 1),
                       "p99_us": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] * 1e6, 1),
                       "rss_mb": resident_mb(), "users": len(decoder.users), "admitted_total": users.next_id}
                windows.append(row)
                times = []
                log(f"{row['steps']:>8} steps | step median {row['median_us']:>8.1f} us, p99 {row['p99_us']:>8.1f} us"
                    f" | RSS {row['rss_mb'] if row['rss_mb'] is None else round(row['rss_mb'], 1)} MB | "
                    f"{row['users']} users served, {row['admitted_total']} admitted so far")
    after = windows[warmup:] if len(windows) > warmup else windows[-1:]
    base = windows[warmup - 1] if len(windows) > warmup and warmup > 0 else windows[0]
    rss = [w["rss_mb"] for w in after if w["rss_mb"] is not None]
    summary = {
        "steps": steps, "seconds": round(time.perf_counter() - started, 1), "max_users": max_users,
        "window": window, "warmup_windows": warmup, "padded": padded, "threads": torch.get_num_threads(),
        "users_admitted": users.next_id, "prefill_checks": checks, "max_prefill_error": worst_error,
        "rss_after_warmup_mb": base["rss_mb"],
        "rss_growth_mb": (round(max(rss) - base["rss_mb"], 2) if rss and base["rss_mb"] is not None else None),
        "step_median_first_us": after[0]["median_us"], "step_median_last_us": after[-1]["median_us"],
        "step_time_drift": round(after[-1]["median_us"] / after[0]["median_us"], 3),
        "step_median_range_us": [min(w["median_us"] for w in after), max(w["median_us"] for w in after)],
    }
    return {"windows": windows, "summary": summary}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--max-users", type=int, default=64)
    p.add_argument("--window", type=int, default=None, help="steps per reported window (default steps / 20)")
    p.add_argument("--warmup", type=int, default=1, help="windows of warm-up (default 1)")
    p.add_argument("--churn", type=float, default=0.3, help="probability of an admission and of an eviction per step")
    p.add_argument("--check-every", type=int, default=250)
    p.add_argument("--tol", type=float, default=5e-6, help="largest allowed |step - fresh prefill| (float32; "
                   "measured: 5.4e-7 over 400 checks of 20,000 steps)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1: the steadiest on a shared CPU)")
    p.add_argument("--padded", action="store_true", help="run steps at their bucket's size (as on CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", help="write the windows and the summary here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    window = args.window or max(args.steps // 20, 1)
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except (AttributeError, OSError):
        load = "n/a"
    print(f"serving soak: {args.steps:,} steps, {args.max_users} rows, churn {args.churn}, {args.threads} thread(s), "
          f"torch {torch.__version__}, load average {load}")
    result = run_soak(args.steps, args.max_users, window, args.warmup, args.churn, args.check_every, args.tol,
                      args.seed, args.padded)
    s = result["summary"]
    print(f"done in {s['seconds']} s: {s['users_admitted']:,} users admitted, {s['prefill_checks']} prefill checks "
          f"(largest difference {s['max_prefill_error']:.2e}); after warm-up RSS grew {s['rss_growth_mb']} MB "
          f"(from {s['rss_after_warmup_mb']:.1f} MB); step median {s['step_median_first_us']} -> "
          f"{s['step_median_last_us']} us (x{s['step_time_drift']}), range {s['step_median_range_us']}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
