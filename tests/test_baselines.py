"""Baselines (SASRec, HSTU, FuXi-α): decode equals encode, causality, padding, time buckets, gradients,
training, the shared loss, and input checking."""
import math

import pytest
import torch
import torch.nn.functional as F

from fuxi_linear import FuXiLinear
from fuxi_linear.models import MODEL_NAMES, build_model
from fuxi_linear.models.baselines import (FuXiAlpha, HSTU, KVCache, SASRec, next_item_targets, query_times,
                                          sampled_softmax_loss, time_bucket)
from model_helpers import random_histories

BASELINES = ["sasrec", "hstu", "fuxi-alpha"]
TIME_AWARE = ["hstu", "fuxi-alpha"]
# (name, extra config): both attention normalisations, and a small query block so the chunked prefill
# path (several query blocks per layer) is what gets compared with decode.
VARIANTS = [("sasrec", {}), ("hstu", {}), ("hstu", {"attention_norm": "count", "query_chunk_size": 3}),
            ("fuxi-alpha", {}), ("fuxi-alpha", {"attention_norm": "count", "query_chunk_size": 4})]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: intra-op threads only add overhead, and on a loaded 2-core machine the
    oversubscription slowed the training runs ~20x. Restored afterwards for the other test modules."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny(name, dtype=torch.float64, **overrides):
    values = dict(num_items=40, max_seq_len=30, embedding_dim=16, num_blocks=2, num_heads=2, qk_dim=4, dropout=0.0)
    values.update(overrides)
    torch.manual_seed(0)
    model = build_model(name, **values).to(dtype)
    with torch.no_grad():  # move away from the initial values so every parameter (bias tables too) matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def histories(num_items, lengths, T=None, seed=0, max_gap=5000):
    """random_histories with gaps large enough to spread events over many time buckets."""
    ids, _, lengths, _ = random_histories(num_items, lengths, T, seed)
    g = torch.Generator().manual_seed(seed + 1)
    ts_ext = 1_700_000_000 + torch.cumsum(torch.randint(0, max_gap, (len(lengths), ids.shape[1] + 1), generator=g), 1)
    return ids, ts_ext[:, :ids.shape[1]].contiguous(), lengths, ts_ext


@pytest.mark.parametrize("name,extra", VARIANTS)
def test_prefill_then_steps_equals_encode(name, extra):
    model = tiny(name, **extra)
    full = torch.tensor([12, 7, 4, 9])
    ids, ts, _, ts_ext = histories(40, full)
    rows = torch.arange(4)
    with torch.no_grad():
        ref = model.encode(ids, ts, full, ts_ext[rows, full])
        prefix = full - 3
        pre_ids = torch.where(torch.arange(ids.shape[1])[None] < prefix[:, None], ids, 0)
        # Each step's query time is the next event's time: then the cached keys/values of every event were
        # computed with the same query times as in the full encode.
        user, cache = model.prefill(pre_ids, ts, prefix, ts_ext[rows, prefix])
        pre = model.encode(pre_ids, ts, prefix, ts_ext[rows, prefix])
        assert (user - pre[rows, prefix - 1]).abs().max() <= 1e-9
        for j in range(3):
            p = prefix + j
            user, cache = model.step(cache, ids[rows, p], ts[rows, p], ts_ext[rows, p + 1])
            assert (user - ref[rows, p]).abs().max() <= 1e-9
    assert torch.equal(cache.lengths, full) and cache.max_length == int(full.max())
    assert cache.capacity == model.config.max_positions
    if cache.timestamps is not None:
        assert torch.equal(cache.timestamps[0, :12], ts[0])


@pytest.mark.parametrize("name", BASELINES)
def test_cache_select_cat_to_and_size(name):
    model = tiny(name)
    lengths = torch.tensor([5, 2, 8])
    ids, ts, _, ts_ext = histories(40, lengths, seed=2)
    rows = torch.arange(3)
    new_ids, new_ts, new_q = torch.tensor([3, 4, 5]), ts_ext[rows, lengths], ts_ext[rows, lengths] + 60
    with torch.no_grad():
        _, cache = model.prefill(ids, ts, lengths, ts_ext[rows, lengths], capacity=12)
        part = cache.select(torch.tensor([2, 0]))
        assert part.max_length == 8 and torch.equal(part.lengths, torch.tensor([8, 5]))
        assert torch.equal(cache.select([-1]).keys, cache.select([2]).keys)
        joined = KVCache.cat([cache.select([0]), cache.select(torch.tensor([False, True, True]))]).to("cpu")
        all_users, _ = model.step(joined, new_ids, new_ts, new_q)
        some, _ = model.step(part, new_ids[[2, 0]], new_ts[[2, 0]], new_q[[2, 0]])
    assert (all_users[[2, 0]] - some).abs().max() <= 1e-12
    L, H, dqk, dv = 2, 2, 4, 8
    per_event = L * H * (dqk + dv) * 8 + (8 if model.uses_time else 0)
    assert cache.nbytes_per_user() == 12 * per_event + 8  # capacity slots + the int64 length


@pytest.mark.parametrize("name", BASELINES)
def test_future_events_do_not_change_earlier_outputs(name):
    model = tiny(name)
    lengths = torch.tensor([10, 10])
    ids, ts, _, ts_ext = histories(40, lengths, seed=3)
    q = ts_ext[torch.arange(2), lengths]
    p = 6
    with torch.no_grad():
        base = model.encode(ids, ts, lengths, q)
        ids2 = ids.clone()
        ids2[:, p] = ids[:, p] % 40 + 1
        changed_item = model.encode(ids2, ts, lengths, q)
        ts2 = ts.clone()
        ts2[:, p:] += 123_456  # later events happen later: their times enter the bias of position p - 1
        changed_time = model.encode(ids, ts2, lengths, q)
    assert (changed_item[:, :p] - base[:, :p]).abs().max() <= 1e-12
    assert (changed_item[:, p:] - base[:, p:]).abs().max() > 1e-6
    # Position p - 1 queries at the time of event p (the next event): for the time-aware models it moves.
    assert (changed_time[:, :p - 1] - base[:, :p - 1]).abs().max() <= 1e-12
    moved = (changed_time[:, p - 1] - base[:, p - 1]).abs().max()
    assert moved > 1e-6 if name in TIME_AWARE else moved <= 1e-12


@pytest.mark.parametrize("name", BASELINES)
def test_padding_and_batch_mates_do_not_change_results(name):
    model = tiny(name)
    lengths = torch.tensor([4, 6])
    ids, ts, _, ts_ext = histories(40, lengths, seed=5)
    q = ts_ext[torch.arange(2), lengths]
    with torch.no_grad():
        a = model.encode(ids, ts, lengths, q)
        wide_ids = F.pad(ids, (0, 5))
        wide_ts = F.pad(ts, (0, 5), value=-(2 ** 62))
        wide_ts[0, 4:] = 2 ** 62  # entries past a user's length are ignored, however extreme
        b = model.encode(wide_ids, wide_ts, lengths, q)
        alone = model.encode(ids[:1, :4], ts[:1, :4], lengths[:1], q[:1])
    assert (a - b[:, :6]).abs().max() <= 1e-12 and torch.all(b[:, 6:] == 0) and torch.all(a[0, 4:] == 0)
    assert (a[:1, :4] - alone).abs().max() <= 1e-12
    norms = a.norm(dim=-1)
    valid = torch.arange(6)[None] < lengths[:, None]
    assert torch.allclose(norms[valid], torch.ones_like(norms[valid]))


def test_time_bucket_on_hand_computed_values():
    dt = torch.tensor([0, 1, -1, 2, 10, -10, 3600, 86_400, 10 ** 12, 2 ** 62, -(2 ** 63)])
    # floor(ln|dt| / 0.301): ln 2 = 0.693 -> 2; ln 10 = 2.303 -> 7; ln 3600 = 8.189 -> 27; ln 86400 = 11.367 -> 37;
    # ln 1e12 = 27.631 -> 91; ln 2^62 = 42.98 -> 142 -> clamped to 128; INT64_MIN cannot be negated -> 0.
    assert time_bucket(dt).tolist() == [0, 0, 0, 2, 7, 7, 27, 37, 91, 128, 0]
    assert time_bucket(torch.tensor([10 ** 12]), max_bucket=50).tolist() == [50]
    with pytest.raises(TypeError, match="delta must be an int64"):
        time_bucket(torch.tensor([1.0]))


def test_query_times_use_the_next_event_and_the_request_time():
    ts = torch.tensor([[10, 20, 30, 0], [5, 6, 0, 0]])
    qt = query_times(ts, torch.tensor([3, 2]), torch.tensor([99, 77]))
    assert qt[0, :3].tolist() == [20, 30, 99] and qt[1, :2].tolist() == [6, 77]


@pytest.mark.parametrize("name", BASELINES)
def test_gradients_reach_every_parameter(name):
    model = tiny(name, dtype=torch.float32, dropout=0.1).train()
    lengths = torch.tensor([10, 4, 7])
    ids, ts, _, ts_ext = histories(40, lengths, seed=1)
    loss = model.loss(ids, ts, lengths, ts_ext[torch.arange(3), lengths], target_ids=torch.tensor([3, 4, 5]),
                      num_negatives=8, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    for pname, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, pname


def periodic_batch(batch, T, gen):
    """Hourly events whose item is the hour of day + 1 (items 1..24), each user starting at a random hour."""
    start = torch.randint(0, 24 * 30, (batch, 1), generator=gen)
    hours = start + torch.arange(T + 1)[None]
    ts_ext = 1_699_920_000 + 3600 * hours  # 1_699_920_000 is a midnight (UTC)
    items = (ts_ext // 3600) % 24 + 1
    lengths = torch.full((batch,), T)
    return items[:, :T], ts_ext[:, :T], lengths, ts_ext[:, T], items[:, T]


@pytest.mark.parametrize("name", BASELINES)
def test_short_training_run_lowers_the_loss(name):
    torch.manual_seed(0)
    model = build_model(name, num_items=24, max_seq_len=16, embedding_dim=16, num_blocks=1, num_heads=2,
                        dropout=0.0, num_negatives=16)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.9, 0.98), weight_decay=0.0)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(100):
        ids, ts, lengths, q, target = periodic_batch(8, 16, gen)
        loss = model.loss(ids, ts, lengths, q, target_ids=target, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    first, last = sum(losses[:5]) / 5, sum(losses[-10:]) / 10
    assert last < 0.3 * first, (first, last)


def test_sampled_softmax_loss_against_a_hand_computation():
    torch.manual_seed(0)
    user = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    items = F.normalize(torch.randn(7, 8, dtype=torch.float64), dim=-1)
    pos = torch.tensor([1, 2, 3, 6, 6])
    loss = sampled_softmax_loss(user, pos, items, 4, 0.05, torch.Generator().manual_seed(3))
    neg = torch.randint(1, 7, (5, 4), generator=torch.Generator().manual_seed(3))  # same draws
    expected = 0.0
    for m in range(5):
        logits = [float(user[m] @ items[pos[m]]) / 0.05]
        logits += [float(user[m] @ items[n]) / 0.05 for n in neg[m].tolist() if n != int(pos[m])]
        expected += -logits[0] + math.log(sum(math.exp(x) for x in logits))
    assert abs(float(loss) - expected / 5) < 1e-9
    # With one item every negative is the positive: all masked, the loss is exactly 0 (not NaN).
    one = sampled_softmax_loss(user[:2], torch.tensor([1, 1]), items[:2], 3, 0.05)
    assert float(one) == 0.0


def test_next_item_targets():
    ids = torch.tensor([[4, 5, 6, 0], [7, 8, 0, 0]])
    lengths = torch.tensor([3, 2])
    assert next_item_targets(ids, lengths, None, 10).tolist() == [[5, 6, 0, 0], [8, 0, 0, 0]]
    assert next_item_targets(ids, lengths, torch.tensor([9, 1]), 10).tolist() == [[5, 6, 9, 0], [8, 1, 0, 0]]


def test_build_model_names():
    assert MODEL_NAMES == ("fuxi-linear", "hstu", "fuxi-alpha", "sasrec")
    kinds = {"sasrec": SASRec, "hstu": HSTU, "fuxi-alpha": FuXiAlpha, "fuxi-linear": FuXiLinear}
    for name, cls in kinds.items():
        model = build_model(name, num_items=10, max_seq_len=8, embedding_dim=16, num_heads=2)
        assert type(model) is cls and model.config.embedding_dim == 16
    listed = r"unknown model name 'bert4rec'.*'fuxi-linear', 'hstu', 'fuxi-alpha', 'sasrec'"
    with pytest.raises(ValueError, match=listed):
        build_model("bert4rec", num_items=10)
    with pytest.raises(TypeError, match="name must be a str"):
        build_model(3, num_items=10)
    with pytest.raises(TypeError, match="unexpected keyword"):
        build_model("sasrec", num_items=10, max_time_bucket=5)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(num_items=0), ValueError, "num_items must be a positive int"),
    (dict(num_items=10, embedding_dim=10, num_heads=4), ValueError, "divisible by num_heads"),
    (dict(num_items=10, dropout=1.0), ValueError, "dropout must lie in"),
    (dict(num_items=10, temperature=0.0), ValueError, "temperature must be > 0"),
    (dict(num_items=10, qk_dim=0), ValueError, "qk_dim must be a positive int"),
    (dict(num_items=10, attention_norm="sum"), ValueError, "attention_norm must be"),
    (dict(num_items=10, max_time_bucket=0), ValueError, "max_time_bucket must be a positive int"),
])
def test_config_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        build_model("hstu", **kwargs)


def test_models_reject_the_wrong_config():
    from fuxi_linear.models.baselines import HSTUConfig
    with pytest.raises(TypeError, match="config must be a SASRecConfig"):
        SASRec(HSTUConfig(num_items=5))


@pytest.mark.parametrize("name", BASELINES)
def test_bad_inputs_raise_clear_errors(name):
    model = tiny(name)
    lengths = torch.tensor([3, 5])
    ids, ts, _, ts_ext = histories(40, lengths)
    q = ts_ext[torch.arange(2), lengths]
    with pytest.raises(TypeError, match="item_ids must be an int64"):
        model.encode(ids.double(), ts, lengths, q)
    with pytest.raises(TypeError, match="timestamps must be int64"):
        model.encode(ids, ts.int(), lengths, q)
    with pytest.raises(ValueError, match="lengths must lie in"):
        model.encode(ids, ts, torch.tensor([3, 6]), q)
    with pytest.raises(ValueError, match="item_ids must lie in"):
        model.encode(ids + 100, ts, lengths, q)
    with pytest.raises(ValueError, match="query_timestamps must have shape"):
        model.encode(ids, ts, lengths, q[:1])
    with pytest.raises(ValueError, match="exceed the model's position tables"):
        long = model.config.max_positions + 1
        model.encode(torch.ones(1, long, dtype=torch.long), torch.zeros(1, long, dtype=torch.long),
                     torch.tensor([long]), torch.zeros(1, dtype=torch.long))
    with pytest.raises(ValueError, match="capacity=4 is smaller than the longest history"):
        model.prefill(ids, ts, lengths, q, capacity=4)
    with pytest.raises(TypeError, match="capacity must be a positive int"):
        model.prefill(ids, ts, lengths, q, capacity=6.0)
    with pytest.raises(ValueError, match="loss needs at least one position"):
        model.loss(ids[:, :1], ts[:, :1], torch.tensor([1, 1]), q)
    with torch.no_grad():
        _, cache = model.prefill(ids, ts, lengths, q, capacity=6)
        one = torch.tensor([1, 2])
        with pytest.raises(TypeError, match="cache must be a KVCache"):
            model.step({"keys": None}, one, q, q)
        with pytest.raises(ValueError, match="padding id 0"):
            model.step(cache, torch.tensor([0, 1]), q, q)
        with pytest.raises(ValueError, match=r"item_ids must have shape \(N,\)=\(2,\)"):
            model.step(cache, torch.tensor([1]), q, q)
        with pytest.raises(TypeError, match="query_timestamps must be int64"):
            model.step(cache, one, q, q.double())
        model.step(cache, one, q, q)  # fills slot 5 of user 1: the cache is now full
        with pytest.raises(ValueError, match="the cache is full"):
            model.step(cache, one, q, q)
        other = tiny("hstu" if name == "sasrec" else "sasrec")
        with pytest.raises(ValueError, match="does not belong to"):
            other.step(cache, one, q, q)


def test_step_beyond_the_position_table_is_refused():
    model = tiny("hstu", max_seq_len=4, absolute_position_table_size=5)
    ids, ts, lengths, ts_ext = histories(40, [5])
    with torch.no_grad():
        _, cache = model.prefill(ids, ts, lengths, ts_ext[:, 5], capacity=8)
        with pytest.raises(ValueError, match="beyond the model's position table"):
            model.step(cache, torch.tensor([1]), ts_ext[:, 5], ts_ext[:, 5])


def test_sampled_softmax_loss_rejects_bad_arguments():
    user, items = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(TypeError, match="user_vectors must be a float tensor"):
        sampled_softmax_loss(user.long(), torch.tensor([1, 2, 3]), items, 4, 0.05)
    with pytest.raises(ValueError, match=r"positive_ids must have shape \(M,\)=\(3,\)"):
        sampled_softmax_loss(user, torch.tensor([1, 2]), items, 4, 0.05)
    with pytest.raises(ValueError, match="padding id 0"):
        sampled_softmax_loss(user, torch.tensor([1, 0, 3]), items, 4, 0.05)
    with pytest.raises(ValueError, match="positive_ids must lie in"):
        sampled_softmax_loss(user, torch.tensor([1, 2, 5]), items, 4, 0.05)
    with pytest.raises(ValueError, match="num_negatives must be a positive int"):
        sampled_softmax_loss(user, torch.tensor([1, 2, 3]), items, 0, 0.05)
    with pytest.raises(ValueError, match="temperature must be a number > 0"):
        sampled_softmax_loss(user, torch.tensor([1, 2, 3]), items, 4, -1.0)
    with pytest.raises(ValueError, match=r"item_vectors must have shape \(N \+ 1, D=4\)"):
        sampled_softmax_loss(user, torch.tensor([1, 2, 3]), torch.randn(5, 3), 4, 0.05)
