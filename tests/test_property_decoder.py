"""Stateful property test of the serving loop: random sequences of admit, evict, step, save and load on a
``Decoder`` (exact and bucket-padded steps), every served user checked against a fresh prefill of their whole
history after every step, the users not stepped left untouched, and a save / load round trip exact.

A user's next event comes at the time of their last request (what decode can be exact for: the temporal query
of an event uses the next event's time, SPEC §3), and requests follow events by 1-60 s, so the temporal decays
of the 16 s period are not saturated by their clamp (larger gaps would hide a wrong decay)."""
import random
import shutil
import tempfile

import torch
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from fuxi_linear.serving import Decoder
from model_helpers import tiny_model
from property_settings import examples

MODEL = tiny_model()  # float64: a step equals a fresh prefill to ~1e-15 (bound 1e-10, as test_serving)
LIMIT = MODEL.config.max_positions
TOL = 1e-10


class DecoderMachine(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.folder = tempfile.mkdtemp(prefix="decoder-snapshots-")
        self.events = {}  # user -> [(item, time)] of its whole history
        self.request = {}  # user -> their last request time: the time of their next event
        self.next_user = 0
        self.saved = None  # (users, positions, states) at the last save

    def teardown(self):
        shutil.rmtree(self.folder, ignore_errors=True)

    @initialize(max_users=st.integers(1, 5), padded=st.booleans(), seed=st.integers(0, 2 ** 16))
    def start(self, max_users, padded, seed):
        self.rng = random.Random(seed)
        self.decoder = Decoder(MODEL, max_users=max_users, device="cpu", pad_to_buckets=padded)

    # ------------------------------------------------------------------ the oracle
    def _batch(self, users, query_times):
        T = max(len(self.events[u]) for u in users)
        ids = torch.zeros(len(users), T, dtype=torch.int64)
        ts = torch.zeros(len(users), T, dtype=torch.int64)
        for i, u in enumerate(users):
            for j, (item, t) in enumerate(self.events[u]):
                ids[i, j], ts[i, j] = item, t
        return ids, ts, torch.tensor([len(self.events[u]) for u in users]), torch.tensor(query_times)

    def _fresh(self, users, query_times):
        with torch.no_grad():
            return MODEL.prefill(*self._batch(users, query_times))[0]

    # ------------------------------------------------------------------ rules
    @precondition(lambda self: self.decoder.num_free_rows > 0)
    @rule(count=st.integers(1, 3), data=st.data())
    def admit(self, count, data):
        count = min(count, self.decoder.num_free_rows)
        users = []
        for _ in range(count):
            user = self.next_user if self.rng.random() < 0.5 else f"user-{self.next_user}"
            self.next_user += 1
            length = data.draw(st.integers(1, 8), label="history length")
            t = 1_700_000_000 + self.rng.randrange(10_000)
            self.events[user] = []
            for _ in range(length):
                t += self.rng.randrange(0, 60)
                self.events[user].append((self.rng.randrange(1, MODEL.config.num_items + 1), t))
            self.request[user] = t + self.rng.randrange(1, 60)
            users.append(user)
        query = [self.request[u] for u in users]
        out = self.decoder.admit(users, *self._batch(users, query))
        assert (out - self._fresh(users, query)).abs().max() < TOL

    @precondition(lambda self: self.decoder.users)
    @rule(data=st.data())
    def evict(self, data):
        users = data.draw(st.lists(st.sampled_from(self.decoder.users), min_size=1, max_size=2, unique=True))
        self.decoder.evict(users)
        for u in users:
            del self.events[u], self.request[u]

    @precondition(lambda self: self.decoder.users)
    @rule(data=st.data())
    def step(self, data):
        ready = [u for u in self.decoder.users if len(self.events[u]) < LIMIT]
        if not ready:
            return
        users = data.draw(st.lists(st.sampled_from(ready), min_size=1, max_size=len(ready), unique=True))
        others = [u for u in self.decoder.users if u not in users]
        before = self.decoder.state_of(others) if others else None
        new = []
        for u in users:
            t = self.request[u]
            self.request[u] = t + self.rng.randrange(1, 60)
            new.append((self.rng.randrange(1, MODEL.config.num_items + 1), t, self.request[u]))
        out = self.decoder.step(users, torch.tensor([e[0] for e in new]), torch.tensor([e[1] for e in new]),
                                torch.tensor([e[2] for e in new]))
        for u, (item, t, _) in zip(users, new):
            self.events[u].append((item, t))
        assert (out - self._fresh(users, [e[2] for e in new])).abs().max() < TOL
        if others:  # the rows of users not stepped are untouched, bit for bit
            for a, b in zip(self.decoder.state_of(others).tensors(), before.tensors()):
                assert torch.equal(a, b)

    @rule()
    def save(self):
        self.decoder.save(self.folder)
        users = self.decoder.users
        self.saved = (users, [self.decoder.position_of(u) for u in users],
                      self.decoder.state_of(users).tensors() if users else [],
                      {u: list(self.events[u]) for u in users}, {u: self.request[u] for u in users})

    @precondition(lambda self: self.saved is not None)
    @rule(same_size=st.booleans())
    def load(self, same_size):
        """Back to the last snapshot (the server restarted): the saved users with their saved histories."""
        users, positions, states, events, requests = self.saved
        size = self.decoder.max_users if same_size else max(len(users), 1) + self.rng.randrange(0, 3)
        padded = self.decoder._padded
        self.decoder = Decoder.load(self.folder, MODEL, max_users=size, pad_to_buckets=padded)
        self.events = {u: list(e) for u, e in events.items()}
        self.request = dict(requests)
        assert self.decoder.users == users
        assert [self.decoder.position_of(u) for u in users] == positions
        if users:
            for a, b in zip(self.decoder.state_of(users).tensors(), states):
                assert torch.equal(a, b)

    @invariant()
    def bookkeeping(self):
        if not hasattr(self, "decoder"):
            return
        d = self.decoder
        assert sorted(d.users, key=str) == sorted(self.events, key=str)
        assert d.num_free_rows == d.max_users - len(d.users)
        assert len({d.row_of(u) for u in d.users}) == len(d.users)
        for u in d.users:
            assert d.position_of(u) == len(self.events[u])


TestDecoderSequences = DecoderMachine.TestCase
TestDecoderSequences.settings = settings(max_examples=examples(15), stateful_step_count=15)
