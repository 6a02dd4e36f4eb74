"""Data-parallel training through ``torchrun`` (``torch.distributed``): process group, deterministic sharding of
the global batch, sharded evaluation and the few collectives a run needs.

``torchrun --nproc_per_node N -m fuxi_linear train ...`` starts N processes with ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and ``MASTER_ADDR/PORT`` set; :func:`setup_distributed` joins them (NCCL on CUDA, one GPU per
process, ``cuda:LOCAL_RANK``; gloo on a CPU). Without those variables (or with ``WORLD_SIZE=1``) a run is a
single process and nothing here communicates.

Sharding: every epoch the examples are permuted by ``torch.randperm(n, seed + epoch)`` (the order a shuffled
single-process loader uses), cut into global batches of ``global_batch_size``, and each global batch is split
into ``world_size`` contiguous, near-equal shares (:func:`rank_share`). A rank whose share of a short last
batch is empty runs one example with weight 0, so that every rank takes part in every step's all-reduce.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist


def launched_world_size() -> int:
    """``WORLD_SIZE`` as set by torchrun (1 when the variable is absent)."""
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(value)
    except ValueError:
        raise ValueError(f"WORLD_SIZE must be an int (torchrun sets it), got {value!r}") from None
    if size < 1:
        raise ValueError(f"WORLD_SIZE must be >= 1, got {size}")
    return size


@dataclass
class DistributedContext:
    """Where this process stands: ``rank`` of ``world_size``, its ``device`` and the collective backend
    (None for a single process)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    backend: Optional[str] = None
    owns_group: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0: the only process that logs and writes files."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over ranks, in place (a no-op for one process)."""
        if self.active:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def all_gather_object(self, obj: Any) -> List[Any]:
        """Every rank's ``obj`` (picklable), in rank order."""
        if not self.active:
            return [obj]
        out: List[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def broadcast_module_state(self, module: torch.nn.Module) -> None:
        """Copy rank 0's parameters and buffers into every rank's ``module`` (in place)."""
        if self.active:
            for tensor in module.state_dict().values():
                dist.broadcast(tensor, src=0)

    def close(self, completed: bool = True) -> None:
        """Leave the process group this context created (a harness's group is left alone).

        ``completed``: the run ended normally on this rank, so every rank reaches this point; a barrier then
        lets no rank tear its connections down while a peer still finishes its last collective. After an
        error (peers may be dead or elsewhere) the group is destroyed without it. Callers drop their
        ``DistributedDataParallel`` wrappers first: the group (and its gloo threads) lives as long as anything
        holds it, and must be gone before the interpreter shuts down (see :func:`setup_distributed`).
        """
        if self.owns_group and dist.is_initialized():
            try:
                if completed and self.active:
                    dist.barrier()
            finally:
                gc.collect()  # anything of a DDP wrapper left in a reference cycle goes now, not at shutdown
                dist.destroy_process_group()
                self.owns_group = False


def _device_for_rank(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda":
        if not torch.cuda.is_available():
            raise ValueError("--device cuda was requested but CUDA is not available here")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(f"local rank {local_rank} has no GPU: this machine has {torch.cuda.device_count()}; "
                             "start at most that many processes per node (--nproc_per_node)")
        return torch.device("cuda", local_rank)
    raise ValueError(f"with torchrun, --device must be auto, cpu or cuda (each process takes cuda:LOCAL_RANK), "
                     f"got {name!r}")


def setup_distributed(device_name: str, resolve_single: Callable[[str], torch.device]) -> DistributedContext:
    """Join the torchrun process group when ``WORLD_SIZE > 1``; otherwise a single-process context on
    ``resolve_single(device_name)``. An already initialised group (e.g. a test harness) is reused, not closed."""
    world = launched_world_size()
    if world == 1 and not dist.is_initialized():
        return DistributedContext(device=resolve_single(device_name))
    if not dist.is_available():
        raise ValueError("WORLD_SIZE > 1 but this torch has no torch.distributed support")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = _device_for_rank(device_name, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    owns = False
    if not dist.is_initialized():
        # torch._dynamo (imported by DistributedDataParallel's constructor, and by torch.compile) keeps
        # references to the process groups that exist when it is first imported, for the whole process: the
        # group could then not be freed by destroy_process_group, its gloo threads ('pt_gloo_runloop',
        # 'gloo_tcp_loop') ran on into interpreter shutdown, and a process sometimes died there with "terminate
        # called without an active exception" after its run had finished. Imported before the group exists,
        # dynamo holds none of it.
        import torch._dynamo  # noqa: F401

        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend)
        owns = True
    return DistributedContext(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank,
                              device=device, backend=dist.get_backend(), owns_group=owns)


def global_batches(num_examples: int, global_batch_size: int, seed: int, epoch: int) -> List[np.ndarray]:
    """The epoch's global batches: ``randperm(num_examples)`` seeded with ``seed + epoch``, cut into runs of
    ``global_batch_size`` (the last may be shorter). int64 arrays of example indices."""
    generator = torch.Generator().manual_seed(int(seed) + int(epoch))
    order = torch.randperm(num_examples, generator=generator).numpy()
    return [order[i:i + global_batch_size] for i in range(0, num_examples, global_batch_size)]


def rank_share(batch: np.ndarray, rank: int, world_size: int) -> np.ndarray:
    """Rank ``rank``'s contiguous share of a global batch: sizes differ by at most one, lower ranks first."""
    return np.array_split(batch, world_size)[rank]


def shard_range(num_examples: int, rank: int, world_size: int) -> Tuple[int, int]:
    """``[lo, hi)`` of the examples rank ``rank`` evaluates (contiguous, near-equal)."""
    bounds = np.linspace(0, num_examples, world_size + 1).round().astype(np.int64)
    return int(bounds[rank]), int(bounds[rank + 1])


def combine_metrics(per_rank: Sequence[Optional[Dict[str, float]]]) -> Dict[str, float]:
    """Example-weighted mean of per-shard metrics (each with ``num_examples``); shards with no examples are None.
    Equal to the metrics of the whole set up to float rounding (every metric is a mean over examples)."""
    shards = [m for m in per_rank if m is not None]
    if not shards:
        raise ValueError("no rank evaluated any example")
    if len(shards) == 1:
        return dict(shards[0])
    total = sum(m["num_examples"] for m in shards)
    out = {k: sum(m[k] * m["num_examples"] for m in shards) / total for k in shards[0] if k != "num_examples"}
    out["num_examples"] = float(total)
    return out
