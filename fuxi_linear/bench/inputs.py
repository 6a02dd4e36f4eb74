"""The benchmark's inputs and calls: one seeded random batch of histories shared by every model, the models
built alike from the settings, and the two timed calls (``prefill`` of a history, one ``decode`` step)."""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable, Dict, Optional, Tuple

import torch

from ..models.registry import build_model
from .settings import BENCH_NUM_ITEMS, BenchSettings, model_kwargs

#: First timestamp (seconds) and mean gap of the synthetic histories.
_T0, _MEAN_GAP_S = 1_700_000_000, 600


@dataclass
class BenchInputs:
    """One random batch shared by every model: B full histories of T events, and one new event per user."""

    item_ids: torch.Tensor  # (B, T) int64 in [1, num_items]
    timestamps: torch.Tensor  # (B, T) int64 seconds, increasing
    lengths: torch.Tensor  # (B,) all T
    query_timestamps: torch.Tensor  # (B,) time of the next event
    step_item_ids: torch.Tensor  # (B,) the new events
    step_timestamps: torch.Tensor  # (B,) = query_timestamps
    step_query_timestamps: torch.Tensor  # (B,) the request after the new event

    @property
    def history(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.item_ids, self.timestamps, self.lengths, self.query_timestamps

    @property
    def step(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.step_item_ids, self.step_timestamps, self.step_query_timestamps


def make_inputs(batch_size: int, seq_len: int, num_items: int = BENCH_NUM_ITEMS, seed: int = 0,
                device: torch.device | str = "cpu") -> BenchInputs:
    """Random histories (uniform items, exponential gaps in seconds) from a seeded CPU generator, so a given
    ``(batch_size, seq_len, seed)`` gives the same inputs on any device."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + seq_len)
    B, T = batch_size, seq_len
    items = torch.randint(1, num_items + 1, (B, T + 1), generator=gen)
    gaps = (torch.empty(B, T + 1).exponential_(1.0 / _MEAN_GAP_S, generator=gen)).long() + 1
    times = _T0 + torch.cumsum(gaps, dim=1)
    dev = torch.device(device)
    return BenchInputs(
        item_ids=items[:, :T].to(dev), timestamps=times[:, :T].to(dev),
        lengths=torch.full((B,), T, dtype=torch.int64, device=dev), query_timestamps=times[:, T].to(dev),
        step_item_ids=items[:, T].to(dev), step_timestamps=times[:, T].to(dev),
        step_query_timestamps=(times[:, T] + _MEAN_GAP_S).to(dev),
    )


def build_bench_models(s: BenchSettings) -> Dict[str, torch.nn.Module]:
    """Each model of ``s.models`` in eval mode, on ``s.device`` in ``s.dtype`` (same seed for each); in the
    compiled regime (``s.compile == "on"``) every model's decode step compiled (``model.compile_step()``: its
    first step compiles). Prefill is compiled by the run itself (:class:`fuxi_linear.bench.compile.CompiledPrefill`)."""
    models = {}
    for name in s.models:
        torch.manual_seed(s.seed)
        models[name] = build_model(name, **model_kwargs(name, s)).eval().to(device=s.torch_device,
                                                                             dtype=s.torch_dtype)
        if s.compile == "on":
            models[name].compile_step()
    return models


def prefill_call(model: torch.nn.Module, inputs: BenchInputs, capacity: Optional[int] = None,
                 prefill: Optional[Callable] = None):
    """``model.prefill(history)`` (or ``prefill(history)``: the same method compiled); the KV-cache baselines
    preallocate ``capacity`` event slots."""
    fn = model.prefill if prefill is None else prefill
    if capacity is not None and "capacity" in inspect.signature(model.prefill).parameters:  # KV-cache baselines
        return fn(*inputs.history, capacity=capacity)
    return fn(*inputs.history)


def decode_call(model: torch.nn.Module, state, inputs: BenchInputs):
    """One ``model.step`` for every user (advances ``state`` in place)."""
    return model.step(state, *inputs.step)
