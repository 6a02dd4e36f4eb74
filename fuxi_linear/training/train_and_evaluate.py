"""Training and evaluation runs: data -> leave-one-out splits -> model -> AdamW -> best checkpoint -> metrics.

``fuxi-linear train`` and ``fuxi-linear eval`` (``fuxi_linear.cli``) are thin front ends over
:func:`train` and :func:`evaluate_checkpoint`. What a run depends on is a
:class:`fuxi_linear.training.train_config.TrainConfig`; its checkpoints are read and written by
:mod:`fuxi_linear.training.checkpoint`.

Output folder ``DIR``: ``checkpoint.pt`` (the best epoch by validation NDCG@10; with the 2-way split, the
last epoch), ``last.pt`` (for ``--resume``; at every epoch's end, and every ``checkpoint_every`` optimizer
steps with the position inside the epoch) and ``metrics.json`` =
``{"validation": {...}, "test": {...}, "config": {...}, "throughput": {...}, "checkpoints": {...}, ...}``.
Every file is written to a temporary name, synced and renamed, so an interrupted run never leaves a
half-written file.

Exact resume: everything a step depends on is either in the checkpoint (weights, AdamW state, step, position
in the epoch's example order, running sums) or a function of the run's seed and position (the example order,
the negatives, and dropout, whose generators are re-seeded before every step from ``(seed, epoch, step,
rank)``: :mod:`fuxi_linear.training.random_streams`). A run killed at any point and resumed from its ``last.pt`` ends
bit for bit where the uninterrupted run ends (same machine, same number of processes and threads).

Under ``torchrun`` (``fuxi_linear.training.distributed``) every process trains on its share of each global batch through
``DistributedDataParallel``; rank 0 alone logs and writes files; evaluation is sharded over the ranks. One step
equals a single-process step on the whole global batch: the loss is normalised by the global number of predicted
positions and the sampled negatives are a function of the example (``fuxi_linear.training.objective``).
"""
from __future__ import annotations

import dataclasses
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from .precision_and_compile import autocast_dtype, check_compile_backend
from .checkpoint import (CHECKPOINT_FORMAT, CheckpointCosts, check_resume_scale, copy_checkpoint, load_checkpoint,
                         model_from_checkpoint, remove_stale_temporaries, save_checkpoint, training_checkpoint)
from ..data import collate_batch, leave_one_out, load_dataset, make_loader
from .distributed import (DistributedContext, combine_metrics, global_batches, launched_world_size, rank_share,
                          setup_distributed, shard_range)
from ..evaluation import evaluate_full_ranking
from .objective import SampledSoftmaxObjective, example_keys
from .random_streams import RANDOM_STREAMS, seed_step
from ..models.registry import MODEL_NAMES, build_model
from .warmup_and_early_stopping import should_stop_early, warmup_lr
from .train_config import PRESETS, TrainConfig, model_kwargs
from ..utils import atomic_write_json, progress, resolve_device
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def load_log(cfg: TrainConfig):
    """The interaction log of ``cfg.dataset`` (synthetic sizes and seed from the config)."""
    kwargs = dict(cfg.extra)
    if cfg.dataset == "synthetic":
        kwargs.update(num_users=cfg.synthetic_users, num_items=cfg.synthetic_items,
                      mean_events=cfg.synthetic_mean_events, seed=cfg.seed)
    return load_dataset(cfg.dataset, cfg.data_path, cache_dir=cfg.cache_dir,
                        k_core=tuple(cfg.k_core) if cfg.k_core else None, min_user_events=cfg.min_user_events,
                        **kwargs)


def last_user_vectors(model: torch.nn.Module, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
    """User vectors at each history's last event ``(B, D)``, queried at the target's time."""
    users = model.encode(batch["item_ids"], batch["timestamps"], batch["lengths"], batch["query_timestamps"])
    return users[torch.arange(users.shape[0], device=users.device), batch["lengths"] - 1]


def evaluate(model, dataset, cfg: TrainConfig, device: torch.device, desc: str,
             ctx: Optional[DistributedContext] = None) -> Dict[str, float]:
    """Full-ranking metrics (SPEC §7) of ``model`` on a split, in float32.

    With several processes (``ctx``) each rank ranks a contiguous shard and the metrics are combined over all
    examples (equal to one process's up to float rounding). ``cfg.max_eval_batches`` keeps the first
    ``max_eval_batches * eval_batch_size`` examples.
    """
    ctx = ctx if ctx is not None else DistributedContext(device=device)
    model.eval()
    n = len(dataset)
    if cfg.max_eval_batches is not None:
        n = min(n, cfg.max_eval_batches * cfg.eval_batch_size)
    lo, hi = shard_range(n, ctx.rank, ctx.world_size)
    local = None
    if hi > lo:
        shard = dataset if (lo, hi) == (0, len(dataset)) else torch.utils.data.Subset(dataset, range(lo, hi))
        loader = make_loader(shard, cfg.eval_batch_size)
        batches = progress(loader, cfg.progress and ctx.is_main, desc=desc, leave=False)
        local = evaluate_full_ranking(lambda b: last_user_vectors(model, b), model.item_vectors, batches,
                                      mrr_cap=cfg.mrr_cap, exclude_history=cfg.exclude_history, device=device)
    return combine_metrics(ctx.all_gather_object(local))


def _wrap_for_training(objective: torch.nn.Module, cfg: TrainConfig, ctx: DistributedContext) -> torch.nn.Module:
    """DistributedDataParallel around the objective (several processes), then ``torch.compile`` (``--compile``),
    the order the DDP documentation recommends."""
    module = objective
    if ctx.active:
        from torch.nn.parallel import DistributedDataParallel

        # With the temporal channel switched off its parameters get no gradient, which DDP must be told.
        unused = cfg.model == "fuxi-linear" and not cfg.use_temporal
        module = DistributedDataParallel(module, device_ids=[ctx.device] if ctx.device.type == "cuda" else None,
                                         find_unused_parameters=unused)
    if cfg.compile:
        module = torch.compile(module, backend=cfg.compile_backend)
    return module


@dataclass
class EpochPosition:
    """Where a run stands inside epoch ``epoch`` (0-based): the first ``batches_done`` of its ``num_batches``
    global batches are done. The running sums (the step losses, the input events and training histories over
    all ranks, the training seconds) continue the epoch's throughput and mean loss after a resume. Stored in a
    mid-epoch checkpoint as a dict (:mod:`fuxi_linear.training.checkpoint`)."""

    epoch: int
    batches_done: int = 0
    num_batches: int = 0
    num_examples: int = 0
    loss_sum: float = 0.0
    events: float = 0.0
    users: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "EpochPosition":
        return cls(**values)


def _train_epoch(step_module, optimizer, dataset, cfg: TrainConfig, ctx: DistributedContext,
                 position: EpochPosition, step: int, global_batch: int,
                 save_position: Optional[Callable[[EpochPosition, int], None]] = None) -> tuple:
    """The rest of epoch ``position.epoch`` over this rank's shares of the global batches, from batch
    ``position.batches_done`` on. Every ``cfg.checkpoint_every`` optimizer steps ``save_position(position,
    step)`` runs on every rank (the position's sums are global). Returns ``(mean loss, next step,
    throughput)``."""
    epoch = position.epoch
    batches = global_batches(len(dataset), global_batch, cfg.seed, epoch)
    if position.num_examples not in (0, len(dataset)) or position.batches_done > len(batches):
        raise ValueError(f"the checkpoint's position (epoch {epoch + 1}, batch {position.batches_done} of "
                         f"{position.num_batches}, {position.num_examples} examples) does not fit this data "
                         f"({len(batches)} batches of {len(dataset)} examples): not the same dataset or split")
    position.num_batches, position.num_examples = len(batches), len(dataset)
    shares, weights = [], []
    for batch in batches[position.batches_done:]:
        share = rank_share(batch, ctx.rank, ctx.world_size)
        # an empty share of a short last batch: one example with weight 0 keeps this rank in the all-reduce
        shares.append(share if len(share) else batch[:1])
        weights.append(1.0 if len(share) else 0.0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[s.tolist() for s in shares],
                                         collate_fn=collate_batch)
    bar = progress(zip(shares, weights, loader), cfg.progress and ctx.is_main, total=len(batches),
                   initial=position.batches_done, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
    device = ctx.device
    done, total_loss = position.batches_done, position.loss_sum
    # events (input positions) and examples of this rank; rank 0 carries the sums of a resumed epoch, so that
    # the sum over the ranks is the epoch's
    counts = torch.zeros(2, dtype=torch.float64)
    if ctx.is_main:
        counts += torch.tensor([position.events, position.users], dtype=torch.float64)
    started, writing = time.perf_counter(), 0.0  # the seconds spent writing checkpoints are not training time

    def where() -> EpochPosition:
        events, users = ctx.all_reduce_sum(counts.clone().to(device)).tolist()
        return EpochPosition(epoch, done, len(batches), len(dataset), total_loss, events, users,
                             position.seconds + time.perf_counter() - started - writing)

    for share, weight, batch in bar:
        counts += weight * torch.tensor([float(batch["lengths"].sum()), float(len(share))], dtype=torch.float64)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        keys = example_keys(cfg.seed, epoch, torch.as_tensor(share, dtype=torch.int64)).to(device)
        lr = warmup_lr(cfg.lr, step, cfg.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
        seed_step(cfg.seed, epoch, step, ctx.rank)  # dropout's stream: a function of the step, not of history
        loss_sum, count = step_module(batch["item_ids"], batch["timestamps"], batch["lengths"],
                                      batch["query_timestamps"], batch["target_ids"], keys)
        if weight == 0.0:
            loss_sum, count = loss_sum * 0.0, count * 0
        # the global sum and count of the step: the loss is normalised by the global number of positions
        totals = ctx.all_reduce_sum(torch.stack([count.to(torch.float64), loss_sum.detach().to(torch.float64)]))
        step_loss = float(totals[1] / totals[0])
        if not math.isfinite(step_loss):
            raise FloatingPointError(f"the loss became {step_loss} at epoch {epoch + 1}; lower --lr")
        loss = loss_sum * (ctx.world_size / totals[0].to(loss_sum.dtype))  # DDP averages over the ranks
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        done += 1
        total_loss += step_loss
        if cfg.progress and ctx.is_main:
            bar.set_postfix(loss=f"{total_loss / done:.4f}")
        if save_position is not None and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            began = time.perf_counter()
            save_position(where(), step)
            writing += time.perf_counter() - began
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    final = where()
    throughput = {"train_seconds": round(final.seconds, 3), "events": int(final.events), "users": int(final.users),
                  "events_per_s": round(final.events / final.seconds, 1),
                  "users_per_s": round(final.users / final.seconds, 2)}
    return total_loss / max(done, 1), step, throughput


def train(cfg: TrainConfig, resume: Optional[str] = None, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset``; returns (and writes) the metrics dict.

    Started by ``torchrun`` (``WORLD_SIZE > 1``), the process joins the group, trains its share of every global
    batch and returns the same metrics as rank 0, which alone logs and writes the output folder.
    """
    cfg.batch_sizes(launched_world_size())  # a world size that does not divide the batch fails before joining
    ctx = setup_distributed(cfg.device, resolve_device)
    completed = False
    try:
        metrics = _train(cfg, resume, log if ctx.is_main else (lambda message: None), ctx)
        completed = True
        return metrics
    finally:
        ctx.close(completed)


def _train(cfg: TrainConfig, resume: Optional[str], log: Callable[[str], None],
           ctx: DistributedContext) -> Dict[str, Any]:
    device = ctx.device
    per_rank_batch, global_batch = cfg.batch_sizes(ctx.world_size)
    dtype = autocast_dtype(cfg.precision, device)
    if cfg.compile:
        check_compile_backend(cfg.compile_backend, device)
    seed_everything(cfg.seed)
    started = time.time()
    data = load_log(cfg)
    splits = leave_one_out(data, cfg.max_seq_len, mode=cfg.split, train_stride=cfg.train_stride)
    log(f"data: {cfg.dataset} | {data.num_users} users, {data.num_items} items, {data.num_events} events, "
        f"timestamps in {data.timestamp_unit} | dropped {splits.num_dropped_users} users with too few events | "
        f"train {len(splits.train)} / valid {len(splits.valid) if splits.valid is not None else 0} / "
        f"test {len(splits.test)} examples")
    if len(splits.train) == 0:
        raise ValueError("the training split is empty: every user has fewer than 2 training events")
    kwargs = model_kwargs(cfg, data.num_items, data.timestamp_unit)
    model = build_model(cfg.model, **kwargs).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    start, best, history, step = EpochPosition(0), None, [], 0
    if resume is not None:
        ckpt = load_checkpoint(resume, map_location=device)
        if ckpt["model_name"] != cfg.model or ckpt["model_kwargs"] != kwargs:
            raise ValueError(
                f"checkpoint {resume} was trained with another configuration: "
                f"{ckpt['model_name']} {ckpt['model_kwargs']} vs {cfg.model} {kwargs}"
            )
        check_resume_scale(ckpt, resume, ctx.world_size, global_batch)
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        best, history = ckpt["best_validation"], ckpt["history"]
        step = int(ckpt.get("step", 0))
        if ckpt["position"] is not None:  # written inside an epoch: continue at its next global batch
            start = EpochPosition.from_dict(ckpt["position"])
            where = f"epoch {start.epoch + 1}, batch {start.batches_done}/{start.num_batches}"
        else:
            start = EpochPosition(ckpt["epoch"] + 1)
            where = f"the start of epoch {start.epoch + 1}"
        log(f"resumed from {resume} at {where} (step {step})")
        if ckpt["random_streams"] != RANDOM_STREAMS and kwargs.get("dropout", 0):
            log(f"note: {resume} was written by an older version that did not derive the dropout stream from the "
                f"step; the resumed run is not bit-identical to an uninterrupted one")
    num_params = sum(p.numel() for p in model.parameters())
    scale = (f" | {ctx.world_size} processes ({ctx.backend}), batch {per_rank_batch} per process = "
             f"{global_batch} global" if ctx.active else "")
    log(f"model: {cfg.model} ({num_params:,} parameters) on {device} | {cfg.precision}"
        + (f" | compiled ({cfg.compile_backend})" if cfg.compile else "") + scale)
    out = Path(cfg.output)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)  # only after data and model were built without error
        if resume is not None and not (out / "checkpoint.pt").exists():
            # resuming into a new folder: bring the best checkpoint so far along, or start the "best" afresh
            best_so_far = Path(resume).with_name("checkpoint.pt")
            if best_so_far.is_file():
                copy_checkpoint(best_so_far, out / "checkpoint.pt")
            else:
                best = None
        stale = remove_stale_temporaries(out)
        if stale:
            log(f"removed {len(stale)} temporary file(s) of an interrupted write: {', '.join(p.name for p in stale)}")
    best = ctx.broadcast_object(best)  # every rank takes rank 0's view (it decides the early stop too)
    step_module = _wrap_for_training(SampledSoftmaxObjective(model, dtype), cfg, ctx)
    costs = CheckpointCosts()

    def write_last(completed_epoch: int, position: Optional[EpochPosition]) -> None:
        """``last.pt`` after ``step`` steps (rank 0), its cost logged and counted."""
        if not ctx.is_main:
            return
        began = time.perf_counter()
        ckpt = training_checkpoint(model, optimizer, cfg, kwargs, completed_epoch, best, history, step,
                                   ctx.world_size, global_batch, None if position is None else position.to_dict())
        path = save_checkpoint(ckpt, out / "last.pt")
        seconds, size = costs.add(began, path)
        if position is not None:
            log(f"checkpoint: step {step} (epoch {position.epoch + 1}, batch {position.batches_done}/"
                f"{position.num_batches}) -> {path} ({size / 1e6:.1f} MB in {seconds:.3f} s)")

    def save_position(position: EpochPosition, at_step: int) -> None:
        nonlocal step
        step = at_step
        write_last(position.epoch - 1, position)

    stopped_after = None
    runs = []
    for epoch in range(start.epoch, cfg.epochs):
        if should_stop_early(best, epoch, cfg.patience):  # checked before each epoch: a resumed run too
            stopped_after = epoch
            log(f"early stop: no better validation NDCG@10 for {cfg.patience} epochs (best epoch {best['epoch']})")
            break
        model.train()
        position = start if epoch == start.epoch else EpochPosition(epoch)
        train_loss, step, throughput = _train_epoch(step_module, optimizer, splits.train, cfg, ctx, position, step,
                                                    global_batch, save_position)
        runs.append(throughput)
        entry: Dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss,
                                 "lr": optimizer.param_groups[0]["lr"], "steps": step, **throughput}
        if splits.valid is not None:
            entry["validation"] = evaluate(model, splits.valid, cfg, device, "validation", ctx)
            improved = best is None or entry["validation"]["ndcg@10"] > best["ndcg@10"]
        else:
            improved = True
        history.append(entry)
        if improved:
            best = dict(entry.get("validation", {}), epoch=epoch + 1)
        write_last(epoch, None)
        if ctx.is_main and improved:  # the best epoch so far: the same file, copied rather than serialised twice
            copy_checkpoint(out / "last.pt", out / "checkpoint.pt")
        val = entry.get("validation")
        log(f"epoch {epoch + 1}: train loss {entry['train_loss']:.4f}"
            + (f" | valid ndcg@10 {val['ndcg@10']:.4f} hr@10 {val['hr@10']:.4f} mrr {val['mrr']:.4f}" if val else "")
            + (" (best)" if improved else "")
            + f" | {throughput['events_per_s']:,.0f} events/s, {throughput['users_per_s']:,.1f} users/s"
            + (f" | last.pt {costs.last_seconds:.3f} s" if ctx.is_main else ""))
    if ctx.is_main:
        model.load_state_dict(load_checkpoint(out / "checkpoint.pt", map_location=device)["model_state"])
    ctx.broadcast_module_state(model)
    test = evaluate(model, splits.test, cfg, device, "test", ctx)
    seconds = sum(r["train_seconds"] for r in runs)
    metrics = {"validation": best if splits.valid is not None else None, "test": test, "config": cfg.to_dict(),
               "model_kwargs": kwargs, "num_parameters": num_params, "history": history,
               "seconds": round(time.time() - started, 1),
               "throughput": ({"train_seconds": round(seconds, 3),
                               "events_per_s": round(sum(r["events"] for r in runs) / seconds, 1),
                               "users_per_s": round(sum(r["users"] for r in runs) / seconds, 2)}
                              if runs else None),
               "distributed": {"world_size": ctx.world_size, "backend": ctx.backend,
                               "per_rank_batch_size": per_rank_batch, "global_batch_size": global_batch},
               "early_stopping": {"patience": cfg.patience, "stopped_after_epoch": stopped_after,
                                  "best_epoch": best["epoch"] if best else None},
               "checkpoints": costs.to_dict() if ctx.is_main else None}
    if ctx.is_main:
        atomic_write_json(out / "metrics.json", metrics, indent=2, sort_keys=True)
    log("test: " + " ".join(f"{k} {v:.4f}" for k, v in test.items() if k != "num_examples")
        + f" ({test['num_examples']:.0f} users) | best epoch {best['epoch']} | wrote {out / 'metrics.json'}")
    return metrics


def evaluate_checkpoint(path: str, overrides: Optional[Dict[str, Any]] = None,
                        log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Re-score a checkpoint on its dataset's validation and test splits (data settings may be overridden)."""
    ckpt = load_checkpoint(path)
    values = dict(ckpt["train_config"])
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    cfg = TrainConfig(**values)
    device = resolve_device(cfg.device)
    data = load_log(cfg)
    if data.num_items != ckpt["model_kwargs"]["num_items"]:
        raise ValueError(f"checkpoint was trained on {ckpt['model_kwargs']['num_items']} items, "
                         f"the data has {data.num_items}: not the same dataset")
    splits = leave_one_out(data, cfg.max_seq_len, mode=cfg.split, train_stride=cfg.train_stride)
    model = model_from_checkpoint(ckpt, device)
    result: Dict[str, Any] = {"checkpoint": str(path), "epoch": ckpt["epoch"] + 1}
    if ckpt["position"] is not None:  # written inside an epoch: "epoch" is the last completed one
        result["position"] = ckpt["position"]
    if splits.valid is not None:
        result["validation"] = evaluate(model, splits.valid, cfg, device, "validation")
    result["test"] = evaluate(model, splits.test, cfg, device, "test")
    log("test: " + " ".join(f"{k} {v:.4f}" for k, v in result["test"].items() if k != "num_examples"))
    return result


__all__ = ["train", "evaluate", "evaluate_checkpoint", "load_log", "seed_everything", "last_user_vectors",
           # defined in fuxi_linear.training.train_config / .checkpoint / .registry, importable from here as before
           "TrainConfig", "PRESETS", "MODEL_NAMES", "CHECKPOINT_FORMAT", "model_kwargs", "load_checkpoint",
           "model_from_checkpoint", "resolve_device"]
