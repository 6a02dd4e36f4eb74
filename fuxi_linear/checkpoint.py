"""Training checkpoints, the files ``fuxi-linear train`` writes (``DIR/checkpoint.pt``, ``DIR/last.pt``):
the model's name, constructor arguments and weights, the optimizer state, the epoch, step and history, the
:class:`fuxi_linear.training_config.TrainConfig` and the scale of the run. (The paper's released checkpoints
are imported by :mod:`fuxi_linear.compat`.)

Files are written to a temporary name and renamed (:func:`fuxi_linear.utils.atomic_write`), so an interrupted
run never leaves a half-written checkpoint.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .registry import build_model
from .utils import atomic_write

#: Version of the checkpoint layout (``ckpt["format"]``).
CHECKPOINT_FORMAT = 1


def training_checkpoint(model: torch.nn.Module, optimizer: torch.optim.Optimizer, cfg, kwargs: Dict[str, Any],
                        epoch: int, best: Optional[Dict[str, Any]], history: List[Dict[str, Any]], step: int,
                        world_size: int, global_batch_size: int) -> Dict[str, Any]:
    """The checkpoint of a run after ``epoch`` (0-based) and ``step`` optimizer steps; ``cfg`` is its
    ``TrainConfig``, ``kwargs`` the model's constructor arguments, ``best`` the best validation metrics so far."""
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
    """``torch.save`` to ``path`` through a temporary file (atomic)."""
    return atomic_write(path, lambda tmp: torch.save(ckpt, tmp))


def copy_checkpoint(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Copy a checkpoint file (the best epoch is ``last.pt`` copied, not serialised twice), atomically."""
    return atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))


def check_resume_scale(ckpt: Dict[str, Any], resume: str, world_size: int, global_batch_size: int) -> None:
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


__all__ = ["CHECKPOINT_FORMAT", "training_checkpoint", "save_checkpoint", "copy_checkpoint", "load_checkpoint",
           "model_from_checkpoint", "check_resume_scale"]
