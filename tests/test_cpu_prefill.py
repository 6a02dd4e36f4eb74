"""The CPU prefill path (DecayAttentionPlan, the model's padded prefill) against the float64 recurrence, at the
chunk boundaries the CPU path picks (C - 1, C, C + 1): outputs, final states, last outputs and gradients."""
import copy

import pytest
import torch

import fuxi_linear.layers.block as block_module
import fuxi_linear.layers.positional as positional_module
import fuxi_linear.layers.retention as retention_module
import fuxi_linear.model as model_module
import fuxi_linear.ops.channel_prefill as prefill_module
from error_bounds import check_errors, max_abs, rel_error
from fuxi_linear import FuXiLinear, FuXiLinearConfig
from fuxi_linear.ops import DecayMode, chunk_decay_attention_cpu, decay_plan
from fuxi_linear.ops.decay_plan import auto_chunk_size, prepare_decay_attention
from fuxi_linear.ops.definition import recurrent_decay_attention
from model_helpers import random_histories

F64 = torch.float64
STATE_NAMES = ("retention", "temporal", "positional", "last_timestamp", "position")
NONE, PER_TOKEN, PER_HEAD = DecayMode.NONE, DecayMode.PER_TOKEN, DecayMode.PER_HEAD
# (H, K, V) of the three FuXi channels at the CPU bench size, and the chunk length the CPU path picks for each
CHANNEL_SHAPES = {"retention": (4, 16, 16), "temporal pairs": (8, 1, 16), "positional": (1, 32, 64)}
BOUNDARIES = sorted({n for H, K, V in CHANNEL_SHAPES.values()
                     for C in [auto_chunk_size(K, V)] for n in (C - 1, C, C + 1)})


def _operands(B, T, H, K, V, decay, shared_qk=False, seed=0, strong=False):
    g = torch.Generator().manual_seed(seed)
    Bq = 1 if shared_qk else B
    q = torch.randn(Bq, T, H, K, generator=g, dtype=F64)
    k = torch.randn(Bq, T, H, K, generator=g, dtype=F64)
    v = torch.randn(B, T, H, V, generator=g, dtype=F64)
    kw = {}
    if decay == PER_TOKEN:  # `strong` puts some heads at the -20 clamp of the temporal channel
        gt = torch.nn.functional.logsigmoid(torch.randn(B, T, H, generator=g, dtype=F64) + 2)
        if strong:
            gt[..., 0] = -20.0
        kw["g"] = gt
    elif decay == PER_HEAD:
        kw["g_gamma"] = -torch.rand(H, generator=g, dtype=F64)
    return q, k, v, kw


def _recurrent(q, k, v, kw, h0=None):
    B = v.shape[0]
    return recurrent_decay_attention(q.expand(B, -1, -1, -1), k.expand(B, -1, -1, -1), v, initial_state=h0,
                                     output_final_state=True, **kw)


@pytest.mark.parametrize("shape", list(CHANNEL_SHAPES))
@pytest.mark.parametrize("T", BOUNDARIES)
def test_plan_matches_recurrence_at_chunk_boundaries(shape, T):
    H, K, V = CHANNEL_SHAPES[shape]
    decay = {"retention": PER_HEAD, "temporal pairs": PER_TOKEN, "positional": NONE}[shape]
    q, k, v, kw = _operands(3, T, H, K, V, decay, shared_qk=shape == "positional", strong=True, seed=T)
    h0 = torch.randn(3, H, K, V, dtype=F64)
    errors = {}
    for name, initial in (("", None), ("h0_", h0)):
        o_ref, s_ref = _recurrent(q, k, v, kw, initial)
        plan = prepare_decay_attention(q, k, initial_state=initial is not None, value_dim=V, **kw)
        assert plan.C == min(auto_chunk_size(K, V), T)
        o, s = plan.apply(v, initial, output_final_state=True)
        errors.update({name + "o": max_abs(o, o_ref), name + "state": max_abs(s, s_ref)})
    check_errors(errors)


@pytest.mark.parametrize("T", BOUNDARIES)
def test_ragged_final_states_and_last_outputs(T):
    """Right-padded rows: the state and the output at each row's last token, with no packing."""
    H, K, V = 2, 3, 4
    lengths = torch.tensor([T, 1, max(1, T // 2), max(1, T - 1)])
    errors = {}
    for decay in (PER_TOKEN, PER_HEAD, NONE):
        q, k, v, kw = _operands(4, T, H, K, V, decay, seed=T + 1)
        plan = prepare_decay_attention(q, k, lengths=lengths, all_outputs=False, last_outputs=True, **kw)
        o_last, s = plan.apply(v, output_final_state=True, outputs="last")
        for b, n in enumerate(lengths.tolist()):
            kw_b = {"g": kw["g"][b:b + 1, :n]} if decay == PER_TOKEN else kw
            o_ref, s_ref = _recurrent(q[b:b + 1, :n], k[b:b + 1, :n], v[b:b + 1, :n], kw_b)
            errors[f"{decay}_last_o_{b}"] = max_abs(o_last[b], o_ref[0, -1])
            errors[f"{decay}_state_{b}"] = max_abs(s[b], s_ref[0])
    check_errors(errors)


def test_segments_carry_the_state(monkeypatch):
    """Long inputs are cut into segments of chunks; the state crosses segment borders exactly."""
    monkeypatch.setattr(decay_plan, "MAX_SEGMENT_CHUNKS", 3)
    H, K, V, C = 2, 3, 4, 5
    errors = {}
    for T in (3 * C - 1, 3 * C, 3 * C + 1, 7 * C + 2):
        q, k, v, kw = _operands(2, T, H, K, V, PER_TOKEN, seed=T)
        h0 = torch.randn(2, H, K, V, dtype=F64)
        plan = prepare_decay_attention(q, k, chunk_size=C, initial_state=True, **kw)
        assert len(plan.segments) == -(-T // (3 * C))
        o, s = plan.apply(v, h0, output_final_state=True)
        o_ref, s_ref = _recurrent(q, k, v, kw, h0)
        errors.update({f"o_T{T}": max_abs(o, o_ref), f"state_T{T}": max_abs(s, s_ref)})
    check_errors(errors)


@pytest.mark.parametrize("decay", [PER_TOKEN, PER_HEAD])
@pytest.mark.parametrize("T", [BOUNDARIES[0], BOUNDARIES[2], BOUNDARIES[-1]])
def test_plan_gradients_match_recurrence(decay, T):
    H, K, V = 2, 3, 4
    q, k, v, kw = _operands(2, T, H, K, V, decay, seed=T, strong=True)
    h0 = torch.randn(2, H, K, V, dtype=F64)
    leaves = [q, k, v, h0] + list(kw.values())
    for t in leaves:
        t.requires_grad_(True)
    do, dS = torch.randn(v.shape, dtype=F64), torch.randn(h0.shape, dtype=F64)
    grads = []
    for run in ("plan", "recurrent"):
        if run == "plan":
            o, s = prepare_decay_attention(q, k, initial_state=True, **kw).apply(v, h0, output_final_state=True)
        else:
            o, s = _recurrent(q, k, v, kw, h0)
        grads.append(torch.autograd.grad((o * do).sum() + (s * dS).sum(), leaves))
    names = ["dq", "dk", "dv", "dh0"] + ["d" + n for n in kw]
    check_errors({n: max_abs(a, b) for n, a, b in zip(names, *grads)})


def test_decayed_sum_without_q_k():
    """q = k = None is the plain decayed sum (the temporal channel's pair form)."""
    T, H, V = 40, 3, 5
    _, _, v, kw = _operands(2, T, H, 1, V, PER_TOKEN, seed=7, strong=True)
    ones = torch.ones(2, T, H, 1, dtype=F64)
    o_ref, s_ref = _recurrent(ones, ones, v, kw)
    o, s = prepare_decay_attention(None, None, dtype=F64, **kw).apply(v, output_final_state=True)
    check_errors({"o": max_abs(o, o_ref), "state": max_abs(s, s_ref[:, :, :1])})


# ---------------------------------------------------------------------------------------------- the model
def _bench_sized_model(dtype=F64):
    """The CPU bench's head sizes (retention K x V = 256 and positional 32 x 64: the wide chunk; temporal pairs,
    K x V = 16: the small one)."""
    torch.manual_seed(0)
    cfg = FuXiLinearConfig(num_items=50, max_seq_len=80, embedding_dim=64, num_blocks=2, num_heads=4, qk_dim=16,
                           dropout=0.0)
    model = FuXiLinear(cfg).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


@pytest.fixture
def oracle(monkeypatch):
    """Runs a model through the generic operator path with every channel on the float64 recurrence (the
    definition) and ragged batches packed: an independent route to the same numbers."""

    def recurrent(q, k, v, g=None, g_gamma=None, output_final_state=False, cu_seqlens=None, backend="auto", **kw):
        return recurrent_decay_attention(q, k, v, g=g, g_gamma=g_gamma, output_final_state=output_final_state,
                                         cu_seqlens=cu_seqlens)

    def run(fn):
        with monkeypatch.context() as m:
            m.setattr(prefill_module, "chunk_decay_attention", recurrent)
            for module in (prefill_module, model_module, block_module, retention_module, positional_module):
                m.setattr(module, "uses_cpu_path", lambda *a, **k: False)
            return fn()

    return run


def test_model_prefill_and_encode_match_the_recurrence_at_chunk_boundaries(oracle):
    model = _bench_sized_model()
    lengths = torch.tensor(BOUNDARIES + [1])
    ids, ts, _, ts_ext = random_histories(model.config.num_items, lengths, seed=3)
    ts_ext[2, 5:] += 10 ** 6  # a long break: decays at their clamp
    query = ts_ext[torch.arange(len(lengths)), lengths]
    with torch.no_grad():
        user, state = model.prefill(ids, ts, lengths, query)
        users = model.encode(ids, ts, lengths, query)
        user_ref, state_ref = oracle(lambda: model.prefill(ids, ts, lengths, query))
        users_ref = oracle(lambda: model.encode(ids, ts, lengths, query))
        # every row full: the batch is not ragged (no lengths at all on the CPU path)
        n = max(BOUNDARIES) - 1
        rows = lengths > n
        full = torch.full((int(rows.sum()),), n)
        args = (ids[rows, :n], ts[rows, :n], full, ts[rows, n].contiguous())
        user_full, state_full = model.prefill(*args)
        user_full_ref, state_full_ref = oracle(lambda: model.prefill(*args))
    errors = {"encode": max_abs(users, users_ref), "prefill": max_abs(user, user_ref),
              "prefill_full_rows": max_abs(user_full, user_full_ref)}
    for name, a, b in zip(STATE_NAMES, state.tensors(), state_ref.tensors()):
        errors[f"state_{name}"] = max_abs(a, b)
    for name, a, b in zip(STATE_NAMES, state_full.tensors(), state_full_ref.tensors()):
        errors[f"full_rows_state_{name}"] = max_abs(a, b)
    check_errors(errors)


def test_model_gradients_match_the_recurrence(oracle):
    model = _bench_sized_model()
    lengths = torch.tensor([BOUNDARIES[2], BOUNDARIES[-1], 9])
    ids, ts, _, ts_ext = random_histories(model.config.num_items, lengths, seed=4)
    query = ts_ext[torch.arange(3), lengths]
    targets = torch.tensor([3, 4, 5])

    def grads():
        model.zero_grad()
        model.loss(ids, ts, lengths, query, target_ids=targets, generator=torch.Generator().manual_seed(0)).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    ours, ref = grads(), oracle(grads)
    check_errors({name: max_abs(ours[name], g) / (1 + float(g.abs().max())) for name, g in ref.items()})


def test_float32_model_matches_float64_at_long_lengths():
    """The float64 cumulative decays keep float32 prefill accurate where the temporal decays sit at their clamp."""
    m64 = _bench_sized_model(F64)
    m32 = _bench_sized_model(torch.float32)
    m32.load_state_dict({k: v.float() for k, v in m64.state_dict().items()})
    lengths = torch.tensor([80, 37])
    ids, ts, _, ts_ext = random_histories(m64.config.num_items, lengths, seed=5)
    ts = ts * 50  # gaps of minutes: most temporal heads decay at the -20 clamp every step
    query = ts_ext[torch.arange(2), lengths] * 50
    with torch.no_grad():
        u64, s64 = m64.prefill(ids, ts, lengths, query)
        u32, s32 = m32.prefill(ids, ts, lengths, query)
        e64, e32 = m64.encode(ids, ts, lengths, query), m32.encode(ids, ts, lengths, query)
    errors = {"prefill": rel_error(u32, u64), "encode": rel_error(e32, e64)}
    for name, a, b in zip(STATE_NAMES[:3], s32.tensors()[:3], s64.tensors()[:3]):
        errors[f"state_{name}"] = rel_error(a, b)
    check_errors(errors)


def test_inference_cache_follows_parameter_updates():
    """Parameter-derived operands are reused across inference calls, and rebuilt when a parameter changes."""
    model = _bench_sized_model()
    lengths = torch.full((2,), 40)
    ids, ts, _, ts_ext = random_histories(model.config.num_items, lengths, seed=6)
    query = ts_ext[:, 40]
    with torch.inference_mode():
        before, _ = model.prefill(ids, ts, lengths, query)
        again, _ = model.prefill(ids, ts, lengths, query)
    assert torch.equal(before, again) and model.blocks[0].positional.__dict__.get("_inference_cache")
    with torch.no_grad():  # in-place updates, as an optimiser step or load_state_dict makes them
        model.temporal.decay_logits.add_(0.5)
        for block in model.blocks:
            block.retention.decay_logits.add_(0.3)
            block.positional.table.mul_(1.5)
            block.temporal.proj_v.weight.mul_(-1.0)
    copied = copy.deepcopy(model)
    with torch.inference_mode():
        after, state = model.prefill(ids, ts, lengths, query)
        fresh, fresh_state = copied.prefill(ids, ts, lengths, query)
        # a model copied inside inference mode has inference-tensor parameters (no version counter): no cache
        inside, _ = copy.deepcopy(model).prefill(ids, ts, lengths, query)
    assert (after - before).abs().max() > 1e-3
    errors = {"after_update": max_abs(after, fresh), "copied_in_inference_mode": max_abs(inside, fresh)}
    errors.update({f"state_{n}": max_abs(a, b) for n, a, b in zip(STATE_NAMES, state.tensors(), fresh_state.tensors())})
    check_errors(errors)


def test_inference_cache_starts_over_when_a_parameter_is_replaced():
    """A replaced parameter (``module.x = nn.Parameter(...)``, ``load_state_dict(assign=True)``) can land at a
    freed one's address with the same version count; a registration anywhere rebuilds every cached value, as
    the decode step's :class:`~fuxi_linear.derived_cache.DerivedCache` does."""
    from fuxi_linear.derived_cache import inference_cache

    owner, p = torch.nn.Module(), torch.nn.Parameter(torch.ones(3))
    builds = []

    def cached():
        return inference_cache(owner, "total", (p,), (), lambda: builds.append(1) or p.sum())

    with torch.no_grad():
        cached(), cached()
        assert len(builds) == 1
        owner.other = torch.nn.Parameter(torch.zeros(1))  # registers a parameter: the cache starts over
        cached()
        assert len(builds) == 2
        p.mul_(2.0)  # in place: the version counter moves
        assert float(cached()) == 6.0 and len(builds) == 3
    cached()  # with autograd on: built every call, never cached
    assert len(builds) == 4


def test_training_after_inference_calls():
    """Operands cached during inference calls (index tensors, parameter-derived ones) never reach autograd: after
    prefill and encode calls and an optimizer-like in-place update of every parameter, a training step gives the
    same loss and the same gradients, bit for bit, as a fresh model loaded with the updated weights (one torch
    thread: the embedding gradient's multi-threaded accumulation is not bit-reproducible from run to run)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _check_training_after_inference()
    finally:
        torch.set_num_threads(threads)


def _check_training_after_inference():
    from fuxi_linear.ops import channel_prefill as prefill_ops

    for cached in (decay_plan._offsets, decay_plan._steps_to_end, prefill_ops._repeat_matrix):
        cached.cache_clear()  # so that inference mode fills the caches first
    model = _bench_sized_model(torch.float32)
    lengths = torch.tensor([70, 33])
    ids, ts, _, ts_ext = random_histories(model.config.num_items, lengths, seed=8)
    query = ts_ext[torch.arange(2), lengths]
    with torch.inference_mode():
        model.prefill(ids, ts, lengths, query)
        model.encode(ids, ts, lengths, query)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    fresh = _bench_sized_model(torch.float32)
    fresh.load_state_dict(model.state_dict())

    def train_step(m):
        m.train()
        m.zero_grad()
        loss = m.loss(ids, ts, lengths, query, target_ids=torch.tensor([1, 2]),
                      generator=torch.Generator().manual_seed(0))
        loss.backward()
        return loss.detach(), {n: p.grad for n, p in m.named_parameters() if p.requires_grad}

    loss, grads = train_step(model)
    loss_fresh, grads_fresh = train_step(fresh)
    assert torch.equal(loss, loss_fresh)
    assert grads.keys() == grads_fresh.keys() and all(g is not None for g in grads.values())
    different = [n for n in grads if not torch.equal(grads[n], grads_fresh[n])]
    assert not different, different


@pytest.mark.parametrize("chunk_size", [None, 64, 128])
def test_float32_strong_decays_keep_float32_accuracy(chunk_size):
    """Issue 8's strong-decay case on the CPU path: the temporal shape with g = -20 on 30% of the steps. The
    chunk-local cumulative decay then reaches hundreds inside a chunk; its differences are taken in float64,
    so float32 outputs and states stay at float32 accuracy (a float32 difference gave 3e-6 .. 1.3e-5)."""
    gen = torch.Generator().manual_seed(3)
    B, T, H, K, V = 3, 300, 16, 2, 8
    q, k, v = (torch.randn(B, T, H, d, generator=gen) for d in (K, K, V))
    g = -0.05 * torch.rand(B, T, H, generator=gen)
    g = torch.where(torch.rand(B, T, H, generator=gen) < 0.3, torch.full_like(g, -20.0), g)
    o64, s64 = recurrent_decay_attention(q.double(), k.double(), v.double(), g=g.double(), output_final_state=True)
    o, s = chunk_decay_attention_cpu(q, k, v, g=g, output_final_state=True, chunk_size=chunk_size)
    assert o.dtype == torch.float32 and s.dtype == torch.float32
    check_errors({"o": rel_error(o, o64), "state": rel_error(s, s64)})
