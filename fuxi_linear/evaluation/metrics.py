"""Full-catalogue ranking metrics for next-item prediction.

Conventions:

* Item ids are ``1 .. N-1``; column 0 of a score matrix is the padding item
  and is never ranked.
* The rank of the target is ``1 + #(items with a strictly greater score)``
  among the non-excluded items. Ties are thus resolved in the target's favour
  (optimistic rank); with continuous scores ties practically never occur, and
  a constant model gets rank 1 for every target, which is easy to spot.
* ``NDCG@k = 1 / log2(rank + 1)`` if ``rank <= k`` else 0 (one relevant
  item, so IDCG = 1); ``HR@k = [rank <= k]``; ``MRR = mean(1 / rank)``. With
  ``mrr_cap = c`` ranks beyond ``c`` count as ``c + 1`` for MRR only, the
  convention of the FuXi papers (``c = 2500``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Optional, Union

import numpy as np
import torch

__all__ = [
    "evaluate_full_ranking",
    "pad_exclusions",
    "rank_of_target",
    "rank_of_target_chunked",
    "ranking_metrics",
    "resolve_exclude_history",
]

ExcludeSpec = Optional[Union[torch.Tensor, Sequence[Union[torch.Tensor, np.ndarray, Sequence[int]]]]]


def pad_exclusions(
    exclude: Sequence[torch.Tensor | np.ndarray | Sequence[int]],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Stack per-row lists of item ids into a ``(B, T)`` int64 tensor padded with 0."""
    rows = [torch.as_tensor(np.asarray(e) if not isinstance(e, torch.Tensor) else e) for e in exclude]
    for i, r in enumerate(rows):
        if r.ndim != 1:
            raise ValueError(f"exclude[{i}] must be 1-D, got shape {tuple(r.shape)}")
        if r.numel() and (r.dtype.is_floating_point or r.dtype == torch.bool or r.is_complex()):
            raise TypeError(f"exclude[{i}] must hold integer item ids, got {r.dtype}")
    width = max([1] + [r.numel() for r in rows])
    out = torch.zeros(len(rows), width, dtype=torch.int64, device=device)
    for i, r in enumerate(rows):
        out[i, : r.numel()] = r.to(device=out.device, dtype=torch.int64)
    return out


def _exclusion_tensor(exclude: ExcludeSpec, batch: int, device: torch.device) -> torch.Tensor | None:
    if exclude is None:
        return None
    if isinstance(exclude, torch.Tensor):
        if exclude.ndim != 2 or exclude.shape[0] != batch:
            raise ValueError(
                f"exclude must be a (B={batch}, T) tensor padded with 0, got shape {tuple(exclude.shape)}"
            )
        if exclude.dtype.is_floating_point or exclude.dtype == torch.bool:
            raise TypeError(f"exclude must hold integer item ids, got {exclude.dtype}")
        return exclude.to(device=device, dtype=torch.int64)
    if len(exclude) != batch:
        raise ValueError(f"exclude must have one entry per row (B={batch}), got {len(exclude)}")
    return pad_exclusions(exclude, device=device)


def _check_targets(target_ids: torch.Tensor, batch: int, num_items: int) -> torch.Tensor:
    target_ids = torch.as_tensor(target_ids)
    if target_ids.shape != (batch,):
        raise ValueError(f"target_ids must have shape ({batch},), got {tuple(target_ids.shape)}")
    if target_ids.dtype.is_floating_point or target_ids.dtype == torch.bool:
        raise TypeError(f"target_ids must be integer item ids, got {target_ids.dtype}")
    if batch and (int(target_ids.min()) < 1 or int(target_ids.max()) >= num_items):
        raise ValueError(f"target_ids must lie in [1, {num_items - 1}] (0 is padding)")
    return target_ids.to(torch.int64)


def _excluded_mask(excl: torch.Tensor, lo: int, hi: int, targets: torch.Tensor) -> torch.Tensor:
    """``(B, hi - lo)`` bool: item ``lo + j`` is excluded for row b (target never is)."""
    width = hi - lo
    inside = (excl >= lo) & (excl < hi) & (excl != 0) & (excl != targets[:, None])
    cols = (excl - lo).clamp(0, width - 1)
    # scatter_add instead of scatter: rows may list positions that collide with
    # clamped out-of-range ids, and add (unlike overwrite) keeps every hit.
    hits = torch.zeros(excl.shape[0], width, dtype=torch.int32, device=excl.device)
    hits.scatter_add_(1, cols, inside.to(torch.int32))
    return hits > 0


def rank_of_target(
    scores: torch.Tensor,
    target_ids: torch.Tensor,
    exclude: ExcludeSpec = None,
    exclude_history: bool = True,
) -> torch.Tensor:
    """Exact 1-based rank of each target among all items ``1..N-1``.

    Args:
        scores: ``(B, N)`` float scores; column 0 (padding) is ignored.
        target_ids: ``(B,)`` int item ids in ``[1, N)``.
        exclude: items to remove from the ranking (e.g. already seen items):
            a ``(B, T)`` int tensor padded with 0 or a list of ``B`` 1-D int
            tensors/arrays. The target itself is never excluded.
        exclude_history: apply ``exclude`` (False ignores it).

    Returns:
        ``(B,)`` int64 ranks ``1 + #(non-excluded items with a strictly
        greater score than the target)``.
    """
    if not isinstance(scores, torch.Tensor) or scores.ndim != 2:
        raise ValueError(f"scores must be a 2-D (B, N) tensor, got {type(scores).__name__} "
                         f"{tuple(getattr(scores, 'shape', ()))}")
    if not scores.dtype.is_floating_point:
        raise TypeError(f"scores must be a floating point tensor, got {scores.dtype}")
    b, n = scores.shape
    if n < 2:
        raise ValueError(f"scores needs at least 2 columns (padding + one item), got {n}")
    if torch.isnan(scores).any():
        raise ValueError("scores contains NaN")
    targets = _check_targets(target_ids, b, n).to(scores.device)
    s = scores.clone()
    s[:, 0] = -math.inf
    excl = _exclusion_tensor(exclude, b, scores.device) if exclude_history else None
    if excl is not None:
        s.masked_fill_(_excluded_mask(excl, 0, n, targets), -math.inf)
    target_scores = s.gather(1, targets[:, None])
    return (s > target_scores).sum(dim=1).to(torch.int64) + 1


def rank_of_target_chunked(
    user_vecs: torch.Tensor,
    item_embeddings: torch.Tensor,
    target_ids: torch.Tensor,
    exclude: ExcludeSpec = None,
    exclude_history: bool = True,
    *,
    chunk_size: int = 16384,
) -> torch.Tensor:
    """Ranks for dot-product scores without materialising the ``(B, N)`` matrix.

    Scores are ``user_vecs @ item_embeddings.T``; items are processed in
    chunks of ``chunk_size`` rows, counting per chunk the items that beat the
    target, so memory is ``O(B * chunk_size)``.

    The target's own score is computed once as a row-wise dot product and its
    own column is skipped in the counts, so float differences between that
    dot product and the chunked matmul can never make the target beat itself.

    Args:
        user_vecs: ``(B, D)`` float.
        item_embeddings: ``(N, D)`` float; row 0 is the padding item.
        target_ids: ``(B,)`` int in ``[1, N)``.
        exclude, exclude_history: as in :func:`rank_of_target`.
        chunk_size: items per chunk.

    Returns:
        ``(B,)`` int64 ranks (same tie convention as :func:`rank_of_target`).
    """
    if not isinstance(user_vecs, torch.Tensor) or user_vecs.ndim != 2:
        raise ValueError("user_vecs must be a 2-D (B, D) tensor")
    if not isinstance(item_embeddings, torch.Tensor) or item_embeddings.ndim != 2:
        raise ValueError("item_embeddings must be a 2-D (N, D) tensor")
    if user_vecs.shape[1] != item_embeddings.shape[1]:
        raise ValueError(
            f"user_vecs (B, D={user_vecs.shape[1]}) and item_embeddings (N, D={item_embeddings.shape[1]}) "
            "must share D"
        )
    if not (user_vecs.dtype.is_floating_point and item_embeddings.dtype.is_floating_point):
        raise TypeError("user_vecs and item_embeddings must be floating point")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}")
    b = user_vecs.shape[0]
    n = item_embeddings.shape[0]
    if n < 2:
        raise ValueError(f"item_embeddings needs at least 2 rows (padding + one item), got {n}")
    device = user_vecs.device
    item_embeddings = item_embeddings.to(device=device, dtype=user_vecs.dtype)
    targets = _check_targets(target_ids, b, n).to(device)
    target_scores = (user_vecs * item_embeddings[targets]).sum(dim=1, keepdim=True)
    if torch.isnan(target_scores).any():
        raise ValueError("scores contain NaN")
    excl = _exclusion_tensor(exclude, b, device) if exclude_history else None
    greater = torch.zeros(b, dtype=torch.int64, device=device)
    for lo in range(0, n, chunk_size):
        hi = min(n, lo + chunk_size)
        chunk = user_vecs @ item_embeddings[lo:hi].T  # (B, hi - lo)
        if torch.isnan(chunk).any():
            raise ValueError("scores contain NaN")
        beats = chunk > target_scores
        if lo == 0:
            beats[:, 0] = False  # padding item
        in_chunk = (targets >= lo) & (targets < hi)
        if in_chunk.any():
            rows = in_chunk.nonzero(as_tuple=True)[0]
            beats[rows, targets[rows] - lo] = False
        if excl is not None:
            beats &= ~_excluded_mask(excl, lo, hi, targets)
        greater += beats.sum(dim=1)
    return greater + 1


def ranking_metrics(
    ranks: torch.Tensor | np.ndarray | Sequence[int],
    ks: Sequence[int] = (10, 50),
    mrr_cap: int | None = None,
) -> dict[str, float]:
    """Average NDCG@k, HR@k and MRR over 1-based ranks.

    Args:
        ranks: ``(M,)`` integer ranks ``>= 1``.
        ks: cut-offs.
        mrr_cap: if given, ranks ``> mrr_cap`` count as ``mrr_cap + 1`` for MRR.

    Returns:
        ``{"ndcg@k": ..., "hr@k": ... for k in ks, "mrr": ...}`` (Python floats).
    """
    r = ranks.detach().cpu().numpy() if isinstance(ranks, torch.Tensor) else np.asarray(ranks)
    if r.ndim != 1 or r.size == 0:
        raise ValueError(f"ranks must be a non-empty 1-D array, got shape {r.shape}")
    if not np.issubdtype(r.dtype, np.integer):
        raise TypeError(f"ranks must be integers, got dtype {r.dtype}")
    if r.min() < 1:
        raise ValueError("ranks must be >= 1")
    if isinstance(ks, (int, np.integer)):
        raise TypeError("ks must be a sequence of ints, e.g. (10, 50)")
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"ks must contain ints >= 1, got {k!r}")
    if mrr_cap is not None and (isinstance(mrr_cap, bool) or not isinstance(mrr_cap, (int, np.integer)) or mrr_cap < 1):
        raise ValueError(f"mrr_cap must be None or an int >= 1, got {mrr_cap!r}")
    r = r.astype(np.float64)
    out: dict[str, float] = {}
    for k in ks:
        hit = r <= k
        out[f"ndcg@{k}"] = float(np.mean(np.where(hit, 1.0 / np.log2(r + 1.0), 0.0)))
        out[f"hr@{k}"] = float(np.mean(hit))
    capped = r if mrr_cap is None else np.minimum(r, mrr_cap + 1)
    out["mrr"] = float(np.mean(1.0 / capped))
    return out


#: The batch key holding the items each ``exclude_history`` mode removes from the ranking.
_EXCLUSION_KEYS = {"all": "history_ids", "window": "item_ids", "none": None}


def resolve_exclude_history(exclude_history: bool | str) -> str:
    """``"all"``, ``"window"`` or ``"none"`` from a mode name or a bool (True: ``"all"``, False: ``"none"``)."""
    if isinstance(exclude_history, bool):
        return "all" if exclude_history else "none"
    if exclude_history not in _EXCLUSION_KEYS:
        raise ValueError(f"exclude_history must be one of {', '.join(map(repr, _EXCLUSION_KEYS))} or a bool, got "
                         f"{exclude_history!r}")
    return exclude_history


def evaluate_full_ranking(
    user_vectors_fn: Callable[[Mapping[str, torch.Tensor]], torch.Tensor],
    item_embeddings: torch.Tensor | Callable[[], torch.Tensor],
    batches: Iterable[Mapping[str, torch.Tensor]],
    *,
    ks: Sequence[int] = (10, 50),
    mrr_cap: int | None = None,
    exclude_history: bool | str = True,
    chunk_size: int = 16384,
    device: torch.device | str | None = None,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Evaluate a dot-product retrieval model over a loader of batches.

    Args:
        user_vectors_fn: maps a batch (keys from
            :func:`fuxi_linear.data.splits.collate_batch`, already on
            ``device``) to ``(B, D)`` user/query vectors.
        item_embeddings: ``(N, D)`` tensor (row 0 = padding) or a zero-argument
            callable returning it (called once, after the model is in eval
            mode, e.g. ``lambda: model.item_embedding.weight``).
        batches: iterable of batch dicts with ``target_ids (B,)`` and what
            ``exclude_history`` reads: ``history_ids (B, H)`` or the input
            window ``item_ids (B, T)``.
        ks, mrr_cap: forwarded to :func:`ranking_metrics`.
        exclude_history: which already-seen items leave the ranking (the
            target never does): ``"all"`` (or True) the whole history
            ``history_ids`` (SPEC §7), ``"window"`` the input window
            ``item_ids`` only (the released evaluation), ``"none"`` (or
            False) nothing.
        chunk_size: item chunk size of :func:`rank_of_target_chunked`.
        device: where to run; default: the device of the item embeddings.
        max_batches: stop after this many batches (quick validation).

    Returns:
        metrics of :func:`ranking_metrics` plus ``"num_examples"``.
    """
    mode = resolve_exclude_history(exclude_history)
    with torch.no_grad():
        items = item_embeddings() if callable(item_embeddings) else item_embeddings
        if not isinstance(items, torch.Tensor):
            raise TypeError("item_embeddings must be a tensor or a callable returning one")
        dev = torch.device(device) if device is not None else items.device
        items = items.to(dev)
        all_ranks: list[torch.Tensor] = []
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            if "target_ids" not in batch:
                raise ValueError("every batch must contain 'target_ids'")
            moved = {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
            user_vecs = user_vectors_fn(moved)
            key = _EXCLUSION_KEYS[mode]
            exclude = moved.get(key) if key is not None else None
            if key is not None and exclude is None:
                raise ValueError(f"exclude_history={exclude_history!r} needs {key!r} in every batch")
            ranks = rank_of_target_chunked(
                user_vecs.to(items.dtype),
                items,
                moved["target_ids"],
                exclude,
                key is not None,
                chunk_size=chunk_size,
            )
            all_ranks.append(ranks.cpu())
    if not all_ranks:
        raise ValueError("batches yielded no examples")
    ranks_all = torch.cat(all_ranks)
    result: dict[str, float] = ranking_metrics(ranks_all, ks=ks, mrr_cap=mrr_cap)
    result["num_examples"] = float(ranks_all.numel())
    return result
