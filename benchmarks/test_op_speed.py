"""Operator-level benchmarks of ``chunk_decay_attention`` (prefill, forward and forward+backward) and
``decay_attention_step`` (decode) at the shapes of FuXi-Linear's three channels (paper scale, D=128):

* retention — H=4 heads, K=V=32, one log-decay per head (``g_gamma``);
* temporal — 16 heads (8 periods x sin/cos), K=2, V=8, per-token log-decay ``g``;
* positional — one head, K=32, V=128, no decay, q/k shared by the batch (batch size 1).
"""
from __future__ import annotations

import pytest
import torch

from fuxi_linear.ops import chunk_decay_attention, decay_attention_step

CHANNELS = ("retention", "temporal", "positional")
#: (heads, K, V, decay kind, q/k shared by the batch)
SHAPES = {"retention": (4, 32, 32, "g_gamma", False), "temporal": (16, 2, 8, "g", False),
          "positional": (1, 32, 128, None, True)}


def chunk_inputs(channel, B, T, device, dtype, requires_grad=False, seed=0):
    H, K, V, decay, shared = SHAPES[channel]
    gen = torch.Generator().manual_seed(seed)
    Bq = 1 if shared else B
    t = {"q": torch.randn(Bq, T, H, K, generator=gen) / K ** 0.5,
         "k": torch.randn(Bq, T, H, K, generator=gen) / K ** 0.5,
         "v": torch.randn(B, T, H, V, generator=gen)}
    t = {name: x.to(device=device, dtype=dtype) for name, x in t.items()}
    if decay == "g_gamma":  # retention rates at init: 1/2, 1/4, 1/8, ...
        t["g_gamma"] = -(0.5 ** torch.arange(1, H + 1, dtype=torch.float32)).to(device)
    elif decay == "g":
        t["g"] = (-torch.rand(B, T, H, generator=gen) * 0.1).to(device)
    if requires_grad:
        for x in t.values():
            x.requires_grad_(True)
    return t


def step_inputs(channel, N, device, dtype, seed=0):
    H, K, V, decay, _ = SHAPES[channel]
    gen = torch.Generator().manual_seed(seed)
    t = {"q": torch.randn(N, H, K, generator=gen) / K ** 0.5, "k": torch.randn(N, H, K, generator=gen) / K ** 0.5,
         "v": torch.randn(N, H, V, generator=gen)}
    t = {name: x.to(device=device, dtype=dtype) for name, x in t.items()}
    t["state"] = torch.randn(N, H, K, V, generator=gen).to(device)
    if decay == "g_gamma":
        t["g_gamma"] = -(0.5 ** torch.arange(1, H + 1, dtype=torch.float32)).to(device)
    elif decay == "g":
        t["g"] = (-torch.rand(N, H, generator=gen) * 0.1).to(device)
    return t


@pytest.mark.parametrize("channel", CHANNELS)
def test_chunk_forward(benchmark, bench_env, channel, seq_len, backend):
    B = bench_env.batch_size
    inputs = chunk_inputs(channel, B, seq_len, bench_env.device, bench_env.torch_dtype)
    benchmark.group = f"op forward {channel} T={seq_len}"
    benchmark.extra_info.update(channel=channel, seq_len=seq_len, batch_size=B, backend=backend)

    @bench_env.synced
    def run():
        with torch.no_grad():
            return chunk_decay_attention(**inputs, output_final_state=True, backend=backend)

    o, state = benchmark(run)
    assert o.shape[:2] == (B, seq_len) and torch.isfinite(state).all()


@pytest.mark.parametrize("channel", CHANNELS)
def test_chunk_forward_backward(benchmark, bench_env, channel, seq_len, backend):
    B = bench_env.batch_size
    inputs = chunk_inputs(channel, B, seq_len, bench_env.device, bench_env.torch_dtype, requires_grad=True)
    leaves = list(inputs.values())
    benchmark.group = f"op forward+backward {channel} T={seq_len}"
    benchmark.extra_info.update(channel=channel, seq_len=seq_len, batch_size=B, backend=backend)

    @bench_env.synced
    def run():
        o, state = chunk_decay_attention(**inputs, output_final_state=True, backend=backend)
        return torch.autograd.grad(o.float().sum() + state.sum(), leaves)

    grads = benchmark(run)
    assert all(g is not None and g.shape == x.shape for g, x in zip(grads, leaves))


@pytest.mark.parametrize("channel", CHANNELS)
def test_decode_step(benchmark, bench_env, channel, backend):
    N = bench_env.batch_size
    inputs = step_inputs(channel, N, bench_env.device, bench_env.torch_dtype)
    benchmark.group = f"op decode step {channel}"
    benchmark.extra_info.update(channel=channel, batch_size=N, backend=backend)

    @bench_env.synced
    def run():  # the state advances in place: the cost of a step does not depend on how many came before
        with torch.no_grad():
            return decay_attention_step(**inputs, backend=backend)

    o, _ = benchmark(run)
    assert o.shape == inputs["v"].shape
