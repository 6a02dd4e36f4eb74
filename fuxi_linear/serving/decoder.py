"""A serving loop for FuXi-Linear: a pool of decode states, users admitted into and evicted from its rows,
and decode steps for any batch of users -- replayed from CUDA graphs on a GPU.

:class:`Decoder` owns one :class:`~fuxi_linear.DecodeState` of ``max_users`` rows (plus a few scratch rows,
below). ``admit`` prefills users' histories and writes their states into free rows; ``evict`` frees rows;
``step`` appends one event to each of a batch of users and returns their user vectors, updating their rows
in place (``FuXiLinear.step`` with ``state_indices``: the other rows are not touched, nothing is gathered or
scattered).

On CUDA a step of n users runs in the smallest batch-size *bucket* >= n (powers of two up to ``max_users``):
the inputs are copied into the bucket's static buffers, padded with scratch rows (distinct rows past
``max_users``, reset after every step), and the bucket's CUDA graph -- captured on its first use -- is
replayed: one launch for the whole step instead of a few hundred. Eager CUDA (``use_cuda_graphs=False``) runs
the same padded bucket without a graph, so both give identical results. On a CPU the step runs eagerly on
exactly n users.

Checks: users (unknown, evicted, repeated in one step, admitted twice, beyond capacity) and positions
(beyond the model's tables) are checked on the host from the decoder's own bookkeeping, at no cost to the
device. The events' values are checked as ``FuXiLinear.step`` does (``validate``): inputs given as CPU
tensors on the host (clear ``ValueError``); CUDA tensors with ``validate=True`` as device-side asserts (no
host synchronisation).

A graph replays the weights it was captured with; the decoder notices changed parameters (in-place updates,
``load_state_dict``, replaced parameters) before each step and recaptures.

Durability: ``save(DIR)`` writes a snapshot of the admitted users (their states, rows, positions and last
event times, the free rows) next to the model's fingerprint, and ``Decoder.load(DIR, model)`` restores it --
a restarted server continues every user without prefilling their histories again. A crash during a save
leaves the previous snapshot loadable (:mod:`fuxi_linear.serving.snapshots`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Hashable, List, Optional, Sequence, Union

import torch

from ..decoding.decode_state import DecodeState
from ..decoding.fingerprint import check_fingerprint, model_fingerprint
from ..history_inputs import check_step_events
from ..model import FuXiLinear
from ..ops.value_checks import ValueChecks, resolve_value_check_mode
from .snapshots import read_snapshot, write_snapshot
from ..utils import check_int

__all__ = ["Decoder", "batch_buckets"]


def _storable(user: object) -> bool:
    """A user id a snapshot can store and load back as the same value (``torch.load(weights_only=True)``)."""
    if user is None or isinstance(user, (str, int, float, bool)):
        return True
    return isinstance(user, tuple) and all(_storable(u) for u in user)


def batch_buckets(max_users: int) -> List[int]:
    """Batch sizes a :class:`Decoder` pads a step to on CUDA: powers of two below ``max_users``, then
    ``max_users`` itself (so any n pads by less than a factor of two, and at most ~log2 graphs exist)."""
    buckets, b = [], 1
    while b < max_users:
        buckets.append(b)
        b *= 2
    return buckets + [max_users]


class _BucketRunner:
    """Static inputs and output of one bucket size, and (on CUDA, once captured) its graph."""

    def __init__(self, decoder: "Decoder", size: int):
        self.decoder, self.size = decoder, size
        # rows, item ids, timestamps, query timestamps (written before every run), and their host-side copy:
        # pinned on CUDA so that one asynchronous copy moves them, contiguous so that it stays one copy
        cuda = decoder.device.type == "cuda"
        self.inputs = torch.zeros(4, size, dtype=torch.int64, device=decoder.device)
        self.staging = torch.zeros(4, size, dtype=torch.int64, pin_memory=cuda)
        self.copied: Optional[torch.cuda.Event] = None  # recorded after the last copy out of ``staging``
        self.graph: Optional[torch.cuda.CUDAGraph] = None
        self.output: Optional[torch.Tensor] = None

    def run(self) -> torch.Tensor:
        d = self.decoder
        rows, items, ts, qts = self.inputs
        user, _ = d.model.step(d.pool, items, ts, qts, state_indices=rows, validate=False)
        d._reset_scratch()
        return user

    def capture(self) -> None:
        """Warm up (Triton compilation, cuBLAS, the step caches) on a throw-away pool of the bucket's size --
        warm-up runs for real, and the pool's rows belong to users -- then capture; capturing runs nothing."""
        d = self.decoder
        scratch_pool = d.model.empty_state(self.size, d.device)
        rows = torch.arange(self.size, device=d.device)
        ones = torch.ones(self.size, dtype=torch.int64, device=d.device)
        side = torch.cuda.Stream(device=d.device)
        side.wait_stream(torch.cuda.current_stream(d.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                d.model.step(scratch_pool, ones, ones * 0, ones * 0, state_indices=rows, validate=False)
        torch.cuda.current_stream(d.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=d._graph_pool):
            self.output = self.run()


class Decoder:
    """Admit, evict and step users of one :class:`~fuxi_linear.FuXiLinear` model over a state pool.

    Args:
        model: the model, in eval mode, on ``device``.
        max_users: rows of the pool (users served at once).
        device: where the pool lives (default: the model's device).
        use_cuda_graphs: replay a captured CUDA graph per batch-size bucket (default: True on CUDA; not
            available on a CPU).
        validate: how ``step`` checks the events' values (see ``FuXiLinear.step``); users, rows and positions
            are always checked on the host.
        pad_to_buckets: run every step at its bucket's batch size (default: on CUDA, where graphs need it and
            eager steps then match them bit for bit; a CPU can use it to test the padding).

    ``admit(users, item_ids, timestamps, lengths, query_timestamps)`` takes histories as ``FuXiLinear.prefill``
    does, one per user id (any hashable). ``step(users, item_ids, timestamps, query_timestamps)`` takes one new
    event per user: ``(n,)`` tensors on the CPU or on ``device``. Both return the users' vectors ``(n, D)``.
    """

    def __init__(self, model: FuXiLinear, max_users: int, device: Union[str, torch.device, None] = None,
                 use_cuda_graphs: Optional[bool] = None, validate: Union[bool, str] = True,
                 pad_to_buckets: Optional[bool] = None):
        if not isinstance(model, FuXiLinear):
            raise TypeError(f"model must be a FuXiLinear, got {type(model).__name__}")
        if model.training:
            raise ValueError("model must be in eval mode (model.eval()): the decoder serves, it does not train")
        check_int("max_users", max_users)
        model_device = next(model.parameters()).device
        self.device = model_device if device is None else torch.device(device)
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        if self.device != model_device:
            raise ValueError(f"the model is on {model_device}, the decoder's device is {self.device}: move the model")
        if use_cuda_graphs is None:
            use_cuda_graphs = self.device.type == "cuda"
        if use_cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"use_cuda_graphs=True needs a CUDA device, got {self.device}")
        if pad_to_buckets is None:
            pad_to_buckets = self.device.type == "cuda"
        if use_cuda_graphs and not pad_to_buckets:
            raise ValueError("use_cuda_graphs=True needs pad_to_buckets=True (a graph has one batch size)")
        resolve_value_check_mode(validate, self.device)  # a bad value fails here, not at the first step
        self.model, self.max_users, self.validate = model, max_users, validate
        self.use_cuda_graphs = bool(use_cuda_graphs)
        self.buckets = batch_buckets(max_users)
        self._padded = bool(pad_to_buckets)
        # padding of a bucket step needs (bucket - n) distinct scratch rows: at most b - (previous b + 1)
        scratch = max([b - (a + 1) for a, b in zip([0] + self.buckets[:-1], self.buckets)] + [0]) if self._padded else 0
        self.num_scratch_rows = scratch
        self.pool: DecodeState = model.empty_state(max_users + scratch, self.device)
        self._free: List[int] = list(range(max_users - 1, -1, -1))  # a stack: row 0 is handed out first
        self._rows: Dict[Hashable, int] = {}
        self._positions: Dict[Hashable, int] = {}
        self._runners: Dict[int, _BucketRunner] = {}
        self._graph_pool = torch.cuda.graph_pool_handle() if self.use_cuda_graphs else None
        self._weights_key = None

    # ------------------------------------------------------------------ bookkeeping
    @property
    def users(self) -> List[Hashable]:
        """Admitted users, in admission order."""
        return list(self._rows)

    @property
    def num_free_rows(self) -> int:
        return len(self._free)

    def row_of(self, user: Hashable) -> int:
        """The pool row holding ``user``'s state."""
        if user not in self._rows:
            raise ValueError(f"unknown user {user!r}: not admitted, or evicted")
        return self._rows[user]

    def position_of(self, user: Hashable) -> int:
        """Events ``user`` has seen (the position of its next event)."""
        self.row_of(user)
        return self._positions[user]

    def state_of(self, users: Sequence[Hashable]) -> DecodeState:
        """A copy of the given users' states (``DecodeState.select`` of their rows)."""
        rows = [self.row_of(u) for u in users]
        return self.pool.select(torch.tensor(rows, dtype=torch.int64, device=self.device))  # [] stays an int index

    @staticmethod
    def _user_list(users: Sequence[Hashable], what: str) -> List[Hashable]:
        if isinstance(users, (str, bytes)) or not isinstance(users, Sequence):
            raise TypeError(f"users must be a sequence of user ids, got {type(users).__name__}")
        users = list(users)
        seen = set()
        repeated = [u for u in users if u in seen or seen.add(u)]
        if repeated:
            raise ValueError(f"duplicate users in one {what}: {repeated!r}")
        return users

    # ------------------------------------------------------------------ admit / evict
    def admit(self, users: Sequence[Hashable], item_ids: torch.Tensor, timestamps: torch.Tensor,
              lengths: torch.Tensor, query_timestamps: torch.Tensor) -> torch.Tensor:
        """Prefill the users' histories (as ``FuXiLinear.prefill``: ``(B, T)`` right-padded ids and int64
        times, ``(B,)`` lengths and request times) into free rows; returns their user vectors ``(B, D)``."""
        users = self._user_list(users, "admit")
        again = [u for u in users if u in self._rows]
        if again:
            raise ValueError(f"users already admitted: {again!r} (evict them first to start over)")
        if len(users) > len(self._free):
            raise ValueError(f"cannot admit {len(users)} users: {len(self._free)} of max_users={self.max_users} "
                             f"rows are free; evict users first")
        if not isinstance(item_ids, torch.Tensor) or item_ids.ndim != 2 or item_ids.shape[0] != len(users):
            raise ValueError(f"item_ids must be a (B, T) tensor with B={len(users)} rows (one per user), got "
                             f"{tuple(getattr(item_ids, 'shape', ()))}")
        args = [t.to(self.device) if isinstance(t, torch.Tensor) else t
                for t in (item_ids, timestamps, lengths, query_timestamps)]
        with torch.no_grad():
            user_vectors, state = self.model.prefill(*args)
        rows = [self._free.pop() for _ in users]
        self.pool.write_rows(torch.tensor(rows, device=self.device), state)
        for u, r, n in zip(users, rows, lengths.tolist()):
            self._rows[u], self._positions[u] = r, int(n)
        return user_vectors

    def evict(self, users: Sequence[Hashable]) -> None:
        """Free the users' rows (their states are dropped; the rows are reused by later admissions)."""
        users = self._user_list(users, "evict")
        unknown = [u for u in users if u not in self._rows]
        if unknown:
            raise ValueError(f"cannot evict unknown users {unknown!r}: not admitted, or already evicted")
        for u in users:
            self._free.append(self._rows.pop(u))
            del self._positions[u]

    # ------------------------------------------------------------------ durability
    def save(self, directory: Union[str, os.PathLike], keep: int = 1) -> Path:
        """Snapshot the admitted users into ``directory`` (created if needed) and return the snapshot's folder.

        Written: each admitted user's state (all channels, last event time, position), the user -> row map in
        admission order, the free rows in the order they will be handed out, and the model's fingerprint. The
        new snapshot becomes current atomically, after it is complete and synced, so a crash during a save
        leaves the previous snapshot loadable; ``keep`` newest snapshots are kept. User ids must be str, int,
        float, bool, None or tuples of them (what a snapshot can store without running code on load).
        """
        check_int("keep", keep)
        users = self.users
        bad = [u for u in users if not _storable(u)]
        if bad:
            raise TypeError(f"cannot save users {bad[:5]!r}: a snapshot stores user ids that are str, int, float, "
                            f"bool, None or tuples of them")
        rows = [self._rows[u] for u in users]
        manifest = {"fingerprint": model_fingerprint(self.model), "max_users": self.max_users, "users": users,
                    "rows": rows, "positions": [self._positions[u] for u in users], "free": list(self._free)}
        state = self.pool.select(torch.tensor(rows, dtype=torch.int64, device=self.device))  # no users: 0 rows
        return write_snapshot(directory, manifest, state, keep=keep)

    @classmethod
    def load(cls, directory: Union[str, os.PathLike], model: FuXiLinear, max_users: Optional[int] = None,
             device: Union[str, torch.device, None] = None, check_model: bool = True, **kwargs) -> "Decoder":
        """A decoder serving the users of ``directory``'s current snapshot (:meth:`save`), on ``model``.

        The snapshot must come from a model with the same weights and configuration (its fingerprint), else
        ``ValueError`` -- unless ``check_model=False``. ``max_users`` (default: the saved one) may be changed
        as long as every saved user fits; with the saved size each user gets its saved row back and the free
        rows are handed out in the saved order (the restored decoder then behaves exactly as the saved one
        would have). ``kwargs``: the other :class:`Decoder` arguments. A missing, truncated or foreign file is
        a clear error naming it.
        """
        if not isinstance(model, FuXiLinear):
            raise TypeError(f"model must be a FuXiLinear, got {type(model).__name__}")
        manifest, state, folder = read_snapshot(directory)
        check_fingerprint(manifest["fingerprint"], model, f"decoder snapshot {folder}", check_model)
        users, n = manifest["users"], len(manifest["users"])
        size = manifest["max_users"] if max_users is None else max_users
        check_int("max_users", size)
        if n > size:
            raise ValueError(f"the snapshot {folder} holds {n} users, more than max_users={size}")
        decoder = cls(model, size, device=device, **kwargs)
        if size == manifest["max_users"]:
            rows, free = list(manifest["rows"]), list(manifest["free"])
            if sorted(rows + free) != list(range(size)):
                raise ValueError(f"{folder / 'manifest.pt'} is inconsistent: its rows and free rows do not "
                                 f"cover 0..{size - 1} once each")
        else:  # another size: the users in admission order in the first rows
            rows, free = list(range(n)), list(range(size - 1, n - 1, -1))
        decoder.pool.write_rows(torch.tensor(rows, dtype=torch.int64, device=decoder.device), state)
        decoder._free = free
        decoder._rows = dict(zip(users, rows))
        decoder._positions = dict(zip(users, (int(p) for p in manifest["positions"])))
        return decoder

    # ------------------------------------------------------------------ step
    def step(self, users: Sequence[Hashable], item_ids: torch.Tensor, timestamps: torch.Tensor,
             query_timestamps: torch.Tensor) -> torch.Tensor:
        """One new event per user (``(n,)`` item ids, int64 times, int64 request times, on the CPU or on the
        decoder's device); returns the users' vectors ``(n, D)`` and advances their rows in place."""
        users = self._user_list(users, "step")
        unknown = [u for u in users if u not in self._rows]
        if unknown:
            raise ValueError(f"cannot step unknown users {unknown!r}: not admitted, or evicted")
        n = len(users)
        limit = self.model.config.max_positions
        full = [u for u in users if self._positions[u] >= limit]
        if full:
            raise ValueError(f"users {full!r} would reach position {limit}, beyond the model's position tables "
                             f"({limit} positions): evict and re-admit their most recent events")
        on = {t.device for t in (item_ids, timestamps, query_timestamps) if isinstance(t, torch.Tensor)}
        where = on.pop() if len(on) == 1 else self.device
        mode = resolve_value_check_mode(self.validate, where)
        if mode is not None:
            checks = ValueChecks()
            check_step_events(item_ids, timestamps, query_timestamps, n, self.model.config.num_items, "step", where,
                              checks)
            checks.run(mode)
        if n == 0:
            return torch.zeros(0, self.model.config.embedding_dim, device=self.device)
        rows = [self._rows[u] for u in users]
        out = self._step_padded(rows, item_ids, timestamps, query_timestamps) if self._padded else \
            self._step_exact(rows, item_ids, timestamps, query_timestamps)
        for u in users:
            self._positions[u] += 1
        return out

    def _step_exact(self, rows, item_ids, timestamps, query_timestamps) -> torch.Tensor:
        dev = self.device
        user, _ = self.model.step(self.pool, item_ids.to(dev), timestamps.to(dev), query_timestamps.to(dev),
                                  state_indices=torch.tensor(rows, device=dev), validate=False)
        return user

    def _step_padded(self, rows, item_ids, timestamps, query_timestamps) -> torch.Tensor:
        n = len(rows)
        size = next(b for b in self.buckets if b >= n)
        self._check_weights()
        runner = self._runners.get(size)
        if runner is None:
            runner = self._runners[size] = _BucketRunner(self, size)
        # the host-side part (rows, and inputs given on the CPU) goes through the bucket's pinned staging buffer
        # and one asynchronous copy; the buffer is rewritten only after the previous copy out of it has finished
        if runner.copied is not None:
            runner.copied.synchronize()
        stage = runner.staging
        stage[0, :n] = torch.tensor(rows, dtype=torch.int64)
        stage[0, n:] = torch.arange(self.max_users, self.max_users + size - n)
        on_device = []
        for i, t in enumerate((item_ids, timestamps, query_timestamps), start=1):
            if t.device.type == "cpu":
                stage[i, :n] = t
            else:
                on_device.append((i, t))
            stage[i, n:] = 1 if i == 1 else 0  # padding: a real item id, time 0
        runner.inputs.copy_(stage, non_blocking=True)
        if self.device.type == "cuda":
            runner.copied = torch.cuda.Event()
            runner.copied.record()
        for i, t in on_device:
            runner.inputs[i, :n].copy_(t)
        if self.use_cuda_graphs:
            if runner.graph is None:
                runner.capture()
            runner.graph.replay()
            return runner.output[:n].clone()
        return runner.run()[:n]

    def _reset_scratch(self) -> None:
        """Scratch rows start every step at zero (their positions never run past the tables)."""
        first = self.max_users
        for t in (self.pool.retention, self.pool.temporal, self.pool.positional):
            t[:, first:].zero_()
        self.pool.last_timestamp[first:].zero_()
        self.pool.position[first:].zero_()

    def _check_weights(self) -> None:
        """Drop the captured graphs when the model's step operands were rebuilt since they were captured (a
        parameter or buffer changed: :meth:`fuxi_linear.FuXiLinear.step_operands` caches them until then, and
        the graphs read the operands' memory)."""
        if not self.use_cuda_graphs:
            return
        key = self.model.step_operands()
        if key is not self._weights_key:
            self._runners.clear()
            self._weights_key = key
