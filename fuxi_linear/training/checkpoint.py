"""Training checkpoints, the files ``fuxi-linear train`` writes (``DIR/checkpoint.pt``, ``DIR/last.pt``):
the model's name, constructor arguments and weights, the optimizer state, the epoch, step and history, the
:class:`fuxi_linear.training.train_config.TrainConfig`, the scale of the run and -- in a checkpoint written inside
an epoch (``--checkpoint-every``) -- the position in that epoch. (The paper's released checkpoints are imported
by :mod:`fuxi_linear.models.released_checkpoint`.)

Files are written to a temporary name, synced and renamed (:func:`fuxi_linear.utils.atomic_write`), so an
interrupted run never leaves a half-written checkpoint: ``last.pt`` is the previous one or the new one.

Layout (format 2): ``epoch`` is the last *completed* epoch (0-based; -1 before the first one ends);
``position`` is None at an epoch's end, or, inside an epoch, ``{"epoch": e, "batches_done": k, "num_batches",
"num_examples", "loss_sum", "events", "users", "seconds"}``: the first k global batches of epoch e's example
order are done, with the epoch's running sums so far (over all ranks). The random streams are not stored:
they are derived from ``(seed, epoch, step, rank)`` (:mod:`fuxi_linear.training.random_streams`), named by
``random_streams``. Format 1 (no ``position``, no derived streams) still loads and resumes at an epoch's end.
"""
from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from ..fault_injection import crash_point
from .random_streams import RANDOM_STREAMS
from ..models.registry import build_model
from ..utils import atomic_write

#: Version of the checkpoint layout (``ckpt["format"]``); :func:`load_checkpoint` reads these.
CHECKPOINT_FORMAT = 2
READABLE_FORMATS = (1, 2)


def training_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg, kwargs: Dict[str, Any],
                        epoch: int, best: Optional[Dict[str, Any]], history: List[Dict[str, Any]], step: int,
                        world_size: int, global_batch_size: int,
                        position: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """The checkpoint of a run after ``step`` optimizer steps: ``epoch`` (0-based) is the last completed epoch
    and ``position`` the place inside the next one (None at an epoch's end; see the module docstring);
    ``cfg`` is its ``TrainConfig``, ``kwargs`` the model's constructor arguments, ``best`` the best
    validation metrics so far."""
    return {"format": CHECKPOINT_FORMAT, "model_name": cfg.model, "model_kwargs": kwargs,
            "model_state": model.state_dict(), "optimizer_state": optimizer.state_dict(), "epoch": epoch,
            "best_validation": best, "history": history, "train_config": cfg.to_dict(), "step": step,
            "world_size": world_size, "global_batch_size": global_batch_size, "position": position,
            "random_streams": RANDOM_STREAMS}


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Dict[str, Any]:
    """Read a training checkpoint, checking that it is one (a truncated or foreign file: ``ValueError``
    naming it)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated or foreign file: torch raises many kinds (pickle, zip, runtime)
        raise ValueError(f"{path} is not a fuxi-linear training checkpoint (cannot be read: {err})") from None
    if not isinstance(ckpt, dict) or "model_state" not in ckpt:
        raise ValueError(f"{path} is not a fuxi-linear training checkpoint")
    if ckpt.get("format") not in READABLE_FORMATS:
        raise ValueError(f"{path} has checkpoint format {ckpt.get('format')!r}; this fuxi-linear reads formats "
                         f"{READABLE_FORMATS} (a newer version wrote it?)")
    ckpt.setdefault("position", None)
    ckpt.setdefault("random_streams", None)
    if ckpt.get("model_name") == "fuxi-linear" and "ffn_multiply" not in ckpt.get("model_kwargs", {}):
        # written before the FFN width was recorded, when FuXi-Linear's default was 4 (it is 1 now, as released)
        ckpt["model_kwargs"] = dict(ckpt["model_kwargs"], ffn_multiply=4)
    return ckpt


def model_from_checkpoint(ckpt: Dict[str, Any], device: torch.device) -> torch.nn.Module:
    """The model of a loaded checkpoint, with its weights, on ``device``."""
    model = build_model(ckpt["model_name"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model_state"])
    return model.to(device)


def save_checkpoint(ckpt: Dict[str, Any], path: str | os.PathLike) -> Path:
    """``torch.save`` to ``path`` through a synced temporary file, renamed into place (atomic and durable)."""
    path = atomic_write(path, lambda tmp: torch.save(ckpt, tmp),
                        before_replace=lambda tmp: crash_point("checkpoint.tmp_written"))
    crash_point("checkpoint.saved")
    return path


@dataclass
class CheckpointCosts:
    """What writing ``last.pt`` has cost a run: writes, seconds (building the dict, serialising, syncing,
    renaming), the slowest write and the file's size (``metrics.json`` ``"checkpoints"``)."""

    writes: int = 0
    seconds: float = 0.0
    max_seconds: float = 0.0
    last_seconds: float = 0.0
    last_bytes: int = 0

    def add(self, began: float, path: Path) -> tuple:
        """Count a write that began at ``time.perf_counter()`` value ``began``; returns ``(seconds, bytes)``."""
        seconds = time.perf_counter() - began
        self.writes += 1
        self.seconds += seconds
        self.max_seconds = max(self.max_seconds, seconds)
        self.last_seconds, self.last_bytes = seconds, path.stat().st_size
        return seconds, self.last_bytes

    def to_dict(self) -> Dict[str, Any]:
        return {"writes": self.writes, "seconds": round(self.seconds, 4), "max_seconds": round(self.max_seconds, 4),
                "mean_seconds": round(self.seconds / self.writes, 4) if self.writes else None,
                "bytes": self.last_bytes}


def remove_stale_temporaries(folder: str | os.PathLike) -> List[Path]:
    """Delete the temporary files (``.NAME.PID.tmp``) that writes killed mid-way left in a run's folder;
    returns them. Only for a folder that no other live run writes to."""
    stale = [p for p in Path(folder).glob(".*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a checkpoint file (the best epoch is ``last.pt`` copied, not serialised twice), atomically."""
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def check_resume_scale(ckpt: Dict[str, Any], resume: str, world_size: int, global_batch_size: int) -> None:
    """A run may resume on another number of processes only with the same global batch (the data order and the
    steps are then those of the interrupted run); inside an epoch, only with the same global batch at all (the
    position counts global batches of the epoch's order)."""
    prev_world = int(ckpt.get("world_size", 1))
    prev_global = ckpt.get("global_batch_size", ckpt["train_config"].get("batch_size"))
    if ckpt.get("position") is not None and prev_global != global_batch_size:
        raise ValueError(
            f"checkpoint {resume} was written inside epoch {ckpt['position']['epoch'] + 1} with a global batch of "
            f"{prev_global}; resuming there needs the same global batch, got {global_batch_size}. Pass "
            f"--global-batch-size {prev_global}"
        )
    if prev_world != world_size and prev_global != global_batch_size:
        raise ValueError(
            f"checkpoint {resume} was trained by {prev_world} process(es) with a global batch of {prev_global}; "
            f"{world_size} process(es) with this --batch-size make a global batch of {global_batch_size}. Resume "
            f"with {prev_world} process(es), or pass --global-batch-size {prev_global}"
        )


__all__ = ["CHECKPOINT_FORMAT", "READABLE_FORMATS", "CheckpointCosts", "training_checkpoint", "save_checkpoint", "copy_checkpoint",
           "load_checkpoint", "model_from_checkpoint", "check_resume_scale", "remove_stale_temporaries"]
