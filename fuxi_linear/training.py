"""Training and evaluation runs: data -> leave-one-out splits -> model -> AdamW -> best checkpoint -> metrics.

``fuxi-linear train`` and ``fuxi-linear eval`` (``fuxi_linear.cli``) are thin front ends over
:func:`train` and :func:`evaluate_checkpoint`.

Output folder ``DIR``: ``checkpoint.pt`` (the best epoch by validation NDCG@10; with the 2-way split, the
last epoch), ``last.pt`` (for ``--resume``) and ``metrics.json`` =
``{"validation": {...}, "test": {...}, "config": {...}}``. Every file is written to a temporary name and
renamed, so an interrupted run never leaves a half-written file.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import numpy as np
import torch

from .data import DATASET_NAMES, SYNTHETIC_TEMPORAL_PERIODS, default_temporal_periods, leave_one_out, load_dataset, make_loader
from .evaluation import evaluate_full_ranking

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


def evaluate(model, dataset, cfg: TrainConfig, device: torch.device, desc: str) -> Dict[str, float]:
    """Full-ranking metrics (SPEC §7) of ``model`` on a split."""
    model.eval()
    loader = make_loader(dataset, cfg.eval_batch_size)
    batches = _progress(loader, cfg.progress, desc=desc, leave=False)
    return evaluate_full_ranking(lambda b: last_user_vectors(model, b), model.item_vectors, batches,
                                 mrr_cap=cfg.mrr_cap, exclude_history=cfg.exclude_history, device=device,
                                 max_batches=cfg.max_eval_batches)


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


def _checkpoint(model, optimizer, cfg, kwargs, epoch, best, history) -> Dict[str, Any]:
    return {"format": CHECKPOINT_FORMAT, "model_name": cfg.model, "model_kwargs": kwargs,
            "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(), "epoch": epoch,
            "best_validation": best, "history": history, "train_config": cfg.to_dict()}


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


def train(cfg: TrainConfig, resume: Optional[str] = None, log: Callable[[str], None] = print) -> Dict[str, Any]:
    """Train ``cfg.model`` on ``cfg.dataset``; returns (and writes) the metrics dict."""
    device = resolve_device(cfg.device)
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
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98), weight_decay=cfg.weight_decay)
    start_epoch, best, history = 0, None, []
    if resume is not None:
        ckpt = load_checkpoint(resume, map_location=device)
        if ckpt["model_name"] != cfg.model or ckpt["model_kwargs"] != kwargs:
            raise ValueError(
                f"checkpoint {resume} was trained with another configuration: "
                f"{ckpt['model_name']} {ckpt['model_kwargs']} vs {cfg.model} {kwargs}"
            )
        model.load_state_dict(ckpt["model_state"])
        optimizer.load_state_dict(ckpt["optimizer_state"])
        start_epoch, best, history = ckpt["epoch"] + 1, ckpt["best_validation"], ckpt["history"]
        log(f"resumed from {resume} at epoch {start_epoch}")
    num_params = sum(p.numel() for p in model.parameters())
    log(f"model: {cfg.model} ({num_params:,} parameters) on {device}")
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)  # only after data and model were built without error
    if resume is not None and not (out / "checkpoint.pt").exists():
        # resuming into a new folder: bring the best checkpoint so far along, or start the "best" afresh
        best_so_far = Path(resume).with_name("checkpoint.pt")
        if best_so_far.is_file():
            _atomic_copy(best_so_far, out / "checkpoint.pt")
        else:
            best = None
    generator = torch.Generator(device=device).manual_seed(cfg.seed)
    for epoch in range(start_epoch, cfg.epochs):
        model.train()
        loader = make_loader(splits.train, cfg.batch_size, shuffle=True, seed=cfg.seed + epoch)
        total, count = 0.0, 0
        bar = _progress(loader, cfg.progress, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        for batch in bar:
            batch = {k: v.to(device) for k, v in batch.items()}
            loss = model.loss(batch["item_ids"], batch["timestamps"], batch["lengths"], batch["query_timestamps"],
                              target_ids=batch["target_ids"], generator=generator)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"the loss became {loss.item()} at epoch {epoch + 1}; lower --lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
            count += 1
            if cfg.progress:
                bar.set_postfix(loss=f"{total / count:.4f}")
        entry: Dict[str, Any] = {"epoch": epoch + 1, "train_loss": total / max(count, 1)}
        if splits.valid is not None:
            entry["validation"] = evaluate(model, splits.valid, cfg, device, "validation")
            improved = best is None or entry["validation"]["ndcg@10"] > best["ndcg@10"]
        else:
            improved = True
        history.append(entry)
        if improved:
            best = dict(entry.get("validation", {}), epoch=epoch + 1)
        _atomic_save(_checkpoint(model, optimizer, cfg, kwargs, epoch, best, history), out / "last.pt")
        if improved:  # the best epoch so far: the same file, copied rather than serialised twice
            _atomic_copy(out / "last.pt", out / "checkpoint.pt")
        val = entry.get("validation")
        log(f"epoch {epoch + 1}: train loss {entry['train_loss']:.4f}"
            + (f" | valid ndcg@10 {val['ndcg@10']:.4f} hr@10 {val['hr@10']:.4f} mrr {val['mrr']:.4f}" if val else "")
            + (" (best)" if improved else ""))
    best_ckpt = load_checkpoint(out / "checkpoint.pt", map_location=device)
    model.load_state_dict(best_ckpt["model_state"])
    test = evaluate(model, splits.test, cfg, device, "test")
    metrics = {"validation": best if splits.valid is not None else None, "test": test, "config": cfg.to_dict(),
               "model_kwargs": kwargs, "num_parameters": num_params, "history": history,
               "seconds": round(time.time() - started, 1)}
    _atomic_write_json(metrics, out / "metrics.json")
    log("test: " + " ".join(f"{k} {v:.4f}" for k, v in test.items() if k != "num_examples")
        + f" ({test['num_examples']} users) | best epoch {best['epoch']} | wrote {out / 'metrics.json'}")
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
