"""Triton kernels of the decay-attention operator against the float64 math (SPEC §1).

Without a GPU the kernels run under the Triton interpreter (``TRITON_INTERPRET=1``, set by
``kernel_helpers`` before Triton is imported), on CPU tensors, slow but exact; small shapes and chunk size 16
keep the file fast. With a GPU the same checks run compiled on CUDA, and the GPU-only tests (half precision,
> 2^31 elements, no recompilation for a new T) run too. Split-T, strided inputs, strong decays and compile-time
resources have their own files (``test_kernel_split.py``, ``test_kernel_numerics.py``,
``test_kernel_resources.py``).
"""
import pytest
import torch

from error_bounds import check_errors
from fuxi_linear.kernels import configs
from fuxi_linear.ops import chunk_decay_attention, decay_attention_step, decay_attention_step_cpu
from fuxi_linear.ops import parallel_decay_attention
from fuxi_linear.ops import triton_decay_attention as tda
from fuxi_linear.ops import triton_launchers as launchers
from kernel_helpers import (  # noqa: F401 (kernel_settings: autouse fixture)
    ALL_MODES, C, DECAYING_MODES, DEVICE, NONE, PER_HEAD, PER_TOKEN, check_against_math, gpu_only, kernel_settings,
    make_inputs, rel_rms,
)


# ---------------------------------------------------------------------------------------------- prefill

@pytest.mark.parametrize("h0", [False, True], ids=["h0off", "h0on"])
@pytest.mark.parametrize("T", [1, C - 1, C, C + 1, 3 * C + 5])
@pytest.mark.parametrize("mode", ALL_MODES)
def test_prefill_fwd_bwd(mode, T, h0):
    check_against_math(make_inputs(2, T, 2, 2, 8, mode, h0=h0))


@pytest.mark.parametrize("mode", DECAYING_MODES)
def test_prefill_without_final_state_and_scale(mode):
    check_against_math(make_inputs(2, 2 * C + 3, 2, 2, 8, mode, h0=True), scale=0.37, output_final_state=False)


@pytest.mark.parametrize(
    "H,K,V", [(4, 32, 32), (1, 32, 128), (16, 2, 8), (3, 5, 20)], ids=["H4K32V32", "H1K32V128", "H16K2V8", "odd"]
)
def test_prefill_head_dims(H, K, V):
    check_against_math(make_inputs(2, 2 * C + 5, H, K, V, PER_TOKEN, h0=True))
    check_against_math(make_inputs(1, C + 3, H, K, V, PER_HEAD))


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("h0", [False, True], ids=["h0off", "h0on"])
@pytest.mark.parametrize("small_heads", [True, False], ids=["small_heads", "general"])
def test_prefill_varlen(mode, h0, small_heads, monkeypatch):
    """Packed sequences, on both kernel families (K=2, V=8 picks the small-head kernels by default)."""
    monkeypatch.setattr(launchers, "SMALL_HEADS", small_heads)
    lengths = [1, C + 1, 1, 2 * C + 7, C, 3]
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    inputs = make_inputs(1, sum(lengths), 2, 2, 8, mode, h0=h0, n_states=len(lengths))
    check_against_math(inputs, cu_seqlens=cu)


def test_prefill_varlen_all_length_one():
    cu = torch.arange(6, device=DEVICE, dtype=torch.int64)
    check_against_math(make_inputs(1, 5, 2, 2, 8, PER_TOKEN, h0=True, n_states=5), cu_seqlens=cu)


@pytest.mark.parametrize("mode", [NONE, PER_TOKEN])
def test_prefill_shared_qk(mode):
    """q/k of batch size 1 serve B=3 sequences: read with batch stride 0, gradient summed over the batch."""
    inputs = make_inputs(3, 2 * C + 3, 1, 32, 40, mode, h0=True, shared_qk=True)
    check_against_math(inputs)


@pytest.mark.parametrize("H,K,V", [(2, 2, 8), (2, 32, 32)], ids=["small_heads", "general"])
def test_prefill_production_configs(H, K, V, monkeypatch):
    """The chunk lengths of ``fuxi_linear.kernels.configs`` (no override)."""
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", None)
    check_against_math(make_inputs(1, 2 * 64 + 5, H, K, V, PER_TOKEN, h0=True))


def test_prefill_default_chunk_64(monkeypatch):
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", 64)
    check_against_math(make_inputs(1, 3 * 64 + 5, 2, 2, 8, PER_TOKEN, h0=True))


# Provisional bounds of half-precision inputs ON A GPU (outputs and gradients are rounded to the input dtype;
# the decay gradients are differences of nearly cancelling terms; the products run in TF32), until the first
# GPU run records what they measure (the GPU suite's JSON, section "tests"). Estimated at the GPU test's shapes
# with the interpreter made to imitate TF32 products (operands rounded to 10 mantissa bits): bf16 <= 3.3e-3
# (outputs, dq/dk/dv, dg) and 8.7e-3 (dg_gamma); fp16 <= 3.0e-4, 1.4e-3 (dg), 1.3e-2 (dg_gamma); float32 with
# "tf32x3": <= 4.4e-7, 3.7e-6 (dg), 1.2e-5 (dg_gamma). About 3x headroom. On the CPU the interpreter computes
# bf16 inputs in float32 (only the rounding of outputs and gradients differs): there, as everywhere on the
# CPU, each test is held to 8x its own recorded error.
HALF_TOL = {
    torch.bfloat16: {"default": 1e-2, "dg_gamma": 4e-2},
    torch.float16: {"default": 1.5e-3, "dg": 5e-3, "dg_gamma": 4e-2},
}


@pytest.mark.parametrize("mode", DECAYING_MODES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_prefill_half_precision(dtype, mode):
    """Half inputs: fp32 accumulation inside, outputs and q/k/v gradients in the input dtype."""
    x = make_inputs(2, 2 * C + 5, 2, 4, 20, mode, h0=True, dtype=dtype)
    check_against_math(x, cuda_tol=HALF_TOL[dtype])


@pytest.mark.parametrize("mode", ALL_MODES)
def test_prefill_float64_exact(mode):
    """Float64 inputs run the kernels in float64: agreement with the math to float64 rounding."""
    inputs = make_inputs(2, 2 * C + 3, 2, 4, 20, mode, h0=True, dtype=torch.float64)
    check_against_math(inputs)


@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded"])
def test_decay_gradient_of_a_sequence_ignores_its_neighbours(packed):
    """Each sequence's dg is as accurate as alone next to a sequence whose decay gradient is ~10^8 times larger.

    The launcher forms ``dg`` as a reverse cumulative sum of the per-token ``dB = q . dq - k . dk`` over the
    whole flattened token axis (every sequence of the batch, one after the other), so the quiet sequences' sums
    start from the loud one's total. In float32 they would inherit its rounding: 2e-4 .. 6e-4 relative here
    (on a CPU, whose float32 cumsum accumulates in float64 and rounds only its outputs) against 1e-7 .. 4e-7
    with the float64 sum. The loud sequence has positive q, k, v, do (every ``dB`` of one sign: a large total),
    scaled by 100 (``dB`` scales as the 4th power)."""
    lengths = [2 * C + 3, C + 5, 2 * C]
    loud = 100.0
    if packed:
        x = make_inputs(1, sum(lengths), 2, 2, 8, PER_TOKEN, h0=True, n_states=3)
        cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
        rows = [(slice(0, 1), slice(int(cu[n]), int(cu[n + 1]))) for n in range(3)]
    else:
        x = make_inputs(3, max(lengths), 2, 2, 8, PER_TOKEN, h0=True)
        cu = None
        rows = [(slice(n, n + 1), slice(None)) for n in range(3)]
    for name in ("q", "k", "v"):
        x[name][rows[0]] = x[name][rows[0]].abs() * loud
    tri = {n: t.clone().requires_grad_() for n, t in x.items()}
    o, ht = chunk_decay_attention(**tri, output_final_state=True, cu_seqlens=cu, backend="triton")
    do, dht = torch.randn_like(o), torch.randn_like(ht)
    do[rows[0]] = do[rows[0]].abs() * loud
    torch.autograd.backward([o, ht], [do, dht])
    ref = {n: t.detach().double().requires_grad_() for n, t in x.items()}
    o2, ht2 = parallel_decay_attention(**ref, output_final_state=True, cu_seqlens=cu)
    torch.autograd.backward([o2, ht2], [do.double(), dht.double()])
    dg, dg_ref = tri["g"].grad, ref["g"].grad
    check_errors({f"dg_sequence_{n}": rel_rms(dg[rows[n]], dg_ref[rows[n]]) for n in range(3)})


def test_chunk_length_is_resolved_in_one_place(monkeypatch):
    """``resolve_chunk_size``: an explicit length, else ``DEFAULT_CHUNK_SIZE``, else 0 (each kernel's configured
    length); every kernel's plan then takes it as it is."""
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", None)
    assert launchers.resolve_chunk_size() == 0
    assert launchers.resolve_chunk_size(32) == 32
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", 64)
    assert launchers.resolve_chunk_size() == 64
    assert launchers.resolve_chunk_size(16) == 16  # an explicit length wins
    for bad in (24, 8, 16.0):
        with pytest.raises(ValueError, match="chunk_size must be a power of two >= 16"):
            launchers.resolve_chunk_size(bad)
    x = make_inputs(1, 5, 2, 32, 32, PER_TOKEN)
    call = launchers.prefill_call(x["q"], x["v"], x["g"], None, 1.0, None)
    for kernel in ("fwd", "bwd_dq", "bwd_dkv"):
        assert launchers._plan(kernel, call, 32).cfg.BT == 32
        assert launchers._plan(kernel, call, 0).cfg.BT == configs.prefill_config(kernel, 2, 32, 32, "ieee").BT


def test_prefill_bad_arguments():
    inputs = make_inputs(1, 4, 1, 2, 8, NONE)
    with pytest.raises(ValueError, match="chunk_size"):
        tda.chunk_decay_attention_triton(**inputs, chunk_size=24)
    big = make_inputs(1, 4, 1, 200, 8, NONE)
    with pytest.raises(ValueError, match="head dims"):
        tda.chunk_decay_attention_triton(**big)


# ----------------------------------------------------------------------------------------------- decode

@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("pool", [False, True], ids=["direct", "pool"])
def test_step_matches_float64_step(mode, pool):
    N, H, K, V, P = 4, 2, 32, 72, 7
    x = make_inputs(N, 1, H, K, V, mode)
    q, k, v = x["q"][:, 0], x["k"][:, 0], x["v"][:, 0]
    g = x["g"][:, 0] if mode == PER_TOKEN else None
    g_gamma = x.get("g_gamma")
    idx = torch.tensor([5, 0, 3, 6], device=DEVICE, dtype=torch.int32) if pool else None
    state = torch.randn(P if pool else N, H, K, V, device=DEVICE)
    expected = state.double().clone()
    o_ref, _ = decay_attention_step_cpu(
        q.double(), k.double(), v.double(), expected, g=None if g is None else g.double(),
        g_gamma=None if g_gamma is None else g_gamma.double(), state_indices=idx, scale=0.5,
    )
    ptr = state.data_ptr()
    o, out_state = decay_attention_step(
        q, k, v, state, g=g, g_gamma=g_gamma, state_indices=idx, scale=0.5, backend="triton"
    )
    assert out_state is state and state.data_ptr() == ptr
    assert o.shape == (N, H, V) and o.dtype == v.dtype
    check_errors({"o": rel_rms(o, o_ref), "state": rel_rms(state, expected)})
    if pool:  # rows not named by state_indices are untouched (bit for bit)
        untouched = [1, 2, 4]
        assert torch.equal(state[untouched].double(), expected[untouched])


def test_step_strided_state():
    """The state may be a strided view (e.g. a slice of a larger cache): updated in place through it."""
    N, H, K, V = 3, 2, 2, 8
    cache = torch.randn(N, H, K, V + 5, device=DEVICE)
    state = cache[..., :V]
    before_tail = cache[..., V:].clone()
    x = make_inputs(N, 1, H, K, V, PER_TOKEN)
    q, k, v, g = x["q"][:, 0], x["k"][:, 0], x["v"][:, 0], x["g"][:, 0]
    expected = state.double().clone()
    o_ref, _ = decay_attention_step_cpu(q.double(), k.double(), v.double(), expected, g=g.double())
    o, _ = decay_attention_step(q, k, v, state, g=g, backend="triton")
    check_errors({"o": rel_rms(o, o_ref), "state": rel_rms(cache[..., :V], expected)})
    assert torch.equal(cache[..., V:], before_tail)


@pytest.mark.parametrize("mode", DECAYING_MODES)
def test_decode_after_prefill_equals_longer_prefill(mode):
    B, T, H, K, V = 2, 2 * C + 3, 2, 2, 8
    x = make_inputs(B, T + 2, H, K, V, mode, h0=True)
    full_o, full_state = chunk_decay_attention(**x, output_final_state=True, backend="triton")
    part = {n: (t[:, :T] if n in ("q", "k", "v", "g") else t) for n, t in x.items()}
    o, state = chunk_decay_attention(**part, output_final_state=True, backend="triton")
    errors = {"prefix_o": rel_rms(o, full_o[:, :T])}
    for t in (T, T + 1):
        step_o, _ = decay_attention_step(
            x["q"][:, t], x["k"][:, t], x["v"][:, t], state,
            g=x["g"][:, t] if mode == PER_TOKEN else None, g_gamma=x.get("g_gamma"), backend="triton",
        )
        errors[f"step_o_{t - T}"] = rel_rms(step_o, full_o[:, t])
    errors["state"] = rel_rms(state, full_state)
    check_errors(errors)


# ---------------------------------------------------------------------------------------- torch.compile

def test_torch_compile_prefill_and_step():
    """The custom ops trace as graph nodes (fullgraph: no graph break), forward and backward."""
    x = make_inputs(2, C + 5, 2, 2, 8, PER_HEAD, h0=True)

    def fn(q, k, v, g_gamma, initial_state):
        o, ht = tda.chunk_decay_attention_triton(
            q, k, v, g_gamma=g_gamma, initial_state=initial_state, output_final_state=True
        )
        return (o * o).sum() + ht.sum()

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    eager_in = {n: t.clone().requires_grad_() for n, t in x.items()}
    comp_in = {n: t.clone().requires_grad_() for n, t in x.items()}
    fn(**eager_in).backward()
    compiled(**comp_in).backward()
    check_errors({"d" + n: rel_rms(comp_in[n].grad, eager_in[n].grad) for n in x})

    def step(q, k, v, state, g):
        o, _ = tda.decay_attention_step_triton(q, k, v, state, g=g)
        return o * 2

    s = make_inputs(3, 1, 2, 2, 8, PER_TOKEN)
    args = [s["q"][:, 0], s["k"][:, 0], s["v"][:, 0]]
    st_eager, st_comp = torch.randn(3, 2, 2, 8, device=DEVICE), None
    st_comp = st_eager.clone()
    out_eager = step(*args, st_eager, s["g"][:, 0])
    out_comp = torch.compile(step, backend="aot_eager", fullgraph=True)(*args, st_comp, s["g"][:, 0])
    check_errors({"step_o": rel_rms(out_comp, out_eager), "step_state": rel_rms(st_comp, st_eager)})


def test_poisoned_allocation_is_active():
    assert torch.isnan(launchers._new((3,), torch.float32, DEVICE)).all()


# ------------------------------------------------------------------------------------- no recompilation

#: (H, K, V) of the two kernel families: small-head (temporal) and general (retention)
FAMILY_SHAPES = [(2, 2, 8), (4, 32, 32)]
#: warm-up lengths: one that never splits (T=1) and one that splits on any GPU (2 sequences cannot fill it)
WARM_UP_T = (1, 4097)
NEW_T = (2, 64, 129, 1000, 4100, 5003)


def _prefill_fwd_bwd(B, T, H, K, V, dtype=torch.float32):
    x = make_inputs(B, T, H, K, V, PER_TOKEN, h0=True, dtype=dtype)
    x = {n: t.requires_grad_() for n, t in x.items()}
    o, ht = chunk_decay_attention(**x, output_final_state=True, backend="triton")
    (o.float().sum() + ht.sum()).backward()


def _specialisation_key_function():
    """``key(kernel, args, kwargs)``: the compile-cache key Triton's JIT gives a launch for an sm_90 target,
    computed on the host by Triton's own binder (no GPU, no compile): equal keys share one compiled kernel."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import make_backend
    from triton.runtime.jit import JITFunction, create_function_from_signature

    backend = make_backend(GPUTarget("cuda", 90, 32))
    binders = {}

    def key(kernel, args, kwargs):
        if kernel not in binders:
            jit = kernel if isinstance(kernel, JITFunction) else JITFunction(kernel.fn, **kernel.kwargs)
            binders[kernel] = create_function_from_signature(jit.signature, jit.params, backend)
        _, specialisation, options = binders[kernel](*args, **kwargs)
        return repr(specialisation) + repr(sorted(options.items()))

    return key


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU test_gpu_no_recompile_for_new_T counts real compiles")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_no_new_specialisation_for_new_T(dtype, monkeypatch):
    """On an H100's split plan (132 SMs), the launches of the forward and backward at new lengths T all
    have the compile-cache key of a launch at T=1 or at one split length: T, segment lengths and counts and the
    batch strides are never specialised, and no compile-time block depends on T. The kernels are not run
    (only the launch arguments matter), so long sequences cost nothing here. Every launch passes keyword
    arguments only, so reordering a kernel's parameters cannot break a launch silently."""
    pytest.importorskip("triton.backends.nvidia", reason="triton has no CUDA backend here")
    key = _specialisation_key_function()
    launches = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                assert not args, f"{self.kernel.__name__} launched with positional arguments"
                launches.append((self.kernel, key(self.kernel, args, kwargs)))
            return launch

    for name in ("decay_attn_fwd_kernel", "decay_attn_bwd_dq_kernel", "decay_attn_bwd_dkv_kernel",
                 "small_heads_fwd_kernel", "small_heads_bwd_dq_kernel", "small_heads_bwd_dkv_kernel",
                 "segment_summary_kernel", "segment_scan_kernel"):
        monkeypatch.setattr(launchers, name, Recorder(getattr(launchers, name)))
    monkeypatch.setattr(launchers, "_sm_count", lambda device: 132)  # the launcher plans as on an H100
    monkeypatch.setattr(launchers, "_interpreted_bf16", lambda v: False)  # bf16 launches as on a GPU
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", None)  # the production configurations
    monkeypatch.setattr(launchers, "POISON_OUTPUTS", False)

    def keys_at(T):
        launches.clear()
        for H, K, V in FAMILY_SHAPES:
            _prefill_fwd_bwd(2, T, H, K, V, dtype)
        return set(launches)

    warm = set().union(*(keys_at(T) for T in WARM_UP_T))
    kernels_run = {kernel for kernel, _ in warm}
    assert len(kernels_run) == 8  # every prefill kernel, whole-sequence and split
    for T in NEW_T:
        new = keys_at(T) - warm
        assert not new, f"T={T}: {sorted(k.__name__ for k, _ in new)} launch with new compile-cache keys " \
                        f"(would recompile), e.g. {next(iter(new))[1]}"


# --------------------------------------------------------------------------------------------- GPU only

@gpu_only
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("mode", DECAYING_MODES)
@pytest.mark.parametrize("h0", [False, True], ids=["h0off", "h0on"])
def test_gpu_half_precision(dtype, mode, h0, monkeypatch):
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", None)  # production configurations
    x = make_inputs(4, 1000, 4, 32, 32, mode, h0=h0, dtype=dtype)
    x["q"], x["k"] = x["q"] / 6, x["k"] / 6  # keeps the outputs O(1) over 1000 steps
    check_against_math(x, cuda_tol=HALF_TOL[dtype])


@gpu_only
@pytest.mark.parametrize("mode", DECAYING_MODES)
def test_gpu_bf16_small_heads(mode, monkeypatch):
    """bf16 through the small-head kernels (the temporal shape, 16 heads of K=2, V=8): on the CPU bf16 runs
    through float32 copies, so only a GPU runs this path."""
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", None)  # production configurations
    assert configs.uses_small_heads(2, 8)
    x = make_inputs(4, 1000, 16, 2, 8, mode, h0=True, dtype=torch.bfloat16)
    check_against_math(x, cuda_tol=HALF_TOL[torch.bfloat16])


@gpu_only
@pytest.mark.parametrize("mode", DECAYING_MODES)
def test_gpu_float32_default_precision(mode, monkeypatch):
    """float32 with the production default ("tf32x3" products; bounds from the TF32 imitation above)."""
    monkeypatch.setattr(launchers, "FP32_DOT_PRECISION", None)
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", None)  # production configurations
    x = make_inputs(4, 1000, 4, 32, 32, mode, h0=True)
    x["q"], x["k"] = x["q"] / 6, x["k"] / 6
    check_against_math(x, cuda_tol={"default": 2e-6, "dg": 2e-5, "dg_gamma": 6e-5})


@gpu_only
def test_gpu_no_recompile_for_new_T(monkeypatch):
    """Once each kernel family has run forward and backward at T=1 (whole sequences) and at a length that
    splits, new lengths compile nothing: T, segment lengths and counts and the batch strides are never
    specialised, and the split-T summary's chunk length does not depend on T."""
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", None)  # the production configurations
    kernels = (launchers.decay_attn_fwd_kernel, launchers.decay_attn_bwd_dq_kernel,
               launchers.decay_attn_bwd_dkv_kernel, launchers.small_heads_fwd_kernel,
               launchers.small_heads_bwd_dq_kernel, launchers.small_heads_bwd_dkv_kernel,
               launchers.segment_summary_kernel, launchers.segment_scan_kernel)

    def n_compiled():
        return sum(len(c[0]) for kern in kernels for c in kern.device_caches.values())

    for T in WARM_UP_T:
        for H, K, V in FAMILY_SHAPES:
            _prefill_fwd_bwd(2, T, H, K, V)
    n_before = n_compiled()
    for T in NEW_T:
        for H, K, V in FAMILY_SHAPES:
            _prefill_fwd_bwd(2, T, H, K, V)
    assert n_compiled() == n_before


@gpu_only
def test_gpu_more_than_2_31_elements(monkeypatch):
    """v and o with more than 2^31 elements (int64 offsets); checked on the last sequences only."""
    monkeypatch.setattr(launchers, "POISON_OUTPUTS", False)
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", None)  # production configurations
    free, _ = torch.cuda.mem_get_info()
    B, T, H, K, V = 1025, 8192, 1, 2, 256  # v: 2^31 + 2^21 elements, 4.3 GB in bf16
    if free < 16 * 2**30:
        pytest.skip("not enough GPU memory")
    v = torch.randn(B, T, H, V, device="cuda", dtype=torch.bfloat16)
    assert v.numel() > 2**31
    q = torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(B, T, H, K, device="cuda", dtype=torch.bfloat16) / 8
    g = -0.05 * torch.rand(B, T, H, device="cuda")
    o, ht = chunk_decay_attention(q, k, v, g=g.to(torch.bfloat16), output_final_state=True, backend="triton")
    tail = slice(B - 2, B)
    o2, ht2 = parallel_decay_attention(
        q[tail].double(), k[tail].double(), v[tail].double(), g=g.to(torch.bfloat16)[tail].double(),
        output_final_state=True,
    )
    check_errors({"o": rel_rms(o[tail], o2), "final_state": rel_rms(ht[tail], ht2)},
                 cuda_bounds={"default": 2e-2})
