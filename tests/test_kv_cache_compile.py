"""The KV-cache baselines' compiled decode step (``compile_step``): the same outputs and caches as the eager
step, one graph for every history length, cache capacity and step (the attended window grows by one slot per
step), and an eager fall-back, with a warning, when compiling fails.

Tracing is checked with the ``aot_eager`` backend (dynamo and AOT autograd, no C++ compile: seconds); one
model also runs through inductor, the backend the benchmark uses, whose C++ is what a step runs.
"""
import copy
import warnings

import pytest
import torch

import fuxi_linear.models.baselines.compiled_step as kv_compiled_step
from fuxi_linear.models import build_model

BASELINES = ["sasrec", "hstu", "fuxi-alpha"]
# (prefill length, capacity): two caches of different capacities, so the capacity is symbolic too
CACHES = [(5, 12), (9, 17)]
STEPS = 3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _model(name):
    torch.manual_seed(0)
    model = build_model(name, num_items=50, max_seq_len=40, embedding_dim=16, num_blocks=2, num_heads=2, qk_dim=4,
                        dropout=0.0).eval()
    with torch.no_grad():  # away from the initial values, so that every table and weight matters
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def _events(T, B=3, seed=0):
    g = torch.Generator().manual_seed(seed + T)
    ids = torch.randint(1, 51, (B, T + STEPS), generator=g)
    ts = 1_700_000_000 + torch.cumsum(torch.randint(1, 4000, (B, T + STEPS + 1), generator=g), 1)
    return ids, ts


def _run_steps(model, T, capacity):
    """Prefill B users at T (one of them shorter), then STEPS steps; the user vectors of every step and the
    final cache."""
    ids, ts = _events(T)
    lengths = torch.tensor([T, T - 2, T])
    hist_ids = torch.where(torch.arange(T)[None, :] < lengths[:, None], ids[:, :T], 0)
    rows = torch.arange(3)
    outs = []
    with torch.inference_mode():
        _, cache = model.prefill(hist_ids, ts[:, :T], lengths, ts[rows, lengths], capacity=capacity)
        for i in range(STEPS):
            pos = lengths + i
            user, cache = model.step(cache, ids[rows, pos], ts[rows, pos], ts[rows, pos + 1])
            outs.append(user.clone())
    return outs, cache


def _graphs():
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


@pytest.fixture
def aot_eager(monkeypatch):
    """Compile with dynamo + AOT autograd, no inductor (traces exactly what inductor would get)."""
    real = torch.compile

    def compile_(fn, **kwargs):
        return real(fn, backend="aot_eager", fullgraph=kwargs.get("fullgraph", False))

    monkeypatch.setattr(torch, "compile", compile_)


def _check_equal(compiled, eager, out_atol, cache_atol):
    graphs = _graphs()
    for T, capacity in CACHES:
        outs_c, cache_c = _run_steps(compiled, T, capacity)
        outs_e, cache_e = _run_steps(eager, T, capacity)
        for a, b in zip(outs_c, outs_e):
            torch.testing.assert_close(a, b, rtol=0, atol=out_atol)
        for a, b in zip(cache_c.tensors(), cache_e.tensors()):  # every slot, written in place alike
            torch.testing.assert_close(a, b, rtol=0, atol=cache_atol)
        assert cache_c.max_length == cache_e.max_length == T + STEPS
    assert compiled.compiled_step.active, compiled.compiled_step.failure
    # one graph for both caches (capacities 12, 17) and all 6 steps (windows of 6..8 and 10..12 slots)
    assert _graphs() - graphs == 1


@pytest.mark.parametrize("name", BASELINES)
def test_compiled_step_traces_one_graph_equal_to_the_eager_step(name, aot_eager):
    """aot_eager runs the traced graph's ATen ops one by one, the eager step's operations: measured equal to
    the bit, for the user vectors and every cache tensor."""
    eager = _model(name)
    compiled = copy.deepcopy(eager).compile_step()
    _check_equal(compiled, eager, out_atol=0, cache_atol=0)


def test_inductor_step_equals_the_eager_step():
    """HSTU through inductor (the benchmark's backend: fused C++ loops, the cache written in place by
    index_put_), float32 sums in another order. Measured: user vectors (unit norm) 8.9e-8 apart, cache entries
    3.0e-7; bounds 10x those."""
    eager = _model("hstu")
    compiled = copy.deepcopy(eager).compile_step()
    _check_equal(compiled, eager, out_atol=1e-6, cache_atol=3e-6)


def test_a_failed_compile_warns_and_steps_eagerly(monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    calls = []

    def failing(fn, **kwargs):
        def call(*args):
            calls.append(1)
            raise TorchDynamoException("InvalidCxxCompiler: no working C++ compiler found")
        return call

    monkeypatch.setattr(torch, "compile", failing)
    eager = _model("sasrec")
    compiled = copy.deepcopy(eager).compile_step()
    with pytest.warns(RuntimeWarning, match="compiling the KV-cache decode step failed .*InvalidCxxCompiler"):
        outs_c, _ = _run_steps(compiled, 5, 12)
    outs_e, _ = _run_steps(eager, 5, 12)
    assert all(torch.equal(a, b) for a, b in zip(outs_c, outs_e))
    assert not compiled.compiled_step.active and "InvalidCxxCompiler" in compiled.compiled_step.failure
    assert len(calls) == 1  # tried once; later steps go straight to the eager step
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _run_steps(compiled, 5, 12)  # no second warning


def test_compile_step_switches_off_and_survives_a_copy():
    model = _model("hstu")
    assert model.compile_step() is model and model.compiled_step is not None and model.compiled_step.active
    copied = copy.deepcopy(model)  # the compiled callable is not copied; the copy compiles its own
    assert copied.compiled_step is not model.compiled_step and copied.compiled_step._compiled is None
    assert model.compile_step(False).compiled_step is None
    assert kv_compiled_step.DEFAULT_OPTIONS == {"cpp_wrapper": True}
