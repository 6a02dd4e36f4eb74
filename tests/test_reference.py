"""The three reference forms of the operator agree in float64, forward and backward."""
import pytest
import torch

from fuxi_linear.ops import (
    chunk_decay_attention,
    chunk_decay_attention_reference,
    decay_attention_step,
    parallel_decay_attention,
    recurrent_decay_attention,
)

F64 = torch.float64


def _inputs(B=2, T=37, H=3, K=4, V=5, decay="g", h0=True, shared_qk=False, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    Bq = 1 if shared_qk else B
    q = torch.randn(Bq, T, H, K, generator=g, dtype=dtype)
    k = torch.randn(Bq, T, H, K, generator=g, dtype=dtype)
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    kw = {}
    if decay == "g":
        kw["g"] = torch.nn.functional.logsigmoid(torch.randn(B, T, H, generator=g, dtype=dtype) + 2)
    elif decay == "g_gamma":
        kw["g_gamma"] = -torch.rand(H, generator=g, dtype=dtype)
    if h0:
        kw["initial_state"] = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    return q, k, v, kw


def _hand_recurrence(q, k, v, g):
    """Scalar loops for one sequence and head: the definition with no tensor algebra."""
    T, K = q.shape
    V = v.shape[1]
    S = [[0.0] * V for _ in range(K)]
    out = []
    for t in range(T):
        a = float(torch.exp(g[t]))
        S = [[a * S[i][j] + float(k[t, i] * v[t, j]) for j in range(V)] for i in range(K)]
        out.append([sum(float(q[t, i]) * S[i][j] for i in range(K)) for j in range(V)])
    return torch.tensor(out, dtype=F64)


def test_recurrent_form_is_the_definition():
    q, k, v, kw = _inputs(B=1, T=9, H=1, K=3, V=2, h0=False)
    o, _ = recurrent_decay_attention(q, k, v, **kw)
    assert torch.allclose(o[0, :, 0], _hand_recurrence(q[0, :, 0], k[0, :, 0], v[0, :, 0], kw["g"][0, :, 0]),
                          rtol=0, atol=1e-12)


@pytest.mark.parametrize("decay", ["g", "g_gamma", None])
@pytest.mark.parametrize("h0", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_forms_agree(decay, h0, chunk_size):
    q, k, v, kw = _inputs(decay=decay, h0=h0)
    o_r, s_r = recurrent_decay_attention(q, k, v, output_final_state=True, **kw)
    o_p, s_p = parallel_decay_attention(q, k, v, output_final_state=True, **kw)
    o_c, s_c = chunk_decay_attention_reference(q, k, v, output_final_state=True, chunk_size=chunk_size, **kw)
    for o, s in ((o_p, s_p), (o_c, s_c)):
        assert (o - o_r).abs().max() < 1e-10 and (s - s_r).abs().max() < 1e-10


@pytest.mark.parametrize("decay", ["g", "g_gamma"])
def test_gradients_agree(decay):
    q, k, v, kw = _inputs(T=21, decay=decay)
    leaves = [q, k, v] + list(kw.values())
    for t in leaves:
        t.requires_grad_(True)
    do = torch.randn(v.shape, dtype=F64)
    dS = torch.randn(kw["initial_state"].shape, dtype=F64)
    grads = []
    for fn, extra in ((recurrent_decay_attention, {}), (chunk_decay_attention_reference, {"chunk_size": 8})):
        o, s = fn(q, k, v, output_final_state=True, **kw, **extra)
        grads.append(torch.autograd.grad((o * do).sum() + (s * dS).sum(), leaves))
    for a, b in zip(*grads):
        assert (a - b).abs().max() < 1e-10


def test_packed_equals_separate_sequences():
    lengths = [5, 1, 14, 1, 3]
    q, k, v, kw = _inputs(B=1, T=sum(lengths), decay="g", h0=False)
    h0 = torch.randn(len(lengths), 3, 4, 5, dtype=F64)
    cu = torch.tensor([0] + lengths).cumsum(0)
    o_c, s_c = chunk_decay_attention_reference(q, k, v, g=kw["g"], initial_state=h0, output_final_state=True,
                                               cu_seqlens=cu, chunk_size=4)
    o_p, s_p = parallel_decay_attention(q, k, v, g=kw["g"], initial_state=h0, output_final_state=True,
                                        cu_seqlens=cu)
    for n in range(len(lengths)):
        a, b = int(cu[n]), int(cu[n + 1])
        o_n, s_n = recurrent_decay_attention(q[:, a:b], k[:, a:b], v[:, a:b], g=kw["g"][:, a:b],
                                             initial_state=h0[n:n + 1], output_final_state=True)
        assert (o_c[:, a:b] - o_n).abs().max() < 1e-10 and (s_c[n] - s_n[0]).abs().max() < 1e-10
        assert (o_p[:, a:b] - o_n).abs().max() < 1e-10 and (s_p[n] - s_n[0]).abs().max() < 1e-10


def test_shared_qk_broadcasts_and_sums_gradient():
    q, k, v, kw = _inputs(B=3, decay=None, h0=False, shared_qk=True)
    q.requires_grad_(True)
    o, _ = chunk_decay_attention_reference(q, k, v, chunk_size=8)
    o_full, _ = recurrent_decay_attention(q.detach().expand(3, -1, -1, -1).contiguous(), k.expand(3, -1, -1, -1), v)
    assert (o - o_full).abs().max() < 1e-10
    (o.sum()).backward()
    expected = sum(torch.autograd.grad(recurrent_decay_attention(q, k, v[b:b + 1])[0].sum(), q)[0] for b in range(3))
    assert q.grad.shape == q.shape and (q.grad - expected).abs().max() < 1e-10


def test_decode_after_prefill_equals_longer_prefill():
    q, k, v, kw = _inputs(T=30, decay="g", h0=True)
    o_all, s_all = chunk_decay_attention(q, k, v, output_final_state=True, **kw)
    _, state = chunk_decay_attention(q[:, :25], k[:, :25], v[:, :25], g=kw["g"][:, :25],
                                     initial_state=kw["initial_state"], output_final_state=True)
    for t in range(25, 30):
        o_t, state = decay_attention_step(q[:, t], k[:, t], v[:, t], state, g=kw["g"][:, t])
        assert (o_t - o_all[:, t]).abs().max() < 1e-10
    assert (state - s_all).abs().max() < 1e-10


def test_step_with_state_pool_and_per_head_decay():
    pool = torch.randn(6, 2, 3, 4, dtype=F64)
    before = pool.clone()
    rows = torch.tensor([4, 1])
    q, k, v = torch.randn(2, 2, 3, dtype=F64), torch.randn(2, 2, 3, dtype=F64), torch.randn(2, 2, 4, dtype=F64)
    gg = torch.tensor([-0.5, -0.1], dtype=F64)
    o, out = decay_attention_step(q, k, v, pool, g_gamma=gg, scale=0.5, state_indices=rows)
    assert out is pool
    for n, r in enumerate(rows.tolist()):
        S = torch.exp(gg)[:, None, None] * before[r] + k[n, :, :, None] * v[n, :, None, :]
        assert torch.allclose(pool[r], S) and torch.allclose(o[n], 0.5 * torch.einsum("hk,hkv->hv", q[n], S))
    untouched = [i for i in range(6) if i not in rows.tolist()]
    assert torch.equal(pool[untouched], before[untouched])


def test_half_precision_inputs_return_input_dtype():
    q, k, v, kw = _inputs(decay="g", h0=False, dtype=torch.float32)
    o32, s32 = chunk_decay_attention(q, k, v, output_final_state=True, **kw)
    o16, s16 = chunk_decay_attention(q.bfloat16(), k.bfloat16(), v.bfloat16(), output_final_state=True, **kw)
    assert o16.dtype == torch.bfloat16 and s16.dtype == torch.float32
    rel = (o16.float() - o32).norm() / o32.norm()
    assert rel < 2e-2
