"""The root of the kernels' chain of comparisons: SPEC §1's recurrence as scalar loops (initial states, a scale,
several heads, packed sequences of ragged lengths) against the readable definition (the recurrent and the
parallel form) and the CPU path's chunked form in float64, the gradients of the recurrence against finite
differences, and the forms against each other, forward and backward. The kernel tests compare with
:func:`parallel_decay_attention` in float64. Every error is held to 8x what it measured (``error_bounds``)."""
import math

import pytest
import torch

from error_bounds import check_errors, max_abs, rel_error
from fuxi_linear.ops import (
    DecayMode,
    chunk_decay_attention,
    chunk_decay_attention_cpu,
    decay_attention_step,
    parallel_decay_attention,
    recurrent_decay_attention,
)

F64 = torch.float64
NONE, PER_TOKEN, PER_HEAD = DecayMode.NONE, DecayMode.PER_TOKEN, DecayMode.PER_HEAD


def _inputs(B=2, T=37, H=3, K=4, V=5, decay=PER_TOKEN, h0=True, shared_qk=False, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    Bq = 1 if shared_qk else B
    q = torch.randn(Bq, T, H, K, generator=g, dtype=dtype)
    k = torch.randn(Bq, T, H, K, generator=g, dtype=dtype)
    v = torch.randn(B, T, H, V, generator=g, dtype=dtype)
    kw = {}
    if decay == PER_TOKEN:
        kw["g"] = torch.nn.functional.logsigmoid(torch.randn(B, T, H, generator=g, dtype=dtype) + 2)
    elif decay == PER_HEAD:
        kw["g_gamma"] = -torch.rand(H, generator=g, dtype=dtype)
    if h0:
        kw["initial_state"] = torch.randn(B, H, K, V, generator=g, dtype=dtype)
    return q, k, v, kw


def _hand_recurrence(q, k, v, g, scale, h0, cu_seqlens):
    """SPEC §1 as scalar loops, no tensor algebra: for each packed sequence n and head h, starting from
    ``h0[n, h]``, ``S[i][j] <- exp(g_t) S[i][j] + k_t[i] v_t[j]``, ``o_t[j] = scale sum_i q_t[i] S[i][j]``.

    q, k: ``(total, H, K)``, v: ``(total, H, V)``, g: ``(total, H)`` log-decays, h0: ``(N, H, K, V)``; returns
    ``o (total, H, V)`` and the final states ``(N, H, K, V)``."""
    q, k, v, g, h0, cu = q.tolist(), k.tolist(), v.tolist(), g.tolist(), h0.tolist(), cu_seqlens.tolist()
    H, K, V = len(q[0]), len(q[0][0]), len(v[0][0])
    out = [[[0.0] * V for _ in range(H)] for _ in q]
    finals = []
    for n in range(len(cu) - 1):
        finals.append([])
        for h in range(H):
            S = [row[:] for row in h0[n][h]]
            for t in range(cu[n], cu[n + 1]):
                a = math.exp(g[t][h])
                S = [[a * S[i][j] + k[t][h][i] * v[t][h][j] for j in range(V)] for i in range(K)]
                out[t][h] = [scale * sum(q[t][h][i] * S[i][j] for i in range(K)) for j in range(V)]
            finals[n].append(S)
    return torch.tensor(out, dtype=F64), torch.tensor(finals, dtype=F64)


LENGTHS = [4, 1, 7, 3]  # packed, ragged


@pytest.mark.parametrize("decay", [PER_TOKEN, PER_HEAD, NONE])
def test_forms_equal_the_hand_recurrence(decay):
    """Initial states, scale 0.7, 2 heads, 4 packed sequences of ragged lengths: every form's outputs and final
    states equal the scalar loops to float64 rounding."""
    gen = torch.Generator().manual_seed(5)
    total, H, K, V, scale = sum(LENGTHS), 2, 3, 2, 0.7
    q, k = (torch.randn(1, total, H, K, generator=gen, dtype=F64) for _ in range(2))
    v = torch.randn(1, total, H, V, generator=gen, dtype=F64)
    h0 = torch.randn(len(LENGTHS), H, K, V, generator=gen, dtype=F64)
    cu = torch.tensor([0] + LENGTHS).cumsum(0)
    g = torch.nn.functional.logsigmoid(torch.randn(1, total, H, generator=gen, dtype=F64) + 1)
    g_gamma = -torch.rand(H, generator=gen, dtype=F64)
    kw = {PER_TOKEN: dict(g=g), PER_HEAD: dict(g_gamma=g_gamma), NONE: {}}[decay]
    per_token = {PER_TOKEN: g[0], PER_HEAD: g_gamma.expand(total, H), NONE: torch.zeros(total, H, dtype=F64)}[decay]
    o_hand, s_hand = _hand_recurrence(q[0], k[0], v[0], per_token, scale, h0, cu)
    assert o_hand.abs().max() > 0.5 and s_hand.abs().max() > 0.5
    forms = {"recurrent": recurrent_decay_attention, "parallel": parallel_decay_attention,
             "chunk2": lambda *a, **kw: chunk_decay_attention_cpu(*a, chunk_size=2, **kw)}
    errors = {}
    for name, fn in forms.items():
        o, s = fn(q, k, v, scale=scale, initial_state=h0, output_final_state=True, cu_seqlens=cu, **kw)
        errors[f"{name}_o"] = max_abs(o[0], o_hand)
        errors[f"{name}_state"] = max_abs(s, s_hand)
    check_errors(errors)


def test_recurrence_gradients_are_the_finite_differences():
    """Autograd through the recurrence (what every other form and the kernels are compared with, through the
    chain) against central finite differences for every input -- q, k, v, g or g_gamma, the initial states --
    with a scale and packed ragged sequences."""
    gen = torch.Generator().manual_seed(6)
    lengths, H, K, V = [3, 1, 4], 2, 2, 2
    total = sum(lengths)
    cu = torch.tensor([0] + lengths).cumsum(0)
    q, k = (torch.randn(1, total, H, K, generator=gen, dtype=F64, requires_grad=True) for _ in range(2))
    v = torch.randn(1, total, H, V, generator=gen, dtype=F64, requires_grad=True)
    g = (-torch.rand(1, total, H, generator=gen, dtype=F64)).requires_grad_()
    g_gamma = (-torch.rand(H, generator=gen, dtype=F64)).requires_grad_()
    h0 = torch.randn(len(lengths), H, K, V, generator=gen, dtype=F64, requires_grad=True)

    def per_token(q, k, v, g, h0):
        return recurrent_decay_attention(q, k, v, g=g, scale=0.6, initial_state=h0, output_final_state=True,
                                         cu_seqlens=cu)

    def per_head(q, k, v, g_gamma, h0):
        return recurrent_decay_attention(q, k, v, g_gamma=g_gamma, scale=0.6, initial_state=h0,
                                         output_final_state=True, cu_seqlens=cu)

    assert torch.autograd.gradcheck(per_token, (q, k, v, g, h0), eps=1e-6, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradcheck(per_head, (q, k, v, g_gamma, h0), eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("decay", [PER_TOKEN, PER_HEAD, NONE])
@pytest.mark.parametrize("h0", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 8, 64])
def test_forms_agree(decay, h0, chunk_size):
    q, k, v, kw = _inputs(decay=decay, h0=h0)
    o_r, s_r = recurrent_decay_attention(q, k, v, output_final_state=True, **kw)
    o_p, s_p = parallel_decay_attention(q, k, v, output_final_state=True, **kw)
    o_c, s_c = chunk_decay_attention_cpu(q, k, v, output_final_state=True, chunk_size=chunk_size, **kw)
    check_errors({"parallel_o": max_abs(o_p, o_r), "parallel_state": max_abs(s_p, s_r),
                  "chunk_o": max_abs(o_c, o_r), "chunk_state": max_abs(s_c, s_r)})


@pytest.mark.parametrize("decay", [PER_TOKEN, PER_HEAD])
def test_gradients_agree(decay):
    q, k, v, kw = _inputs(T=21, decay=decay)
    leaves = [q, k, v] + list(kw.values())
    names = ["q", "k", "v"] + list(kw)
    for t in leaves:
        t.requires_grad_(True)
    do = torch.randn(v.shape, dtype=F64)
    dS = torch.randn(kw["initial_state"].shape, dtype=F64)
    grads = []
    for fn, extra in ((recurrent_decay_attention, {}), (chunk_decay_attention_cpu, {"chunk_size": 8}),
                      (parallel_decay_attention, {})):
        o, s = fn(q, k, v, output_final_state=True, **kw, **extra)
        grads.append(torch.autograd.grad((o * do).sum() + (s * dS).sum(), leaves))
    errors = {}
    for form, other in (("chunk", grads[1]), ("parallel", grads[2])):
        errors.update({f"{form}_d{n}": max_abs(b, a) for n, a, b in zip(names, grads[0], other)})
    check_errors(errors)


def test_packed_equals_separate_sequences():
    lengths = [5, 1, 14, 1, 3]
    q, k, v, kw = _inputs(B=1, T=sum(lengths), decay=PER_TOKEN, h0=False)
    h0 = torch.randn(len(lengths), 3, 4, 5, dtype=F64)
    cu = torch.tensor([0] + lengths).cumsum(0)
    o_c, s_c = chunk_decay_attention_cpu(q, k, v, g=kw["g"], initial_state=h0, output_final_state=True,
                                         cu_seqlens=cu, chunk_size=4)
    o_p, s_p = parallel_decay_attention(q, k, v, g=kw["g"], initial_state=h0, output_final_state=True,
                                        cu_seqlens=cu)
    errors = {}
    for n in range(len(lengths)):
        a, b = int(cu[n]), int(cu[n + 1])
        o_n, s_n = recurrent_decay_attention(q[:, a:b], k[:, a:b], v[:, a:b], g=kw["g"][:, a:b],
                                             initial_state=h0[n:n + 1], output_final_state=True)
        for form, o, s in (("chunk", o_c, s_c), ("parallel", o_p, s_p)):
            errors[f"{form}_o_{n}"] = max_abs(o[:, a:b], o_n)
            errors[f"{form}_state_{n}"] = max_abs(s[n], s_n[0])
    check_errors(errors)


def test_shared_qk_broadcasts_and_sums_gradient():
    q, k, v, kw = _inputs(B=3, decay=NONE, h0=False, shared_qk=True)
    q.requires_grad_(True)
    o, _ = chunk_decay_attention_cpu(q, k, v, chunk_size=8)
    o_full, _ = recurrent_decay_attention(q.detach().expand(3, -1, -1, -1).contiguous(), k.expand(3, -1, -1, -1), v)
    (o.sum()).backward()
    expected = sum(torch.autograd.grad(recurrent_decay_attention(q, k, v[b:b + 1])[0].sum(), q)[0] for b in range(3))
    assert q.grad.shape == q.shape
    check_errors({"o": max_abs(o, o_full), "dq": max_abs(q.grad, expected)})


def test_decode_after_prefill_equals_longer_prefill():
    q, k, v, kw = _inputs(T=30, decay=PER_TOKEN, h0=True)
    o_all, s_all = chunk_decay_attention(q, k, v, output_final_state=True, **kw)
    _, state = chunk_decay_attention(q[:, :25], k[:, :25], v[:, :25], g=kw["g"][:, :25],
                                     initial_state=kw["initial_state"], output_final_state=True)
    errors = {}
    for t in range(25, 30):
        o_t, state = decay_attention_step(q[:, t], k[:, t], v[:, t], state, g=kw["g"][:, t])
        errors[f"step_o_{t}"] = max_abs(o_t, o_all[:, t])
    errors["state"] = max_abs(state, s_all)
    check_errors(errors)


def test_step_with_state_pool_and_per_head_decay():
    pool = torch.randn(6, 2, 3, 4, dtype=F64)
    before = pool.clone()
    rows = torch.tensor([4, 1])
    q, k, v = torch.randn(2, 2, 3, dtype=F64), torch.randn(2, 2, 3, dtype=F64), torch.randn(2, 2, 4, dtype=F64)
    gg = torch.tensor([-0.5, -0.1], dtype=F64)
    o, out = decay_attention_step(q, k, v, pool, g_gamma=gg, scale=0.5, state_indices=rows)
    assert out is pool
    errors = {}
    for n, r in enumerate(rows.tolist()):
        S = torch.exp(gg)[:, None, None] * before[r] + k[n, :, :, None] * v[n, :, None, :]
        errors[f"state_{r}"] = max_abs(pool[r], S)
        errors[f"o_{n}"] = max_abs(o[n], 0.5 * torch.einsum("hk,hkv->hv", q[n], S))
    check_errors(errors)
    untouched = [i for i in range(6) if i not in rows.tolist()]
    assert torch.equal(pool[untouched], before[untouched])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_inputs_are_computed_in_float32(dtype):
    """Half inputs: the output comes back in the input dtype (only its rounding to that dtype is lost), the
    final state in float32 at float32 accuracy (it never passes through the half dtype)."""
    q, k, v, kw = _inputs(decay=PER_TOKEN, h0=False, dtype=torch.float32)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    o, s = chunk_decay_attention(q, k, v, output_final_state=True, **kw)
    assert o.dtype == dtype and s.dtype == torch.float32
    o64, s64 = recurrent_decay_attention(q.double(), k.double(), v.double(), g=kw["g"].double(),
                                         output_final_state=True)
    check_errors({"o": rel_error(o, o64), "o_rounded": rel_error(o, o64.to(dtype)), "state": rel_error(s, s64)})
