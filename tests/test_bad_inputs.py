"""Bad input fails early with a ValueError/TypeError naming the argument."""
import pytest
import torch

from fuxi_linear import FuXiLinearConfig
from fuxi_linear.ops import chunk_decay_attention, decay_attention_step
from model_helpers import random_histories, tiny_model


def _qkv(B=2, T=5, H=2, K=3, V=4):
    return torch.randn(B, T, H, K), torch.randn(B, T, H, K), torch.randn(B, T, H, V)


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda q, k, v, kw: (q[0], k, v, kw), ValueError, "q must have 4 dimensions"),
    (lambda q, k, v, kw: (q, k[..., :2], v, kw), ValueError, "q and k"),
    (lambda q, k, v, kw: (q, k, v[:, :4], kw), ValueError, "disagree"),
    (lambda q, k, v, kw: (q.long(), k, v, kw), TypeError, "q must have dtype"),
    (lambda q, k, v, kw: (q.double(), k, v, kw), TypeError, "share one dtype"),
    (lambda q, k, v, kw: (q, k, v, {"g": torch.zeros(2, 5)}), ValueError, "g must have 3"),
    (lambda q, k, v, kw: (q, k, v, {"g": torch.zeros(2, 5, 3)}), ValueError, r"g must have shape \(B, T, H\)"),
    (lambda q, k, v, kw: (q, k, v, {"g_gamma": torch.zeros(3)}), ValueError, "g_gamma"),
    (lambda q, k, v, kw: (q, k, v, {"g": torch.zeros(2, 5, 2), "g_gamma": torch.zeros(2)}), ValueError, "not both"),
    (lambda q, k, v, kw: (q, k, v, {"initial_state": torch.zeros(2, 2, 4, 3)}), ValueError, "initial_state"),
    (lambda q, k, v, kw: (q, k, v, {"scale": "1"}), TypeError, "scale"),
    (lambda q, k, v, kw: (q, k, v, {"backend": "cuda"}), ValueError, "backend"),
])
def test_operator_rejects(mutate, exc, match):
    q, k, v, kw = mutate(*_qkv(), {})
    with pytest.raises(exc, match=match):
        chunk_decay_attention(q, k, v, **kw)


@pytest.mark.parametrize("cu, match", [
    ([1, 3, 5], "start at 0"),
    ([0, 3, 3, 5], "strictly increasing"),
    ([0, 4, 2, 5], "strictly increasing"),
    ([0, 3], "end at the packed length"),
    ([0.0, 5.0], "cu_seqlens must have dtype"),
])
def test_operator_rejects_bad_cu_seqlens(cu, match):
    q, k, v = _qkv(B=1)
    with pytest.raises((ValueError, TypeError), match=match):
        chunk_decay_attention(q, k, v, cu_seqlens=torch.tensor(cu))


def test_packed_needs_batch_one():
    q, k, v = _qkv(B=2)
    with pytest.raises(ValueError, match="batch size 1"):
        chunk_decay_attention(q, k, v, cu_seqlens=torch.tensor([0, 5]))


def test_step_rejects():
    q, k, v = torch.randn(2, 2, 3), torch.randn(2, 2, 3), torch.randn(2, 2, 4)
    with pytest.raises(ValueError, match="state must have shape"):
        decay_attention_step(q, k, v, torch.zeros(2, 2, 4, 3))
    with pytest.raises(TypeError, match="state must have dtype"):
        decay_attention_step(q, k, v, torch.zeros(2, 2, 3, 4, dtype=torch.float16))
    with pytest.raises(ValueError, match="state_indices must lie"):
        decay_attention_step(q, k, v, torch.zeros(3, 2, 3, 4), state_indices=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="distinct"):
        decay_attention_step(q, k, v, torch.zeros(3, 2, 3, 4), state_indices=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match=r"g must have shape \(N, H\)"):
        decay_attention_step(q, k, v, torch.zeros(2, 2, 3, 4), g=torch.zeros(2, 3))


@pytest.fixture(scope="module")
def model_and_batch():
    model = tiny_model(dtype=torch.float32)
    lengths = torch.tensor([5, 3])
    ids, ts, _, ts_ext = random_histories(model.config.num_items, lengths)
    return model, (ids, ts, lengths, ts_ext[torch.arange(2), lengths])


@pytest.mark.parametrize("index, bad, exc, match", [
    (1, lambda ts: ts.float(), TypeError, "timestamps must be int64"),
    (3, lambda q: q.double(), TypeError, "query_timestamps must be int64"),
    (1, lambda ts: ts[:, :4], ValueError, r"timestamps must have shape \(B, T\)"),
    (0, lambda ids: ids.float(), TypeError, "item_ids must be an int64"),
    (0, lambda ids: ids[0], ValueError, r"item_ids must have shape \(B, T\)"),
    (0, lambda ids: ids + 100, ValueError, r"item_ids must lie in \[0, num_items=40\]"),
    (2, lambda n: torch.tensor([0, 3]), ValueError, r"lengths must lie in \[1, T=5\]"),
    (2, lambda n: torch.tensor([6, 3]), ValueError, r"lengths must lie in \[1, T=5\]"),
    (2, lambda n: n[:1], ValueError, r"lengths must have shape \(B,\)"),
    (2, lambda n: [5, 3], TypeError, "lengths must be a torch.Tensor"),
])
def test_encode_rejects(model_and_batch, index, bad, exc, match):
    model, batch = model_and_batch
    args = list(batch)
    args[index] = bad(args[index])
    with pytest.raises(exc, match=match):
        model.encode(*args)


def test_positions_beyond_tables_fail_in_encode_and_step():
    model = tiny_model(dtype=torch.float32, max_seq_len=6, positional_table_size=8, absolute_position_table_size=8)
    lengths = torch.tensor([9])
    ids, ts, _, ts_ext = random_histories(model.config.num_items, lengths)
    with pytest.raises(ValueError, match="position tables"):
        model.encode(ids, ts, lengths, ts_ext[:, 9])
    lengths = torch.tensor([8])
    with torch.no_grad():
        _, state = model.prefill(ids[:, :8], ts[:, :8], lengths, ts_ext[:, 8])
        with pytest.raises(ValueError, match="position 8"):
            model.step(state, ids[:, 8], ts[:, 8], ts_ext[:, 9])


def test_step_rejects_bad_events(model_and_batch):
    model, (ids, ts, lengths, q) = model_and_batch
    with torch.no_grad():
        _, state = model.prefill(ids, ts, lengths, q)
        with pytest.raises(ValueError, match="padding id 0"):
            model.step(state, torch.tensor([0, 1]), q, q + 1)
        with pytest.raises(ValueError, match=r"item_ids must have shape \(N,\)"):
            model.step(state, torch.tensor([1]), q, q + 1)
        with pytest.raises(TypeError, match="timestamps must be int64"):
            model.step(state, torch.tensor([1, 2]), q.double(), q + 1)
        with pytest.raises(TypeError, match="DecodeState"):
            model.step({"x": 1}, torch.tensor([1, 2]), q, q + 1)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_items": 0}, "num_items"),
    ({"num_items": 5, "embedding_dim": 30, "num_heads": 4}, "divisible by num_heads"),
    ({"num_items": 5, "embedding_dim": 24, "num_heads": 4, "temporal_num_periods": 8}, "2 \\* temporal_num_periods"),
    ({"num_items": 5, "positional_dim": 5}, "positional_dim"),
    ({"num_items": 5, "dropout": 1.0}, "dropout"),
    ({"num_items": 5, "backend": "gpu"}, "backend"),
])
def test_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FuXiLinearConfig(**kwargs)


@pytest.mark.parametrize("chunk_size, exc", [(0, ValueError), (2.0, TypeError), (True, TypeError)])
def test_cpu_path_rejects_bad_chunk_size(chunk_size, exc):
    from fuxi_linear.ops import chunk_decay_attention_cpu

    with pytest.raises(exc, match="chunk_size must be a positive int"):
        chunk_decay_attention_cpu(*_qkv(), chunk_size=chunk_size)
