"""Ranking metrics with hand-computed ranks and values."""

import math

import numpy as np
import pytest
import torch

from fuxi_linear.evaluation.metrics import (
    evaluate_full_ranking,
    rank_of_target,
    rank_of_target_chunked,
    ranking_metrics,
)


def test_rank_hand_computed():
    scores = torch.tensor(
        [
            # col 0 = padding (huge score must not count)
            [9.0, 0.1, 0.5, 0.3, 0.9, 0.2],
            [9.0, 0.4, 0.4, 0.4, 0.1, 0.0],
        ]
    )
    # Row 0: target 3 (0.3): items 2 (0.5) and 4 (0.9) are greater -> rank 3.
    # Row 1: target 2 (0.4): ties with items 1 and 3 do not count -> rank 1.
    assert rank_of_target(scores, torch.tensor([3, 2])).tolist() == [3, 1]
    # Excluding item 4 in row 0 (seen) -> rank 2; excluding the target itself has no effect.
    excl = torch.tensor([[4, 3, 0], [2, 0, 0]])
    assert rank_of_target(scores, torch.tensor([3, 2]), excl).tolist() == [2, 1]
    # List form, and exclude_history=False ignores it.
    assert rank_of_target(scores, torch.tensor([3, 2]), [torch.tensor([4, 2]), torch.tensor([], dtype=torch.int64)]).tolist() == [1, 1]
    assert rank_of_target(scores, torch.tensor([3, 2]), excl, exclude_history=False).tolist() == [3, 1]


def test_rank_validation():
    scores = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="target_ids"):
        rank_of_target(scores, torch.tensor([0, 1]))  # padding as target
    with pytest.raises(ValueError, match="target_ids"):
        rank_of_target(scores, torch.tensor([1, 4]))
    with pytest.raises(ValueError, match="NaN"):
        rank_of_target(torch.tensor([[0.0, float("nan")]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="exclude"):
        rank_of_target(scores, torch.tensor([1, 2]), torch.zeros(3, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match="scores"):
        rank_of_target(torch.zeros(2, 4, dtype=torch.int64), torch.tensor([1, 2]))


def test_metric_values_hand_computed():
    ranks = torch.tensor([1, 3, 10, 11, 60])
    m = ranking_metrics(ranks, ks=(10, 50))
    ndcg10 = (1.0 + 0.5 + 1 / math.log2(11)) / 5
    assert m["ndcg@10"] == pytest.approx(ndcg10)
    assert m["hr@10"] == pytest.approx(3 / 5)
    assert m["ndcg@50"] == pytest.approx(ndcg10 + 1 / math.log2(12) / 5)
    assert m["hr@50"] == pytest.approx(4 / 5)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 10 + 1 / 11 + 1 / 60) / 5)
    assert set(m) == {"ndcg@10", "hr@10", "ndcg@50", "hr@50", "mrr"}
    single = ranking_metrics([3], ks=(10,))
    assert single["ndcg@10"] == pytest.approx(0.5) and single["mrr"] == pytest.approx(1 / 3)


def test_mrr_cap():
    ranks = np.array([1, 3000])
    assert ranking_metrics(ranks)["mrr"] == pytest.approx((1 + 1 / 3000) / 2)
    assert ranking_metrics(ranks, mrr_cap=2500)["mrr"] == pytest.approx((1 + 1 / 2501) / 2)
    with pytest.raises(ValueError, match="ranks"):
        ranking_metrics([])
    with pytest.raises(ValueError, match=">= 1"):
        ranking_metrics([0])
    with pytest.raises(ValueError, match="mrr_cap"):
        ranking_metrics([1], mrr_cap=0)


def test_chunked_matches_dense():
    gen = torch.Generator().manual_seed(0)
    b, n, d = 7, 103, 5
    users = torch.randn(b, d, generator=gen)
    items = torch.randn(n, d, generator=gen)
    items[0] = 100.0  # padding row with a huge score must never count
    targets = torch.randint(1, n, (b,), generator=gen)
    excl = torch.randint(0, n, (b, 9), generator=gen)
    dense = rank_of_target(users @ items.T, targets, excl)
    for chunk in (1, 10, 64, 1000):
        chunked = rank_of_target_chunked(users, items, targets, excl, chunk_size=chunk)
        assert torch.equal(chunked, dense), chunk


def test_evaluate_full_ranking_loop():
    # 4 items, one-hot embeddings: the user vector picks the score directly.
    items = torch.eye(4)
    batches = [
        {
            "user_vec": torch.tensor([[0.0, 0.9, 0.5, 0.1], [0.0, 0.2, 0.3, 0.1]]),
            "target_ids": torch.tensor([2, 1]),  # ranks: 2 and 2
            "history_ids": torch.tensor([[0, 0], [0, 0]]),
        },
        {
            "user_vec": torch.tensor([[0.0, 0.9, 0.5, 0.1]]),
            "target_ids": torch.tensor([2]),
            "history_ids": torch.tensor([[1, 0]]),  # item 1 seen -> rank 1
        },
    ]
    m = evaluate_full_ranking(lambda batch: batch["user_vec"], lambda: items, batches, ks=(1, 2), chunk_size=2)
    assert m["num_examples"] == 3
    assert m["hr@1"] == pytest.approx(1 / 3)
    assert m["hr@2"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx((2 / math.log2(3) + 1) / 3)
    no_excl = evaluate_full_ranking(lambda batch: batch["user_vec"], items, batches, ks=(1,), exclude_history=False)
    assert no_excl["hr@1"] == 0.0
