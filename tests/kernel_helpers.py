"""Helpers of the kernel tests: inputs, the float64 comparison, the test settings of the Triton launcher.

Importing this module sets ``TRITON_INTERPRET=1`` when there is no GPU (before Triton is first imported), so
the kernels run in the Triton interpreter on CPU tensors. Every output buffer the wrapper allocates is filled
with NaN first (``POISON_OUTPUTS``), so an element a kernel forgets to write fails the comparison.

Tolerances: every comparison goes through :func:`error_bounds.check_errors`, which holds each test's errors to
8x what that test measured (``tests/measured_errors.json``; the table per dtype and decay mode is in its
``summary`` and in ``benchmarks/RESULTS.md``).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton

import pytest  # noqa: E402

from error_bounds import check_errors  # noqa: E402
from fuxi_linear.ops import DecayMode, chunk_decay_attention, parallel_decay_attention  # noqa: E402
from fuxi_linear.ops import triton_launchers as launchers  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
C = 16  # chunk length in these tests (the kernels take any power of two >= 16; production default 64)
DTYPE_NAMES = {torch.float64: "fp64", torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
gpu_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture(autouse=True)
def kernel_settings(monkeypatch):
    """Autouse in every module that imports it: NaN-filled outputs, exact float32 products, chunk length C,
    the launcher's own split and kernel-family choices, seed 0."""
    monkeypatch.setattr(launchers, "POISON_OUTPUTS", True)
    monkeypatch.setattr(launchers, "FP32_DOT_PRECISION", "ieee")  # exact float32 products (the interpreter's anyway)
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", C)
    monkeypatch.setattr(launchers, "SEGMENT_TOKENS", None)
    monkeypatch.setattr(launchers, "SMALL_HEADS", None)
    torch.manual_seed(0)


def rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """``||a - b|| / ||b||``; where the reference is exactly zero (e.g. the decay gradient of a sequence's
    first token without initial state), the RMS of ``a`` itself (the data are O(1))."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.isfinite(a).all(), "non-finite values (an unwritten output element?)"
    den = b.norm().item()
    if den == 0.0:
        return (a.norm() / max(a.numel(), 1) ** 0.5).item()
    return ((a - b).norm() / den).item()


#: The decay modes, as test parameters (ids "none", "per_token", "per_head")
NONE, PER_TOKEN, PER_HEAD = DecayMode.NONE, DecayMode.PER_TOKEN, DecayMode.PER_HEAD
ALL_MODES = list(DecayMode)
DECAYING_MODES = [PER_TOKEN, PER_HEAD]


def make_inputs(B, T, H, K, V, mode: DecayMode, h0=False, shared_qk=False, n_states=None, dtype=torch.float32):
    """q, k, v and the decay of ``mode`` (``g`` for PER_TOKEN, ``g_gamma`` for PER_HEAD, none for NONE) on the
    test device, with an initial state when ``h0``."""
    mode = DecayMode(mode)
    Bq = 1 if shared_qk else B
    x = dict(
        q=torch.randn(Bq, T, H, K, dtype=dtype),
        k=torch.randn(Bq, T, H, K, dtype=dtype),
        v=torch.randn(B, T, H, V, dtype=dtype),
    )
    if mode == PER_TOKEN:
        x["g"] = -0.6 * torch.rand(B, T, H, dtype=dtype)
    elif mode == PER_HEAD:
        x["g_gamma"] = -0.3 * torch.rand(H, dtype=dtype) - 0.02
    if h0:
        x["initial_state"] = torch.randn(n_states or B, H, K, V, dtype=dtype)
    return {n: t.to(DEVICE) for n, t in x.items()}


def check_against_math(inputs, cu_seqlens=None, scale=1.0, output_final_state=True, cuda_tol=None,
                       cotangents=None):
    """Outputs, final state and the gradient of every input of the kernels vs float64 autograd, each error held
    to its measured bound (``check_errors``; ``cuda_tol``: provisional bounds on a CUDA GPU, see there).

    ``cotangents``: ``(do, d final state)`` (default: standard normal). Returns the errors.
    """
    tri = {n: t.clone().requires_grad_() for n, t in inputs.items()}
    o, ht = chunk_decay_attention(
        **tri, scale=scale, output_final_state=output_final_state, cu_seqlens=cu_seqlens, backend="triton"
    )
    do = torch.randn_like(o) if cotangents is None else cotangents[0]
    outs, grads = [o], [do]
    if output_final_state:
        assert ht.dtype == (torch.float64 if o.dtype == torch.float64 else torch.float32)
        outs.append(ht)
        grads.append(torch.randn_like(ht) if cotangents is None else cotangents[1])
    else:
        assert ht is None
    torch.autograd.backward(outs, grads)

    ref = {n: t.detach().double().requires_grad_() for n, t in inputs.items()}
    o2, ht2 = parallel_decay_attention(
        **ref, scale=scale, output_final_state=output_final_state, cu_seqlens=cu_seqlens
    )
    outs2 = [o2] + ([ht2] if output_final_state else [])
    torch.autograd.backward(outs2, [x.double() for x in grads])

    errors = {"o": rel_rms(o, o2)}
    if output_final_state:
        errors["final_state"] = rel_rms(ht, ht2)
    for name in inputs:
        assert tri[name].grad is not None, f"no gradient for {name}"
        assert tri[name].grad.shape == inputs[name].shape and tri[name].grad.dtype == inputs[name].dtype
        errors["d" + name] = rel_rms(tri[name].grad, ref[name].grad)
    decay = DecayMode.of(inputs.get("g"), inputs.get("g_gamma"))
    check_errors(errors, tags={"kind": "kernel", "dtype": DTYPE_NAMES[inputs["v"].dtype], "decay": str(decay)},
                 cuda_bounds=cuda_tol)
    return errors
