"""Training and evaluation runs: data -> leave-one-out splits -> model -> AdamW -> best checkpoint -> metrics.

``fuxi-linear train`` and ``fuxi-linear eval`` (``fuxi_linear.cli``) are thin front ends over
:func:`train` and :func:`evaluate_checkpoint`.

Output folder ``DIR``: ``checkpoint.pt`` (the best epoch by validation NDCG@10; with the 2-way split, the
last epoch), ``last.pt`` (for ``--resume``) and ``metrics.json`` =
``{"validation": {...}, "test": {...}, "config": {...}, "throughput": {...}, ...}``. Every file is written to a
temporary name and renamed, so an interrupted run never leaves a half-written file.

Under ``torchrun`` (``fuxi_linear.distributed``) every process trains on its share of each global batch through
``DistributedDataParallel``; rank 0 alone logs and writes files; evaluation is sharded over the ranks. One step
equals a single-process step on the whole global batch: the loss is normalised by the global number of predicted
positions and the sampled negatives are a function of the example (``fuxi_linear.objective``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from .acceleration import PRECISIONS, autocast_dtype, check_compile_backend
from .data import DATASET_NAMES, SYNTHETIC_TEMPORAL_PERIODS, default_temporal_periods, leave_one_out, load_dataset, make_loader
from .data import collate_batch
from .distributed import (DistributedContext, combine_metrics, global_batches, launched_world_size, rank_share,
                          setup_distributed, shard_range)
from .evaluation import evaluate_full_ranking
from .objective import SampledSoftmaxObjective, example_keys
from .schedule import should_stop_early, warmup_lr

MODEL_NAMES = ("fuxi-linear", "sasrec", "hstu", "fuxi-alpha")
CHECKPOINT_FORMAT = 1

# The paper's configurations (SPEC §9 / the released configs). Flags given on the command line win.
PRESETS: Dict[str, Dict[str, Any]] = {
    "kuairand": dict(dataset="kuairand", max_seq_len=1024, embedding_dim=128, num_blocks=4, num_heads=4,
                     qk_dim=32, temporal_base=2, temporal_start=10, temporal_stride=3, temporal_num_periods=8,
                     learn_temporal_decay=True, dropout=0.5, lr=1e-3, batch_size=128),
    "kuairec": dict(dataset="kuairec", max_seq_len=1024, embedding_dim=128, num_blocks=4, num_heads=4,
                    qk_dim=32, temporal_base=2, temporal_start=10, temporal_stride=3, temporal_num_periods=8,
                    learn_temporal_decay=True, dropout=0.5, lr=1e-3, batch_size=128),
    "ml-20m": dict(dataset="ml-20m", max_seq_len=200, embedding_dim=256, num_blocks=8, num_heads=8,
                   qk_dim=32, temporal_base=16, temporal_start=0, temporal_stride=1, temporal_num_periods=8,
                   learn_temporal_decay=False, dropout=0.2, lr=4e-3, batch_size=128),
}


@dataclass
class TrainConfig:
    """Everything a run depends on (saved in the checkpoint and in metrics.json)."""

    dataset: str = "synthetic"
    data_path: Optional[str] = None
    model: str = "fuxi-linear"
    epochs: int = 10
    max_seq_len: int = 200
    embedding_dim: int = 64
    num_blocks: int = 2
    num_heads: int = 4
    qk_dim: Optional[int] = None
    dropout: float = 0.2
    batch_size: int = 64
    eval_batch_size: int = 256
    lr: float = 1e-3
    weight_decay: float = 0.0
    num_negatives: int = 128
    temperature: float = 0.05
    seed: int = 42
    device: str = "auto"
    output: str = "runs/latest"
    split: str = "3way"
    train_stride: Optional[int] = None
    mrr_cap: Optional[int] = None
    exclude_history: bool = True
    # FuXi-Linear only; None = the defaults for the dataset's timestamp unit (SPEC §3)
    temporal_base: Optional[int] = None
    temporal_start: Optional[int] = None
    temporal_stride: Optional[int] = None
    temporal_num_periods: Optional[int] = None
    temporal_periods: Optional[tuple] = None  # explicit periods; synthetic data defaults to calendar periods
    learn_temporal_decay: bool = True
    use_temporal: bool = True
    positional_dim: int = 32
    backend: str = "auto"
    # data handling
    cache_dir: Optional[str] = None
    k_core: Optional[tuple] = None
    min_user_events: Optional[int] = None
    synthetic_users: int = 500
    synthetic_items: int = 1000
    synthetic_mean_events: int = 250
    max_eval_batches: Optional[int] = None
    progress: bool = True
    extra: Dict[str, Any] = field(default_factory=dict)  # loader kwargs, e.g. csv column names
    # speed and scale
    precision: str = "fp32"  # "bf16": autocast of the encoder; weights, optimizer and loss stay float32
    compile: bool = False  # torch.compile of the training forward
    compile_backend: str = "inductor"
    global_batch_size: Optional[int] = None  # set: batch_size per rank = global_batch_size / world size
    # schedule
    warmup_steps: int = 0  # linear learning-rate warm-up over this many optimizer steps
    patience: Optional[int] = None  # stop after this many epochs without a better validation NDCG@10

    def __post_init__(self) -> None:
        if self.dataset not in DATASET_NAMES:
            raise ValueError(f"unknown dataset {self.dataset!r}; valid names: {', '.join(DATASET_NAMES)}")
        if self.model not in MODEL_NAMES:
            raise ValueError(f"unknown model {self.model!r}; valid names: {', '.join(MODEL_NAMES)}")
        if self.dataset != "synthetic" and not self.data_path:
            raise ValueError(f"dataset {self.dataset!r} needs --data-path (the file or its folder)")
        for name in ("epochs", "max_seq_len", "embedding_dim", "num_blocks", "num_heads", "batch_size",
                     "eval_batch_size", "num_negatives"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.split not in ("3way", "2way"):
            raise ValueError(f"split must be '3way' or '2way', got {self.split!r}")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")
        for name in ("global_batch_size", "patience"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
                raise ValueError(f"{name} must be a positive int or None, got {value!r}")
        if not isinstance(self.warmup_steps, int) or isinstance(self.warmup_steps, bool) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if self.patience is not None and self.split != "3way":
            raise ValueError("patience (early stopping on validation NDCG@10) needs the validation split "
                             "(split='3way'), got split='2way'")
        if not isinstance(self.compile_backend, str) or not self.compile_backend:
            raise ValueError(f"compile_backend must be a backend name, got {self.compile_backend!r}")

    def batch_sizes(self, world_size: int) -> tuple:
        """``(per-rank, global)`` training batch sizes for ``world_size`` processes: ``batch_size`` is per rank
        unless ``global_batch_size`` is set, which must then be divisible by the world size."""
        if self.global_batch_size is None:
            return self.batch_size, self.batch_size * world_size
        if self.global_batch_size % world_size:
            raise ValueError(f"--global-batch-size {self.global_batch_size} is not divisible by the world size "
                             f"{world_size} (torchrun --nproc_per_node x nodes); pick a multiple of {world_size}")
        return self.global_batch_size // world_size, self.global_batch_size

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {name!r}") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name} was requested but CUDA is not available here")
    return device


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


def model_kwargs(cfg: TrainConfig, num_items: int, timestamp_unit: str) -> Dict[str, Any]:
    """Constructor arguments of ``cfg.model`` (the FuXi-Linear temporal settings only for FuXi-Linear)."""
    kwargs: Dict[str, Any] = dict(num_items=num_items, max_seq_len=cfg.max_seq_len,
                                  embedding_dim=cfg.embedding_dim, num_blocks=cfg.num_blocks,
                                  num_heads=cfg.num_heads, dropout=cfg.dropout, temperature=cfg.temperature,
                                  num_negatives=cfg.num_negatives)
    if cfg.qk_dim is not None:
        kwargs["qk_dim"] = cfg.qk_dim
    if cfg.model == "fuxi-linear":
        periods = default_temporal_periods(timestamp_unit)
        explicit = cfg.temporal_periods
        if explicit is None and cfg.dataset == "synthetic" and cfg.temporal_base is None:
            explicit = SYNTHETIC_TEMPORAL_PERIODS
        if explicit is not None:
            kwargs["temporal_periods"] = tuple(int(p) for p in explicit)
        kwargs.update(
            temporal_base=cfg.temporal_base if cfg.temporal_base is not None else periods["base"],
            temporal_start=cfg.temporal_start if cfg.temporal_start is not None else periods["start"],
            temporal_stride=cfg.temporal_stride if cfg.temporal_stride is not None else periods["stride"],
            temporal_num_periods=(cfg.temporal_num_periods if cfg.temporal_num_periods is not None
                                  else periods["num_periods"]),
            learn_temporal_decay=cfg.learn_temporal_decay, use_temporal=cfg.use_temporal,
            positional_dim=cfg.positional_dim, backend=cfg.backend,
        )
    return kwargs


def build(name: str, kwargs: Dict[str, Any]) -> torch.nn.Module:
    from .baselines import build_model

    return build_model(name, **kwargs)


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
        batches = _progress(loader, cfg.progress and ctx.is_main, desc=desc, leave=False)
        local = evaluate_full_ranking(lambda b: last_user_vectors(model, b), model.item_vectors, batches,
                                      mrr_cap=cfg.mrr_cap, exclude_history=cfg.exclude_history, device=device)
    return combine_metrics(ctx.all_gather_object(local))


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _atomic_copy(src: Path, dst: Path) -> None:
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def _atomic_write_json(obj: Any, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _checkpoint(model, optimizer, cfg, kwargs, epoch, best, history, step, world_size,
                global_batch_size) -> Dict[str, Any]:
    return {"format": CHECKPOINT_FORMAT, "model_name": cfg.model, "model_kwargs": kwargs,
            "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(), "epoch": epoch,
            "best_validation": best, "history": history, "train_config": cfg.to_dict(), "step": step,
            "world_size": world_size, "global_batch_size": global_batch_size}


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Read a training checkpoint, checking that it is one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file: torch raises many kinds (pickle, zip, runtime)
        raise ValueError(f"{path} is not a fuxi-linear training checkpoint (cannot be read: {err})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or "model_state" not in ckpt:
        raise ValueError(f"{path} is not a fuxi-linear training checkpoint")
    return ckpt


def model_from_checkpoint(ckpt: Dict[str, Any], device: torch.device) -> torch.nn.Module:
    model = build(ckpt["model_name"], ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model_state"])
    return model.to(device)


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


def _check_resume_scale(ckpt: Dict[str, Any], resume: str, world_size: int, global_batch_size: int) -> None:
    """A run may resume on another number of processes only with the same global batch (the data order and the
    steps are then those of the interrupted run)."""
    prev_world = int(ckpt.get("world_size", 1))
    prev_global = ckpt.get("global_batch_size", ckpt["train_config"].get("batch_size"))
    if prev_world != world_size and prev_global != global_batch_size:
        raise ValueError(
            f"checkpoint {resume} was trained by {prev_world} process(es) with a global batch of {prev_global}; "
            f"{world_size} process(es) with this --batch-size make a global batch of {global_batch_size}. Resume "
            f"with {prev_world} process(es), or pass --global-batch-size {prev_global}"
        )


def _train_epoch(step_module, optimizer, dataset, cfg: TrainConfig, ctx: DistributedContext, epoch: int,
                 step: int, global_batch: int) -> tuple:
    """One epoch over this rank's shares of the global batches. Returns ``(mean loss, next step, throughput)``."""
    shares, weights = [], []
    for batch in global_batches(len(dataset), global_batch, cfg.seed, epoch):
        share = rank_share(batch, ctx.rank, ctx.world_size)
        # an empty share of a short last batch: one example with weight 0 keeps this rank in the all-reduce
        shares.append(share if len(share) else batch[:1])
        weights.append(1.0 if len(share) else 0.0)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=[s.tolist() for s in shares],
                                         collate_fn=collate_batch)
    bar = _progress(zip(shares, weights, loader), cfg.progress and ctx.is_main, total=len(shares),
                    desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
    device = ctx.device
    total_loss, num_steps = 0.0, 0
    counts = torch.zeros(2, dtype=torch.float64)  # events (input positions) and examples of this rank
    started = time.perf_counter()
    for share, weight, batch in bar:
        counts += weight * torch.tensor([float(batch["lengths"].sum()), float(len(share))], dtype=torch.float64)
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        keys = example_keys(cfg.seed, epoch, torch.as_tensor(share, dtype=torch.int64)).to(device)
        lr = warmup_lr(cfg.lr, step, cfg.warmup_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr
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
        total_loss += step_loss
        num_steps += 1
        if cfg.progress and ctx.is_main:
            bar.set_postfix(loss=f"{total_loss / num_steps:.4f}")
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    events, users = ctx.all_reduce_sum(counts.to(device)).tolist()
    throughput = {"train_seconds": round(seconds, 3), "events": int(events), "users": int(users),
                  "events_per_s": round(events / seconds, 1), "users_per_s": round(users / seconds, 2)}
    return total_loss / max(num_steps, 1), step, throughput


def train(cfg: TrainConfig, resume: Optional[str] = None, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset``; returns (and writes) the metrics dict.

    Started by ``torchrun`` (``WORLD_SIZE > 1``), the process joins the group, trains its share of every global
    batch and returns the same metrics as rank 0, which alone logs and writes the output folder.
    """
    cfg.batch_sizes(launched_world_size())  # a world size that does not divide the batch fails before joining
    ctx = setup_distributed(cfg.device, resolve_device)
    try:
        return _train(cfg, resume, log if ctx.is_main else (lambda message: None), ctx)
    finally:
        ctx.close()


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
    model = build(cfg.model, kwargs).to(device)
    if ctx.rank:  # different dropout masks on every rank (the initial weights are rank 0's: DDP broadcasts them)
        torch.manual_seed(cfg.seed + ctx.rank)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    start_epoch, best, history, step = 0, None, [], 0
    if resume is not None:
        ckpt = load_checkpoint(resume, map_location=device)
        if ckpt["model_name"] != cfg.model or ckpt["model_kwargs"] != kwargs:
            raise ValueError(
                f"checkpoint {resume} was trained with another configuration: "
                f"{ckpt['model_name']} {ckpt['model_kwargs']} vs {cfg.model} {kwargs}"
            )
        _check_resume_scale(ckpt, resume, ctx.world_size, global_batch)
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        start_epoch, best, history = ckpt["epoch"] + 1, ckpt["best_validation"], ckpt["history"]
        step = int(ckpt.get("step", 0))
        log(f"resumed from {resume} at epoch {start_epoch}")
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
                _atomic_copy(best_so_far, out / "checkpoint.pt")
            else:
                best = None
    best = ctx.broadcast_object(best)  # every rank takes rank 0's view (it decides the early stop too)
    step_module = _wrap_for_training(SampledSoftmaxObjective(model, dtype), cfg, ctx)
    stopped_after = None
    runs = []
    for epoch in range(start_epoch, cfg.epochs):
        if should_stop_early(best, epoch, cfg.patience):  # checked before each epoch: a resumed run too
            stopped_after = epoch
            log(f"early stop: no better validation NDCG@10 for {cfg.patience} epochs (best epoch {best['epoch']})")
            break
        model.train()
        train_loss, step, throughput = _train_epoch(step_module, optimizer, splits.train, cfg, ctx, epoch, step,
                                                    global_batch)
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
        if ctx.is_main:
            _atomic_save(_checkpoint(model, optimizer, cfg, kwargs, epoch, best, history, step, ctx.world_size,
                                     global_batch), out / "last.pt")
            if improved:  # the best epoch so far: the same file, copied rather than serialised twice
                _atomic_copy(out / "last.pt", out / "checkpoint.pt")
        val = entry.get("validation")
        log(f"epoch {epoch + 1}: train loss {entry['train_loss']:.4f}"
            + (f" | valid ndcg@10 {val['ndcg@10']:.4f} hr@10 {val['hr@10']:.4f} mrr {val['mrr']:.4f}" if val else "")
            + (" (best)" if improved else "")
            + f" | {throughput['events_per_s']:,.0f} events/s, {throughput['users_per_s']:,.1f} users/s")
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
                                  "best_epoch": best["epoch"] if best else None}}
    if ctx.is_main:
        _atomic_write_json(metrics, out / "metrics.json")
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
    if splits.valid is not None:
        result["validation"] = evaluate(model, splits.valid, cfg, device, "validation")
    result["test"] = evaluate(model, splits.test, cfg, device, "test")
    log("test: " + " ".join(f"{k} {v:.4f}" for k, v in result["test"].items() if k != "num_examples"))
    return result
