"""The random streams a training step consumes, derived from ``(seed, epoch, step, rank)`` so that a resumed
run draws exactly what the uninterrupted run drew -- from any step, on any rank, with nothing saved.

A training run consumes randomness in three places:

* the example order of an epoch: ``randperm`` seeded with ``seed + epoch``
  (:func:`fuxi_linear.training.distributed.global_batches`);
* the sampled negatives: a hash of ``(seed, epoch, example, position)`` (:mod:`fuxi_linear.training.objective`);
* dropout: the framework's default generators (torch's CPU generator, and the CUDA generator of each device),
  which :func:`seed_step` re-seeds before every optimizer step from :func:`step_seed` ``(seed, epoch, step,
  rank)``.

So the state of every stream at any step boundary is a function of the run's seed and position alone: a run
killed at any point and resumed from its last checkpoint (end of an epoch or mid-epoch) continues with the same
dropout masks, and ranks of a data-parallel run draw different masks. Python's ``random`` and numpy's global
generator are re-seeded too (nothing in a step uses them today; a future augmentation would then be exact as
well).

What this does not give: a run resumed on a *different* number of processes draws other masks than the
interrupted run would have (each rank masks its own share of the batch with its own stream), so with dropout
on it continues as an equally valid but not bit-identical run; with ``dropout = 0`` it matches to float rounding.
"""
from __future__ import annotations

import random

import numpy as np
import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    """The splitmix64 finaliser: a bijective 64-bit mix (consecutive inputs give unrelated outputs)."""
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def step_seed(seed: int, epoch: int, step: int, rank: int) -> int:
    """The seed of optimizer step ``step`` (0-based, counted over the whole run) of ``epoch`` on ``rank``:
    a 63-bit int, a hash of the four (each one changes it)."""
    h = _splitmix64(int(seed) & _MASK64)
    for value in (epoch, step, rank):
        h = _splitmix64(h ^ (int(value) & _MASK64))
    return h >> 1  # torch.manual_seed takes a non-negative int below 2^63 here (any 64-bit value works too)


def seed_step(seed: int, epoch: int, step: int, rank: int) -> int:
    """Seed every framework generator for one training step (torch CPU and all CUDA devices, Python, numpy);
    returns the seed. Costs a few microseconds."""
    s = step_seed(seed, epoch, step, rank)
    torch.manual_seed(s)  # the CPU generator and, lazily, every CUDA device's
    random.seed(s)
    np.random.seed(s & 0xFFFFFFFF)
    return s


#: What checkpoints record about the random streams (a resume checks it: older checkpoints did not derive them).
RANDOM_STREAMS = "per-step seeds from (seed, epoch, step, rank)"

__all__ = ["step_seed", "seed_step", "RANDOM_STREAMS"]
