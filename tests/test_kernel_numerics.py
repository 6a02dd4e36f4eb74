"""Kernel numerics and inputs: strong decays at the production chunk length, positive log-decays rejected,
strided q/k/v/g (slices of one projection) read in place — each against the float64 math."""
import pytest
import torch

from error_bounds import check_errors
from fuxi_linear.ops import chunk_decay_attention, parallel_decay_attention
from fuxi_linear.ops import triton_launchers as launchers
from kernel_helpers import (  # noqa: F401 (kernel_settings: autouse fixture)
    C, DECAYING_MODES, DEVICE, PER_HEAD, PER_TOKEN, check_against_math, kernel_settings, make_inputs, rel_rms,
)


def strong_decay_inputs(B, T, H, K, V, seed=0):
    """Per-token g = -20 on 30% of the steps, mild (-0.6 * U(0, 1)) elsewhere, with an initial state."""
    torch.manual_seed(seed)
    x = make_inputs(B, T, H, K, V, PER_TOKEN, h0=True)
    strong = torch.rand(B, T, H, device=DEVICE) < 0.3
    x["g"] = torch.where(strong, torch.full_like(x["g"], -20.0), -0.6 * torch.rand(B, T, H, device=DEVICE))
    return x


def test_strong_decay_inputs_defeat_a_float32_cumulative_sum():
    """The inputs of the next test are hard: ``exp(b_i - b_j)`` from a float32 chunk-local cumulative sum is off
    by more than 1e-6 (relative RMS over the causal pairs of a 64-token chunk)."""
    g = strong_decay_inputs(1, 64, 16, 2, 8)["g"][0].T.double()  # (H, 64)
    causal = torch.ones(64, 64, dtype=torch.bool, device=g.device).tril()
    b64, b32 = g.cumsum(-1), g.float().cumsum(-1).double()
    exact = torch.exp(b64[:, :, None] - b64[:, None, :])[:, causal]
    naive = torch.exp(b32[:, :, None] - b32[:, None, :])[:, causal]
    assert rel_rms(naive, exact) > 1e-6


@pytest.mark.parametrize("small_heads,H", [(True, 16), (False, 4)], ids=["small_heads", "general"])
def test_strong_decays_keep_float32_accuracy(small_heads, H, monkeypatch):
    """Temporal shape (K=2, V=8), chunk length 64: outputs, final state and every gradient (dg included) at
    float32 accuracy, as with mild decays (a float32 cumulative decay would lose it: the test above)."""
    monkeypatch.setattr(launchers, "SMALL_HEADS", small_heads)
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", 64)
    x = strong_decay_inputs(1, 2 * 64 + 5, H, 2, 8)
    check_against_math(x)


def test_strong_per_head_decay(monkeypatch):
    """g_gamma = -20 (and a mild head): decays are exact counts times gamma, no sums to cancel."""
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", 64)
    x = make_inputs(1, 64 + 9, 2, 32, 32, PER_HEAD, h0=True)
    x["g_gamma"] = torch.tensor([-20.0, -0.05], device=DEVICE)
    check_against_math(x)


@pytest.mark.parametrize("backend", ["triton", "cpu"])
def test_positive_log_decay_rejected(backend):
    x = make_inputs(1, 5, 2, 2, 8, PER_TOKEN)
    x["g"][0, 3, 1] = 0.01
    with pytest.raises(ValueError, match="g is a log-decay and must be <= 0"):
        chunk_decay_attention(**x, backend=backend)
    y = make_inputs(1, 5, 2, 2, 8, PER_HEAD)
    y["g_gamma"][1] = 0.2
    with pytest.raises(ValueError, match="g_gamma is a log-decay and must be <= 0"):
        chunk_decay_attention(**y, backend=backend)
    x["g"][0, 3, 1] = 0.0  # no decay at a step is allowed
    chunk_decay_attention(**x, backend=backend)


def _split_projection(p, H, K, V):
    """q, k, v as the model makes them: slices of one projection's last axis, unflattened into heads."""
    q, k, v, _ = torch.split(p, [H * K, H * K, H * V, 3], dim=-1)
    return q.unflatten(-1, (H, K)), k.unflatten(-1, (H, K)), v.unflatten(-1, (H, V))


@pytest.mark.parametrize("H,K,V", [(2, 2, 8), (2, 8, 16)], ids=["small_heads", "general"])
@pytest.mark.parametrize("mode", DECAYING_MODES)
def test_strided_projection_views(H, K, V, mode):
    """q, k, v sliced out of one (B, T, 2HK + HV + 3) projection and g out of a wider (B, T, H + 2) tensor are
    read through their strides (no copy) and get the float64 gradients."""
    B, T = 2, 2 * C + 5
    proj = torch.randn(B, T, 2 * H * K + H * V + 3, device=DEVICE)
    g_wide = -0.6 * torch.rand(B, T, H + 2, device=DEVICE)
    g_gamma = -0.3 * torch.rand(H, device=DEVICE) - 0.02
    h0 = torch.randn(B, H, K, V, device=DEVICE)
    do = torch.randn(B, T, H, V, device=DEVICE)
    dht = torch.randn(B, H, K, V, device=DEVICE)

    def run(dtype, backend):
        leaves = [t.detach().to(dtype).requires_grad_() for t in (proj, g_wide, g_gamma, h0)]
        p, gw, gg, s0 = leaves
        q, k, v = _split_projection(p, H, K, V)
        decay = dict(g=gw[..., 1:H + 1]) if mode == PER_TOKEN else dict(g_gamma=gg)
        if backend == "triton":
            assert not q.is_contiguous() and not v.is_contiguous() and q.stride(-1) == 1
            for view in (q, k, v, decay.get("g")):
                if view is not None:
                    assert launchers.token_rows(view).tensor is view  # read in place, not copied
            o, ht = chunk_decay_attention(q, k, v, **decay, initial_state=s0, output_final_state=True,
                                          backend="triton")
        else:
            o, ht = parallel_decay_attention(q, k, v, **decay, initial_state=s0, output_final_state=True)
        ((o * do.to(dtype)).sum() + (ht * dht.to(dtype)).sum()).backward()
        return [o, ht] + [t.grad if t.grad is not None else torch.zeros_like(t) for t in leaves]

    got = run(torch.float32, "triton")
    expected = run(torch.float64, "definition")
    names = ["o", "final_state", "d_projection", "d_g", "d_g_gamma", "d_initial_state"]
    # dg_gamma: 2 numbers, each a sum of ~150 nearly cancelling per-token terms (the largest relative error here)
    check_errors({n: rel_rms(a, b) for n, a, b in zip(names, got, expected)})
