"""Property tests of the decay-attention operator (SPEC §1) on both backends, against the recurrence written out
here in float64: random small shapes and lengths, decays that are absent, per head or per token (zeros,
moderate, strong, mixed), packed sequences (``cu_seqlens``), shared q/k, initial states, every input dtype;
the output, the final state, one decode step after the prefill and (float32/float64) every gradient.

Errors are measured against what float rounding allows: the same recurrence on absolute values,
``|S|_t = exp(g_t) |S|_{t-1} + |k_t|^T |v_t|``, ``|o|_t = |q_t| |S|_t``, bounds every term that was summed, so
``|o - o_ref| <= tol * |o|_t`` elementwise, tol a small multiple of the dtype's rounding unit (plus the
CPU backend's documented clamp of decay factors at exp(-80), and a half output's underflow). Gradients:
the largest error against the largest gradient of the absolute-value problem (the decay's: the size of the
products it is summed from). Measured on this CPU (2026-12-05) over 1,000 examples of the CPU backend
and 200 (+ 50 with gradients) of the Triton interpreter (HYPOTHESIS_PROFILE-free runs of these strategies),
worst error / bound, CPU | Triton:

* float64: 1.0e-13 | 7.0e-16 (the CPU path's decays come from a float64 cumsum: strong decays reach |G| ~ 4e3,
  whose differences keep ~4e3 x 1.1e-16) -> tol 1e-12;
* float32: 2.8e-7 | 1.9e-7 -> 3e-6; bfloat16: 3.9e-3 | 6.7e-3 (the output's rounding, 2^-8) -> 4e-2;
  float16: 4.8e-4 | 5.6e-4 (2^-11) -> 5e-3;
* gradients, float32: 1.9e-7 | 2.7e-7 -> 3e-6; float64: 1.5e-15 | 5.4e-16 -> 2e-14.

The Triton examples run in the interpreter (slow: ~0.3 s a call), so that test draws few, tiny cases.
"""
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fuxi_linear.ops import DecayMode, chunk_decay_attention, decay_attention_step, decay_plan
from property_settings import examples

#: where the Triton backend runs: compiled on a GPU, else in the interpreter on the CPU (tests/conftest.py)
TRITON_DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
#: the CPU backend's documented clamp of decay factors (exp(-80))
CLAMP = math.exp(getattr(decay_plan, "MIN_LOG_DECAY", -80.0))
#: half of the smallest subnormal of each dtype: where an output underflows, its rounding error
SUBNORMAL = {torch.float64: 0.0, torch.float32: 0.0, torch.bfloat16: 2.0 ** -134, torch.float16: 2.0 ** -25}
#: |error| / |o|-bound per input dtype (see the module docstring for the measurements)
TOL = {torch.float64: 1e-12, torch.float32: 3e-6, torch.bfloat16: 4e-2, torch.float16: 5e-3}
GRAD_TOL = {torch.float64: 2e-14, torch.float32: 3e-6}


@pytest.fixture(scope="module", autouse=True)
def small_triton_chunks():
    """Chunks of 16 tokens in the Triton launcher (lengths up to ~40 then span several chunks), NaN-filled
    outputs (an element a kernel forgets to write fails the comparison)."""
    from fuxi_linear.ops import triton_launchers as launchers

    with pytest.MonkeyPatch.context() as mp:
        for name, value in (("DEFAULT_CHUNK_SIZE", 16), ("POISON_OUTPUTS", True), ("FP32_DOT_PRECISION", "ieee")):
            if hasattr(launchers, name):
                mp.setattr(launchers, name, value)
        yield


# ------------------------------------------------------------------------------------------ the math, float64

def recurrence(q, k, v, g, h0, scale):
    """``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t`` for one batch of sequences, float64.
    q, k: (N, T, H, K); v: (N, T, H, V); g: (N, T, H); h0: (N, H, K, V) or None. Returns (o, S_T)."""
    N, T, H, K = q.shape
    S = torch.zeros(N, H, K, v.shape[-1], dtype=torch.float64) if h0 is None else h0.clone()
    out = []
    for t in range(T):
        S = torch.exp(g[:, t])[..., None, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(scale * torch.einsum("nhk,nhkv->nhv", q[:, t], S))
    return torch.stack(out, 1), S


def math_of(case, decay=True):
    """(o, final states, |o| bound, |S| bound) of a case in float64, sequence by sequence; ``decay=False``: of
    the same case without any decay (what the CPU backend's decay clamp is measured against)."""
    q, k, v, g, h0 = (None if x is None else x.double() for x in
                      (case["q"], case["k"], case["v"], case["g_full"], case["h0"]))
    B, T, H, _ = v.shape
    q, k = q.expand(B, -1, -1, -1), k.expand(B, -1, -1, -1)
    g = g if decay else torch.zeros_like(g)
    bounds = case["bounds"]  # [(batch row, start, stop)] of each sequence
    outs, absouts, states, absstates = [torch.zeros_like(v) for _ in range(2)] + [[], []]
    for n, (b, lo, hi) in enumerate(bounds):
        sl = (slice(b, b + 1), slice(lo, hi))
        init = None if h0 is None else h0[n:n + 1]
        o, s = recurrence(q[sl], k[sl], v[sl], g[sl], init, case["scale"])
        oa, sa = recurrence(q[sl].abs(), k[sl].abs(), v[sl].abs(), g[sl], None if init is None else init.abs(),
                            abs(case["scale"]))
        outs[b, lo:hi], absouts[b, lo:hi] = o[0], oa[0]
        states.append(s[0])
        absstates.append(sa[0])
    return outs, torch.stack(states), absouts, torch.stack(absstates)


# --------------------------------------------------------------------------------------------- the cases

def _log_decays(gen, shape, style):
    """Log-decays <= 0 of one style: zeros (no decay), weak, strong (exp underflows in float32), or mixed."""
    weak = -torch.rand(shape, generator=gen, dtype=torch.float64) * 0.3
    strong = -5.0 - torch.rand(shape, generator=gen, dtype=torch.float64) * 95.0
    if style == "zero":
        return torch.zeros(shape, dtype=torch.float64)
    if style == "weak":
        return weak
    if style == "strong":
        return strong
    pick = torch.randint(0, 3, shape, generator=gen)
    return torch.where(pick == 0, torch.zeros(shape, dtype=torch.float64), torch.where(pick == 1, weak, strong))


@st.composite
def operator_cases(draw, max_len, dims, dtypes):
    dtype = draw(st.sampled_from(dtypes))
    H = draw(st.integers(1, 3))
    K, V = draw(st.sampled_from(dims)), draw(st.sampled_from(dims))
    packed = draw(st.booleans())
    if packed:
        lengths = draw(st.lists(st.integers(1, max_len), min_size=1, max_size=4))
        B, T = 1, sum(lengths)
        cuts = [0] + list(torch.tensor(lengths).cumsum(0).tolist())
        bounds = [(0, cuts[i], cuts[i + 1]) for i in range(len(lengths))]
    else:
        B, T = draw(st.integers(1, 3)), draw(st.integers(1, max_len))
        bounds, cuts = [(b, 0, T) for b in range(B)], None
    shared_qk = not packed and B > 1 and draw(st.booleans())
    decay = draw(st.sampled_from([DecayMode.NONE, DecayMode.PER_HEAD, DecayMode.PER_TOKEN]))
    style = draw(st.sampled_from(["zero", "weak", "strong", "mixed"]))
    h0 = draw(st.booleans())
    scale = draw(st.sampled_from([1.0, 0.5, 1 / math.sqrt(K)]))
    step = draw(st.booleans())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))
    decay_dtype = torch.float64 if dtype == torch.float64 else torch.float32

    def rnd(*shape):
        return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype)

    Bq = 1 if shared_qk else B
    case = dict(dtype=dtype, q=rnd(Bq, T, H, K), k=rnd(Bq, T, H, K), v=rnd(B, T, H, V), scale=scale,
                cu=None if cuts is None else torch.tensor(cuts, dtype=torch.int64), bounds=bounds,
                h0=rnd(len(bounds), H, K, V).to(decay_dtype) if h0 else None, g=None, g_gamma=None,
                step=step, desc=f"{dtype} B={B} T={T} H={H} K={K} V={V} packed={packed} shared={shared_qk} "
                                f"decay={decay}/{style} h0={h0} scale={scale:.3g}")
    if decay == DecayMode.PER_TOKEN:
        case["g"] = _log_decays(gen, (B, T, H), style).to(decay_dtype)
        case["g_full"] = case["g"]
    else:
        per_head = (_log_decays(gen, (H,), style).to(decay_dtype) if decay == DecayMode.PER_HEAD else
                    torch.zeros(H, dtype=decay_dtype))
        case["g_gamma"] = per_head if decay == DecayMode.PER_HEAD else None
        case["g_full"] = per_head.view(1, 1, H).expand(B, T, H)
    # one more token per sequence for the decode step after the prefill
    N = len(bounds)
    case["next"] = dict(q=rnd(N, H, K), k=rnd(N, H, K), v=rnd(N, H, V),
                        g=_log_decays(gen, (N, H), style).to(decay_dtype))
    return case


def _within(name, got, want, bound, tol, desc, slack=0.0):
    """``|got - want| <= tol * bound + slack`` elementwise (``slack``: a tensor or float of absolute error allowed
    on top: the CPU backend's decay clamp, the output dtype's underflow)."""
    got = got.detach().double()
    assert not torch.isnan(got).any(), f"{name}: NaN in the result ({desc})"
    excess = (got - want).abs() - tol * bound - slack
    if got.numel() and float(excess.max()) > 0:
        worst = float(((got - want).abs() - slack).div(bound + 1e-300).max())
        raise AssertionError(f"{name}: error {worst:.3g} x its bound > {tol:g} ({desc})")


def _slack(case, backend, nodecay_bound):
    """Absolute error allowed besides rounding: the CPU backend clamps decay factors at exp(-80) (a
    documented shortcut, :data:`fuxi_linear.ops.decay_plan.MIN_LOG_DECAY`: each term may keep up to exp(-80) of
    its undecayed size), and a half output rounds to its smallest subnormal near zero."""
    slack = (CLAMP * nodecay_bound) if backend == "cpu" else 0.0
    return slack + SUBNORMAL[case["dtype"]]


def _to(device):
    return lambda t: None if t is None else t.to(device)


def check_case(case, backend):
    dtype, desc = case["dtype"], case["desc"] + f" backend={backend}"
    on = _to(TRITON_DEVICE if backend == "triton" else "cpu")
    o, state = chunk_decay_attention(on(case["q"]), on(case["k"]), on(case["v"]), g=on(case["g"]),
                                     g_gamma=on(case["g_gamma"]), scale=case["scale"], initial_state=on(case["h0"]),
                                     output_final_state=True, cu_seqlens=on(case["cu"]), backend=backend)
    o, state = o.cpu(), state.cpu()
    assert o.dtype == dtype and o.shape == case["v"].shape, desc
    want_o, want_s, bound_o, bound_s = math_of(case)
    _, _, free_o, free_s = math_of(case, decay=False)
    _within("output", o, want_o, bound_o, TOL[dtype], desc, _slack(case, backend, free_o))
    _within("final state", state, want_s, bound_s, TOL[dtype], desc, _slack(case, backend, free_s))
    if case["step"]:
        nxt = case["next"]
        o1, s1 = decay_attention_step(on(nxt["q"]), on(nxt["k"]), on(nxt["v"]), on(state.clone()), g=on(nxt["g"]),
                                      scale=case["scale"], backend=backend)
        o1, s1 = o1.cpu(), s1.cpu()
        g1 = nxt["g"].double()
        want_s1 = torch.exp(g1)[..., None, None] * want_s + nxt["k"].double()[..., None] * nxt["v"].double()[..., None, :]
        want_o1 = case["scale"] * torch.einsum("nhk,nhkv->nhv", nxt["q"].double(), want_s1)
        bound_s1 = torch.exp(g1)[..., None, None] * bound_s + (nxt["k"].double().abs()[..., None] *
                                                               nxt["v"].double().abs()[..., None, :])
        bound_o1 = abs(case["scale"]) * torch.einsum("nhk,nhkv->nhv", nxt["q"].double().abs(), bound_s1)
        # the step's input state is the prefill's own: the decay clamp of the prefill carries into it
        slack_s1 = _slack(case, backend, free_s) + (state.double() - want_s).abs().max()
        _within("decode step state", s1, want_s1, bound_s1, TOL[dtype], desc, slack_s1)
        slack_o1 = abs(case["scale"]) * torch.einsum("nhk,nhkv->nhv", nxt["q"].double().abs(),
                                                     torch.full_like(bound_s1, float(slack_s1.max())))
        _within("decode step output", o1, want_o1, bound_o1, TOL[dtype], desc, slack_o1 + SUBNORMAL[dtype])


def _reference_gradients(case, leaves, wo, ws, absolute, decay=True):
    """Gradients of ``<o, wo> + <S_T, ws>`` through the float64 recurrence. ``absolute``: of the same problem
    on absolute values (|q|, |k|, |v|, |h0|, |wo|, |ws|; the decays as they are), whose gradient is the sum of
    the absolute values of the terms that make each true gradient -- the scale its rounding error has."""
    ref = {n: (t.detach().double().cpu().abs() if absolute and n not in ("g", "g_gamma") else
               t.detach().double().cpu()).requires_grad_() for n, t in leaves.items()}
    if "g" in ref:
        g_full = ref["g"]
    elif "g_gamma" in ref:
        g_full = ref["g_gamma"].view(1, 1, -1).expand_as(case["g_full"])
    else:
        g_full = case["g_full"].double()
    want_o, want_s, _, _ = math_of(dict(case, q=ref["q"], k=ref["k"], v=ref["v"], h0=ref.get("h0"), g_full=g_full,
                                        scale=abs(case["scale"]) if absolute else case["scale"]), decay=decay)
    wo, ws = (wo.abs(), ws.abs()) if absolute else (wo, ws)
    ((want_o * wo).sum() + (want_s * ws).sum()).backward()
    return {n: t.grad for n, t in ref.items()}


def check_gradients(case, backend):
    """Every gradient (q, k, v, the decay, the initial state) of a random projection of the output and final
    state, against autograd through the float64 recurrence: the largest error within ``GRAD_TOL`` x the largest
    gradient of the absolute-value problem (the scale of each gradient's terms; normwise, since strong decays
    make many true gradients vanish below any rounding scale)."""
    dtype = case["dtype"]
    device = TRITON_DEVICE if backend == "triton" else "cpu"
    leaves = {n: case[n].to(device).detach().clone().requires_grad_() for n in ("q", "k", "v", "h0", "g", "g_gamma")
              if case[n] is not None}
    gen = torch.Generator().manual_seed(7)
    o, s = chunk_decay_attention(leaves["q"], leaves["k"], leaves["v"], g=leaves.get("g"),
                                 g_gamma=leaves.get("g_gamma"), scale=case["scale"], initial_state=leaves.get("h0"),
                                 output_final_state=True, cu_seqlens=_to(device)(case["cu"]), backend=backend)
    wo = torch.randn(o.shape, generator=gen, dtype=torch.float64)
    ws = torch.randn(s.shape, generator=gen, dtype=torch.float64)
    ((o.double().cpu() * wo).sum() + (s.double().cpu() * ws).sum()).backward()
    want = _reference_gradients(case, leaves, wo, ws, absolute=False)
    bound = _reference_gradients(case, leaves, wo, ws, absolute=True)
    free = _reference_gradients(case, leaves, wo, ws, absolute=True, decay=False)
    # the decay gradient is a sum over the sequence of products of the other inputs and their gradients (the
    # backward forms it from q.dq - k.dk and the like): its rounding scale is the size of those products
    def decay_scale(b):
        return sum(float((leaves[n].detach().double().cpu().abs() * b[n]).sum()) for n in ("q", "k", "h0")
                   if n in leaves)
    clamp = CLAMP if backend == "cpu" else 0.0
    ratios = {}
    for name, leaf in leaves.items():
        got = leaf.grad.double().cpu()
        decay = name in ("g", "g_gamma")
        scale = decay_scale(bound) if decay else float(bound[name].max())
        slack = clamp * (decay_scale(free) if decay else float(free[name].max()))
        ratios[f"d{name}"] = max(float((got - want[name]).abs().max()) - slack, 0.0) / max(scale, 1e-300)
        assert not torch.isnan(got).any(), f"d{name}: NaN ({case['desc']} backend={backend})"
    bad = {n: r for n, r in ratios.items() if not r <= GRAD_TOL[dtype]}
    assert not bad, (f"gradient errors (x their scale) above {GRAD_TOL[dtype]:g}: {bad} ({case['desc']} "
                     f"backend={backend}); all: {ratios}")


# ------------------------------------------------------------------------------------------------- tests

ALL_DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@settings(max_examples=examples(60))
@given(operator_cases(max_len=40, dims=[1, 3, 8, 16], dtypes=ALL_DTYPES))
def test_cpu_backend_equals_the_recurrence(case):
    check_case(case, "cpu")


@settings(max_examples=examples(25))
@given(operator_cases(max_len=24, dims=[2, 8], dtypes=[torch.float32, torch.float64]))
def test_cpu_backend_gradients_equal_the_recurrence(case):
    check_gradients(case, "cpu")


@settings(max_examples=examples(10))
@given(operator_cases(max_len=36, dims=[3, 8, 16], dtypes=ALL_DTYPES))
def test_triton_backend_equals_the_recurrence(case):
    check_case(case, "triton")


@settings(max_examples=examples(4))
@given(operator_cases(max_len=20, dims=[4, 8], dtypes=[torch.float32]))
def test_triton_backend_gradients_equal_the_recurrence(case):
    check_gradients(case, "triton")
