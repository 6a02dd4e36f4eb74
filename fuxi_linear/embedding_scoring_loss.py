"""Retrieval pieces shared by every recommender here: L2-normalised vectors, the autoregressive targets and
the sampled-softmax loss of SPEC §6 (position i predicts item i+1; uniform negatives; tau = 0.05)."""
from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .history_inputs import check_item_ids
from .utils import check_int


def l2_normalize(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``x / max(||x||_2, eps)`` over the last dimension; zero rows stay zero. ``x: (..., D)``."""
    return x / x.norm(dim=-1, keepdim=True).clamp(min=eps)


def sampled_softmax_loss(
    user_vectors: torch.Tensor,
    positive_ids: torch.Tensor,
    item_vectors: torch.Tensor,
    num_negatives: int,
    temperature: float,
    generator: Optional[torch.Generator] = None,
    negative_ids: Optional[torch.Tensor] = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Sampled softmax with uniform negatives, independent of any model class.

    Each row's logits are ``[u·e_pos, u·e_neg_1, ..., u·e_neg_K] / temperature`` and the loss is the
    cross-entropy of the positive (column 0), averaged over rows. Negatives are drawn uniformly from
    ``1..N`` (row 0 of ``item_vectors`` is padding and is never drawn); a negative equal to the row's
    positive gets logit ``-inf`` so the positive never competes with itself.

    Args:
        user_vectors: ``(M, D)`` float, usually L2-normalised.
        positive_ids: ``(M,)`` int ids in ``[1, N]``.
        item_vectors: ``(N + 1, D)`` float, usually L2-normalised; row 0 = padding.
        num_negatives: K >= 1 negatives per row (sampled with replacement).
        temperature: tau > 0.
        generator: optional ``torch.Generator`` on the device of ``positive_ids`` for reproducible sampling.
        negative_ids: optional ``(M, K)`` int ids in ``[1, N]`` to use instead of drawing them (the training
            loop draws them as a function of the example, so that data-parallel runs match one process).
        reduction: ``"mean"`` over rows or ``"sum"``.
    Returns:
        scalar loss tensor.
    """
    if not isinstance(user_vectors, torch.Tensor) or not user_vectors.is_floating_point() or user_vectors.ndim != 2:
        raise TypeError(f"user_vectors must be a float tensor (M, D), got "
                        f"{getattr(user_vectors, 'dtype', type(user_vectors).__name__)} "
                        f"{tuple(getattr(user_vectors, 'shape', ()))}")
    if not isinstance(item_vectors, torch.Tensor) or not item_vectors.is_floating_point() or item_vectors.ndim != 2:
        raise TypeError("item_vectors must be a float tensor (N + 1, D)")
    M, D = user_vectors.shape
    if item_vectors.shape[1] != D or item_vectors.shape[0] < 2:
        raise ValueError(f"item_vectors must have shape (N + 1, D={D}) with N >= 1, got {tuple(item_vectors.shape)}")
    num_items = item_vectors.shape[0] - 1
    check_item_ids("positive_ids", positive_ids, 1, num_items, "(M,)")
    if positive_ids.shape[0] != M:
        raise ValueError(f"positive_ids must have shape (M,)=({M},) to match user_vectors, got "
                         f"{tuple(positive_ids.shape)}")
    if M == 0:
        raise ValueError("sampled_softmax_loss needs at least one row (M >= 1)")
    if int(positive_ids.min()) < 1:
        raise ValueError("positive_ids must be real items in [1, N], got padding id 0")
    check_int("num_negatives", num_negatives)
    if not isinstance(temperature, (int, float)) or isinstance(temperature, bool) or not temperature > 0:
        raise ValueError(f"temperature must be a number > 0, got {temperature!r}")
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")

    pos = positive_ids.long()
    if negative_ids is None:
        neg = torch.randint(1, num_items + 1, (M, num_negatives), device=pos.device, generator=generator)
    else:
        check_item_ids("negative_ids", negative_ids, 2, num_items, "(M, K)")
        if negative_ids.shape[0] != M or negative_ids.shape[1] < 1 or int(negative_ids.min()) < 1:
            raise ValueError(f"negative_ids must be real items in [1, N] of shape (M={M}, K >= 1), got shape "
                             f"{tuple(negative_ids.shape)}")
        neg = negative_ids.long()
    pos_logit = (user_vectors * item_vectors[pos]).sum(-1, keepdim=True)  # (M, 1)
    # (M, K): gathering K rows per user is O(M K D), cheaper than scoring the whole catalogue.
    neg_logit = torch.einsum("md,mkd->mk", user_vectors, item_vectors[neg])
    neg_logit = neg_logit.masked_fill(neg == pos[:, None], float("-inf"))
    logits = torch.cat([pos_logit, neg_logit], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros_like(pos), reduction=reduction)


def next_item_targets(
    item_ids: torch.Tensor, lengths: torch.Tensor, target_ids: Optional[torch.Tensor], num_items: int
) -> torch.Tensor:
    """Autoregressive targets ``(B, T)`` int64: position i predicts item i+1; a user's last event predicts
    ``target_ids[b]`` when given, else nothing; 0 = no target (padding or the last event without a target).

    Args:
        item_ids: ``(B, T)`` right-padded ids. lengths: ``(B,)``. target_ids: ``(B,)`` ids in [1, num_items] or None.
    """
    B, T = item_ids.shape
    targets = F.pad(item_ids[:, 1:].long(), (0, 1))  # shift left; the column past the end is padding
    last = (lengths.long() - 1)[:, None]
    fill = torch.zeros_like(last)
    if target_ids is not None:
        check_item_ids("target_ids", target_ids, 1, num_items, "(B,)")
        if tuple(target_ids.shape) != (B,):
            raise ValueError(f"target_ids must have shape (B,)=({B},), got {tuple(target_ids.shape)}")
        if B and int(target_ids.min()) < 1:
            raise ValueError("target_ids must be real items in [1, num_items], got padding id 0")
        fill = target_ids.long()[:, None].to(item_ids.device)
    # The id right after a history is padding (or garbage past the length): replace it by the target.
    return targets.scatter(1, last, fill)


class SequentialRetrievalMixin:
    """Input layer, item scoring and training loss shared by every sequential recommender here.

    The host ``nn.Module`` calls :meth:`_init_input_layer` in its ``__init__``, provides ``encode`` and a
    ``config`` with ``embedding_dim``, ``num_items``, ``temperature`` and ``num_negatives``.
    """

    def _init_input_layer(self, num_items: int, dim: int, num_positions: int, dropout: float) -> None:
        """Item table ``(num_items + 1, D)`` (normal, std 0.02, truncated at two standard deviations, as
        released), learned absolute positions ``(num_positions, D)`` (xavier normal), input dropout."""
        self.item_embedding = nn.Embedding(num_items + 1, dim)
        # trunc_normal_'s default bounds are +-2 in absolute value, i.e. 100 standard deviations: no truncation
        nn.init.trunc_normal_(self.item_embedding.weight, std=0.02, a=-0.04, b=0.04)
        self.position_embedding = nn.Embedding(num_positions, dim)
        nn.init.xavier_normal_(self.position_embedding.weight)
        self.input_dropout = nn.Dropout(dropout)

    def _embed(self, item_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """``sqrt(D) E_item[id] + P_abs[pos]``, dropout, zeroed at padding (id 0). ids and positions of
        broadcastable shapes ``S`` -> ``(*S, D)``."""
        x = math.sqrt(self.config.embedding_dim) * self.item_embedding(item_ids) + self.position_embedding(positions)
        return self.input_dropout(x) * (item_ids != 0).unsqueeze(-1).to(x.dtype)

    def item_vectors(self) -> torch.Tensor:
        """L2-normalised item embeddings ``(num_items + 1, D)`` (row 0 is padding)."""
        return l2_normalize(self.item_embedding.weight)

    def score(self, user_vectors: torch.Tensor) -> torch.Tensor:
        """Scores of every item, ``(B, num_items + 1)``: dot products with normalised items over tau."""
        return user_vectors @ self.item_vectors().t() / self.config.temperature

    def loss(
        self,
        item_ids: torch.Tensor,
        timestamps: torch.Tensor,
        lengths: torch.Tensor,
        query_timestamps: torch.Tensor,
        target_ids: Optional[torch.Tensor] = None,
        num_negatives: Optional[int] = None,
        generator: Optional[torch.Generator] = None,
    ) -> torch.Tensor:
        """Autoregressive sampled softmax (SPEC §6): position i predicts item i+1; the last event predicts
        ``target_ids (B,)`` when given (the event at ``query_timestamps``). ``num_negatives`` uniform negatives
        per position (default from the config); a negative equal to the positive is masked out. Returns the
        mean over predicted positions."""
        y = self.encode(item_ids, timestamps, lengths, query_timestamps)
        targets = next_item_targets(item_ids, lengths, target_ids, self.config.num_items)
        mask = targets != 0
        if not bool(mask.any()):
            raise ValueError("loss needs at least one position with a next item (a history of 2+ events or target_ids)")
        n_neg = self.config.num_negatives if num_negatives is None else num_negatives
        return sampled_softmax_loss(y[mask], targets[mask], self.item_vectors(), n_neg, self.config.temperature,
                                    generator)
