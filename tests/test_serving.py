"""The serving loop (``fuxi_linear.serving.Decoder``): admit / evict / step sequences equal a fresh prefill of
each user's whole history; clear errors; on a GPU, graph replays equal eager steps bit for bit."""
import random

import pytest
import torch

from fuxi_linear.serving import Decoder, batch_buckets
from model_helpers import tiny_model

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


class Histories:
    """Each user's events so far, and a fresh prefill of any set of them (the oracle)."""

    def __init__(self, num_items, seed=0):
        self.rng = random.Random(seed)
        self.num_items = num_items
        self.events = {}

    def new_user(self, user, length):
        t = 1_700_000_000 + self.rng.randrange(10_000)
        self.events[user] = []
        for _ in range(length):
            t += self.rng.randrange(0, 50_000)
            self.events[user].append((self.rng.randrange(1, self.num_items + 1), t))

    def next_event(self, user):
        """A new event after the user's last one, and the request time after it."""
        t = self.events[user][-1][1] + self.rng.randrange(0, 50_000)
        return self.rng.randrange(1, self.num_items + 1), t, t + self.rng.randrange(1, 9_000)

    def batch(self, users, query_times):
        T = max(len(self.events[u]) for u in users)
        ids = torch.zeros(len(users), T, dtype=torch.int64)
        ts = torch.zeros(len(users), T, dtype=torch.int64)
        for i, u in enumerate(users):
            for j, (item, t) in enumerate(self.events[u]):
                ids[i, j], ts[i, j] = item, t
        lengths = torch.tensor([len(self.events[u]) for u in users])
        return ids, ts, lengths, torch.tensor(query_times)

    def prefill(self, model, users, query_times):
        device = next(model.parameters()).device
        with torch.no_grad():
            return model.prefill(*(t.to(device) for t in self.batch(users, query_times)))[0]


def _admit(decoder, hist, users, lengths, model):
    for u, n in zip(users, lengths):
        hist.new_user(u, n)
    query = [hist.events[u][-1][1] + 100 for u in users]
    out = decoder.admit(users, *hist.batch(users, query))
    assert (out - hist.prefill(model, users, query)).abs().max() < 1e-10
    return out


def _step(decoder, hist, users, model):
    events = [hist.next_event(u) for u in users]
    out = decoder.step(users, torch.tensor([e[0] for e in events]), torch.tensor([e[1] for e in events]),
                       torch.tensor([e[2] for e in events]))
    for u, (item, t, _) in zip(users, events):
        hist.events[u].append((item, t))
    expected = hist.prefill(model, users, [e[2] for e in events])
    assert (out - expected).abs().max() < 1e-10
    return out


@pytest.mark.parametrize("padded", [False, True], ids=["exact", "padded"])
def test_admit_evict_step_sequence_equals_fresh_prefills(padded):
    """Padded: every step runs at its bucket's size with scratch rows, as on CUDA (graphs or not)."""
    model = tiny_model()
    hist = Histories(model.config.num_items, seed=1)
    max_users = 5 if padded else 3
    decoder = Decoder(model, max_users=max_users, device="cpu", pad_to_buckets=padded)
    if padded:
        assert decoder.buckets == [1, 2, 4, 5] and decoder.num_scratch_rows == 1  # n = 3 pads to 4
    else:
        assert decoder.num_scratch_rows == 0
    _admit(decoder, hist, ["ann", "bob"], [5, 2], model)
    _step(decoder, hist, ["ann", "bob"], model)
    _admit(decoder, hist, ["cy"], [7], model)
    _step(decoder, hist, ["cy", "ann"], model)
    row_bob = decoder.row_of("bob")
    decoder.evict(["bob"])
    assert decoder.num_free_rows == max_users - 2
    _admit(decoder, hist, [42], [1], model)  # any hashable id; reuses bob's row
    assert decoder.row_of(42) == row_bob
    _step(decoder, hist, [42], model)
    _step(decoder, hist, ["ann", "cy", 42], model)  # padded: 3 users in bucket 4, one scratch row
    _step(decoder, hist, ["cy"], model)
    assert decoder.users == ["ann", "cy", 42]
    if padded:
        assert sorted(decoder._runners) == [1, 2, 4]
        scratch = decoder.pool.select(list(range(5, 6)))
        assert int(scratch.position.sum()) == 0 and float(scratch.positional.abs().sum()) == 0.0
    assert [decoder.position_of(u) for u in decoder.users] == [8, 10, 3]
    state = decoder.state_of(["ann", 42])
    assert state.position.tolist() == [8, 3]


def test_stepping_some_users_leaves_the_others_untouched():
    model = tiny_model()
    hist = Histories(model.config.num_items, seed=2)
    decoder = Decoder(model, max_users=4, device="cpu")
    _admit(decoder, hist, ["a", "b", "c"], [3, 4, 5], model)
    before = decoder.state_of(["b"])
    _step(decoder, hist, ["c", "a"], model)
    after = decoder.state_of(["b"])
    assert all(torch.equal(x, y) for x, y in zip(before.tensors(), after.tensors()))


def _served():
    model = tiny_model(dtype=torch.float32, max_seq_len=6, positional_table_size=9, absolute_position_table_size=9)
    hist = Histories(model.config.num_items, seed=3)
    decoder = Decoder(model, max_users=2, device="cpu")
    hist.new_user("a", 3)
    hist.new_user("b", 8)
    decoder.admit(["a", "b"], *hist.batch(["a", "b"], [hist.events["a"][-1][1], hist.events["b"][-1][1]]))
    return model, hist, decoder


@pytest.fixture
def served():
    return _served()


def _events(n, item=1):
    t = torch.full((n,), 1_800_000_000, dtype=torch.int64)
    return torch.full((n,), item), t, t + 5


@pytest.mark.parametrize("call, exc, match", [
    (lambda d, h: d.admit(["c"], *h.batch(["a"], [0])), ValueError,
     r"cannot admit 1 users: 0 of max_users=2 rows are free; evict users first"),
    (lambda d, h: d.admit(["a"], *h.batch(["a"], [0])), ValueError, r"users already admitted: \['a'\]"),
    (lambda d, h: d.step(["a", "zed"], *_events(2)), ValueError, r"cannot step unknown users \['zed'\]"),
    (lambda d, h: d.step(["a", "a"], *_events(2)), ValueError, r"duplicate users in one step: \['a'\]"),
    (lambda d, h: d.step("a", *_events(1)), TypeError, "users must be a sequence of user ids"),
    (lambda d, h: d.evict(["zed"]), ValueError, r"cannot evict unknown users \['zed'\]"),
    (lambda d, h: d.row_of("zed"), ValueError, "unknown user 'zed'"),
    (lambda d, h: d.step(["a"], *_events(1, item=0)), ValueError, "padding id 0"),
    (lambda d, h: d.step(["a"], *_events(1, item=41)), ValueError, r"item_ids must lie in \[0, num_items=40\]"),
    (lambda d, h: d.step(["a"], *_events(2)), ValueError, r"item_ids must have shape \(N,\)=\(1,\)"),
    (lambda d, h: d.step(["a"], _events(1)[0], _events(1)[1].double(), _events(1)[2]), TypeError,
     "timestamps must be int64"),
])
def test_bad_calls_fail_clearly(served, call, exc, match):
    model, hist, decoder = served
    with pytest.raises(exc, match=match):
        call(decoder, hist)


def test_stepping_an_evicted_user_fails(served):
    model, hist, decoder = served
    decoder.evict(["a"])
    with pytest.raises(ValueError, match=r"cannot step unknown users \['a'\]: not admitted, or evicted"):
        decoder.step(["a"], *_events(1))
    with pytest.raises(ValueError, match=r"duplicate users in one admit: \['c'\]"):
        decoder.admit(["c", "c"], *hist.batch(["a", "b"], [0, 0]))


def test_positions_beyond_the_tables_fail_on_the_host(served):
    """The rejected step changes nothing: the whole pool (every user's states, last timestamp and position) is
    as before, bit for bit, and the next steps give exactly what a twin decoder that never saw the rejected call
    gives."""
    model, hist, decoder = served  # "b" holds 8 events; the tables have 9 positions
    _, _, twin = _served()
    for d in (decoder, twin):
        d.step(["b"], *_events(1))
    before = decoder.pool.clone()
    with pytest.raises(ValueError, match=r"users \['b'\] would reach position 9, beyond the model's position tables"):
        decoder.step(["a", "b"], *_events(2))
    for name, x, y in zip(("retention", "temporal", "positional", "last_timestamp", "position"),
                          decoder.pool.tensors(), before.tensors()):
        assert torch.equal(x, y), name
    assert decoder.position_of("a") == 3 and decoder.position_of("b") == 9
    assert torch.equal(decoder.step(["a"], *_events(1, item=7)), twin.step(["a"], *_events(1, item=7)))
    assert all(torch.equal(x, y) for x, y in zip(decoder.pool.tensors(), twin.pool.tensors()))


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(max_users=0), ValueError, "max_users must be a positive int"),
    (dict(max_users=2, use_cuda_graphs=True, device="cpu"), ValueError, "use_cuda_graphs=True needs a CUDA device"),
    (dict(max_users=2, device="meta"), ValueError, "the model is on cpu, the decoder's device is meta"),
    (dict(max_users=2, validate="maybe"), ValueError, "validate must be True, False"),
])
def test_bad_decoder_settings(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Decoder(tiny_model(dtype=torch.float32), **kwargs)
    with pytest.raises(ValueError, match="eval mode"):
        Decoder(tiny_model(dtype=torch.float32).train(), max_users=2)
    with pytest.raises(TypeError, match="model must be a FuXiLinear"):
        Decoder(torch.nn.Linear(2, 2), max_users=2)


def test_batch_buckets():
    assert batch_buckets(1) == [1]
    assert batch_buckets(8) == [1, 2, 4, 8]
    assert batch_buckets(100) == [1, 2, 4, 8, 16, 32, 64, 100]


# --------------------------------------------------------------------------------------------- GPU only

def _gpu_run(use_cuda_graphs):
    model = tiny_model(dtype=torch.float32).cuda()
    hist = Histories(model.config.num_items, seed=5)
    decoder = Decoder(model, max_users=6, device="cuda", use_cuda_graphs=use_cuda_graphs)
    outputs = []
    for u, n in zip("abcde", [4, 9, 2, 6, 3]):
        hist.new_user(u, n)
    decoder.admit(list("abcde"), *hist.batch(list("abcde"), [hist.events[u][-1][1] for u in "abcde"]))
    for users in (["a"], ["b", "c", "d"], ["e", "a", "c", "b", "d"], ["d", "b"], ["c", "e", "a"]):
        events = [hist.next_event(u) for u in users]
        outputs.append(decoder.step(users, *(torch.tensor([e[i] for e in events]) for i in range(3))))
        for u, (item, t, _) in zip(users, events):
            hist.events[u].append((item, t))
    return outputs, decoder, model, hist


@cuda_only
def test_graph_replays_equal_eager_steps_bit_for_bit():
    graphed, decoder, model, hist = _gpu_run(True)
    eager, *_ = _gpu_run(False)
    assert sorted(decoder._runners) == [1, 2, 4, 6]  # 3 users pad to 4, 5 users to 6
    assert all(r.graph is not None for r in decoder._runners.values())
    for a, b in zip(graphed, eager):
        assert torch.equal(a, b)


@cuda_only
def test_graph_steps_match_fresh_prefills():
    outputs, decoder, model, hist = _gpu_run(True)
    users = ["c", "e", "a"]  # the last step's users; their last events' request times were random: re-step
    events = [hist.next_event(u) for u in users]
    out = decoder.step(users, *(torch.tensor([e[i] for e in events]) for i in range(3)))
    for u, (item, t, _) in zip(users, events):
        hist.events[u].append((item, t))
    expected = hist.prefill(model, users, [e[2] for e in events])
    assert float((out - expected).abs().max()) < 1e-4
