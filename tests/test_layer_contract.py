"""The public layers' contract (docs/layers.md), for each layer on the reference (CPU) path and the Triton
kernels (interpreted on a CPU): a forward equals a prefill plus O(1) steps, ragged rows equal their rows alone,
gradients reach every parameter and agree with finite differences, ``torch.compile`` and bf16 autocast work,
states move like the model's, bad input gets an error that names the argument. And FuXiLinear is these layers."""
import pytest
import torch

from fuxi_linear import FuXiLinear, FuXiLinearConfig
from fuxi_linear.layers import (FuXiLinearBlock, FuXiLinearBlockState, LinearPositional, LinearPositionalState,
                                Retention, RetentionState, TemporalRetention, TemporalRetentionState)
from fuxi_linear.ops import triton_available
from fuxi_linear.ops import triton_launchers as launchers
from fuxi_linear.embedding_scoring_loss import l2_normalize

F64 = torch.float64
D = 16
LAYERS = {
    "retention": lambda backend: Retention(D, 2, backend=backend),
    "temporal": lambda backend: TemporalRetention(D, periods=[7, 100], backend=backend),
    "temporal, no skip, fixed decay": lambda backend: TemporalRetention(D, periods=[7, 100], skip=False,
                                                                        learn_decay=False, backend=backend),
    "positional": lambda backend: LinearPositional(D, 4, 32, backend=backend),
    "block": lambda backend: FuXiLinearBlock(D, 2, periods=[7, 100], positional_dim=4, max_positions=32,
                                             backend=backend),
    "block, temporal off": lambda backend: FuXiLinearBlock(D, 2, num_periods=2, use_temporal=False,
                                                           positional_dim=4, max_positions=32, backend=backend),
}
BACKENDS = ["cpu", pytest.param("triton", marks=pytest.mark.skipif(not triton_available(),
                                                                          reason="Triton is not installed"))]


@pytest.fixture(autouse=True)
def small_exact_kernels(monkeypatch):
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", 16)  # keeps the interpreter quick
    monkeypatch.setattr(launchers, "FP32_DOT_PRECISION", "ieee")
    monkeypatch.setattr(launchers, "POISON_OUTPUTS", True)


def make(name, backend="cpu", dtype=F64, seed=0):
    """The layer with its parameters moved away from their initial values (so that every one matters)."""
    torch.manual_seed(seed)
    layer = LAYERS[name](backend).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.2)
    return layer.eval()


def inputs(B=3, T=7, dtype=F64, seed=0):
    """``x (B, T, D)`` and int64 second timestamps ``(B, T + 1)`` (column T: the request after the last event)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T, D, generator=g, dtype=dtype)
    ts = 1_700_000_000 + torch.cumsum(torch.randint(0, 20, (B, T + 1), generator=g), 1)
    return x, ts


def times(ts, n):
    """The time arguments of a forward over the first n events."""
    return dict(timestamps=ts[:, :n], query_timestamps=ts[:, n])


def close(a, b, tol):
    return float((a.double() - b.double()).abs().max()) <= tol * (1 + float(b.double().abs().max()))


# measured worst errors (relative to 1 + max |expected|): reference float64 9.5e-16, Triton float32 2.8e-7
TOLERANCE = {"cpu": 1e-14, "triton": 3e-6}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(LAYERS))
def test_prefill_then_steps_equal_the_forward(name, backend):
    dtype = F64 if backend == "cpu" else torch.float32
    layer, tol = make(name, backend, dtype), TOLERANCE[backend]
    x, ts = inputs(dtype=dtype)
    T = x.shape[1]
    with torch.no_grad():
        y = layer(x, **times(ts, T))
        y_full, s_full = layer(x, **times(ts, T), return_state=True)
        assert torch.equal(y, y_full) and y.shape == x.shape and y.dtype == dtype
        y_pre, state = layer(x[:, :T - 2], **times(ts, T - 2), return_state=True)
        assert close(y_pre, y[:, :T - 2], tol)
        for t in (T - 2, T - 1):
            y_t, state = layer.step(x[:, t], state, timestamps=ts[:, t], query_timestamps=ts[:, t + 1])
            assert y_t.shape == (3, D) and close(y_t, y[:, t], tol), t
    for a, b in zip(state.tensors(), s_full.tensors()):
        assert a.dtype == b.dtype and close(a, b, tol)
    assert state.position.tolist() == [T] * 3


@pytest.mark.parametrize("name", list(LAYERS))
def test_steps_from_an_empty_state_equal_the_forward(name):
    layer = make(name)
    x, ts = inputs(B=2, T=5)
    with torch.no_grad():
        y = layer(x, **times(ts, 5))
        state = layer.empty_state(2)
        for t in range(5):
            y_t, state = layer.step(x[:, t], state, timestamps=ts[:, t], query_timestamps=ts[:, t + 1])
            assert close(y_t, y[:, t], TOLERANCE["cpu"])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(LAYERS))
def test_ragged_rows_equal_each_row_alone(name, backend):
    """``lengths``: each row's outputs and state as if it were alone (the Triton path packs the rows)."""
    dtype = F64 if backend == "cpu" else torch.float32
    layer, tol = make(name, backend, dtype), TOLERANCE[backend]
    x, ts = inputs(dtype=dtype, seed=2)
    lengths = torch.tensor([7, 4, 1])
    query = ts[torch.arange(3), lengths]
    with torch.no_grad():
        y, state = layer(x, timestamps=ts[:, :7], query_timestamps=query, lengths=lengths, return_state=True)
        for b, n in enumerate(lengths.tolist()):
            y_b, s_b = layer(x[b:b + 1, :n], timestamps=ts[b:b + 1, :n], query_timestamps=query[b:b + 1],
                             return_state=True)
            assert close(y[b, :n], y_b[0], tol) and torch.all(y[b, n:] == 0)
            for a, c in zip(state.select([b]).tensors(), s_b.tensors()):
                assert close(a, c, tol)
    assert state.position.tolist() == [7, 4, 1]


def _loss(layer, x, ts, weights):
    return (layer(x, timestamps=ts[:, :7], query_timestamps=ts[torch.arange(3), torch.tensor([7, 5, 2])],
                  lengths=torch.tensor([7, 5, 2])) * weights).sum()


@pytest.mark.parametrize("name", list(LAYERS))
def test_gradients_reach_every_parameter_and_match_finite_differences(name):
    layer = make(name)
    x, ts = inputs(seed=3)
    x.requires_grad_(True)
    weights = torch.randn(3, 7, D, dtype=F64, generator=torch.Generator().manual_seed(4))
    _loss(layer, x, ts, weights).backward()
    unused = {"temporal.proj_v.weight", "temporal.alpha", "temporal.beta", "temporal.encoding.decay_logits"} \
        if name == "block, temporal off" else set()
    for n, p in layer.named_parameters():
        if n in unused:
            assert p.grad is None, n
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, n
    # the gradient along a random direction of every parameter and the input, against a central difference.
    # The temporal decay b enters through float32 phases and decays (SPEC §3), whose rounding swamps a 1e-6
    # step: it is checked on its own with a larger one. Measured relative errors: <= 4e-10 and <= 5e-7.
    main = [x] + [p for n, p in layer.named_parameters() if n not in unused and "encoding" not in n]
    decay = [p for n, p in layer.named_parameters() if n not in unused and "encoding" in n]
    for tensors, eps, tol in ((main, 1e-6, 4e-9), (decay, 1e-2, 5e-6)):
        if tensors:
            analytic, numeric = _directional_derivatives(layer, x, ts, weights, tensors, eps)
            assert abs(analytic - numeric) <= tol * (1 + abs(numeric)), (analytic, numeric)


def _directional_derivatives(layer, x, ts, weights, tensors, eps):
    """The gradient along a random direction of ``tensors`` and its central difference with step ``eps``."""
    g = torch.Generator().manual_seed(5)
    directions = [torch.randn(t.shape, generator=g, dtype=F64) for t in tensors]
    analytic = sum(float((t.grad * d).sum()) for t, d in zip(tensors, directions))
    with torch.no_grad():
        values = []
        for sign in (1, -1):
            for t, d in zip(tensors, directions):
                t.add_(sign * eps * d)
            values.append(float(_loss(layer, x, ts, weights)))
            for t, d in zip(tensors, directions):
                t.sub_(sign * eps * d)
    return analytic, (values[0] - values[1]) / (2 * eps)


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
@pytest.mark.parametrize("name", ["retention", "temporal", "block"])
def test_triton_gradients_match_the_cpu_path(name):
    grads = []
    for backend in ("cpu", "triton"):
        layer = make(name, backend, torch.float32)
        x, ts = inputs(dtype=torch.float32, seed=6)
        x.requires_grad_(True)
        weights = torch.randn(3, 7, D, generator=torch.Generator().manual_seed(7))
        _loss(layer, x, ts, weights).backward()
        grads.append({"x": x.grad, **{n: p.grad for n, p in layer.named_parameters()}})
    for n, g_ref in grads[0].items():
        assert float((grads[1][n] - g_ref).norm() / g_ref.norm()) < 1e-5, n  # measured <= 1.4e-6 (block)


@pytest.mark.parametrize("name", ["retention", "temporal", "positional", "block"])
def test_torch_compile_forward_backward_and_step(name):
    """aot_eager: the graphs dynamo captures (no graph break) run the same numbers as eager."""
    torch._dynamo.reset()
    layer = make(name, dtype=torch.float32)
    x, ts = inputs(dtype=torch.float32, seed=8)
    kwargs = dict(timestamps=ts[:, :7], query_timestamps=ts[:, 7], lengths=torch.tensor([7, 6, 3]))
    compiled = torch.compile(layer, backend="aot_eager")
    y_c = compiled(x, **kwargs)
    y_c.square().sum().backward()
    grads_c = {n: p.grad.clone() for n, p in layer.named_parameters() if p.grad is not None}
    layer.zero_grad()
    y = layer(x, **kwargs)
    y.square().sum().backward()
    assert torch.allclose(y_c, y, atol=1e-6)
    for n, p in layer.named_parameters():
        if p.grad is not None:
            assert torch.allclose(grads_c[n], p.grad, atol=1e-5, rtol=1e-5), n
    assert torch._dynamo.explain(layer)(x, **kwargs).graph_break_count == 0
    with torch.no_grad():
        _, state = layer(x[:, :6], **times(ts, 6), return_state=True)
        twin = state.clone()
        step_c = torch.compile(layer.step, backend="aot_eager")
        y_t, state = layer.step(x[:, 6], state, timestamps=ts[:, 6], query_timestamps=ts[:, 7])
        y_tc, twin = step_c(x[:, 6], twin, timestamps=ts[:, 6], query_timestamps=ts[:, 7])
    assert torch.allclose(y_tc, y_t, atol=1e-6)
    for a, b in zip(state.tensors(), twin.tensors()):
        assert torch.allclose(a, b, atol=1e-6)


def test_inductor_compiles_a_layer():
    """One real inductor compile (C++ on a CPU; ~17 s cold on 2 shared cores, inference only): the aot_eager
    tests above cover tracing, backward and steps of every layer, this one inductor's code generation."""
    torch._dynamo.reset()
    layer = make("retention", dtype=torch.float32)
    x, _ = inputs(dtype=torch.float32, seed=9)
    with torch.no_grad():
        try:
            y_c = torch.compile(layer)(x, lengths=torch.tensor([7, 5, 1]))
        except Exception as err:  # no C++ compiler here
            pytest.skip(f"inductor cannot compile here: {type(err).__name__}: {str(err)[:200]}")
        y = layer(x, lengths=torch.tensor([7, 5, 1]))
    assert torch.allclose(y_c, y, atol=1e-6) and torch.all(y_c[2, 1:] == 0)


@pytest.mark.parametrize("name", list(LAYERS))
def test_bf16_autocast_forward_and_step(name):
    layer = make(name, dtype=torch.float32)
    x, ts = inputs(dtype=torch.float32, seed=10)
    with torch.no_grad():
        y = layer(x, **times(ts, 7))
        _, state32 = layer(x[:, :6], **times(ts, 6), return_state=True)
        y_t32, _ = layer.step(x[:, 6], state32, timestamps=ts[:, 6], query_timestamps=ts[:, 7])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y_b = layer(x, **times(ts, 7))
            _, state = layer(x[:, :6], **times(ts, 6), return_state=True)
            y_t, _ = layer.step(x[:, 6], state, timestamps=ts[:, 6], query_timestamps=ts[:, 7])
    assert all(t.dtype in (torch.float32, torch.int64) for t in state.tensors())  # states stay float32
    scale = float(y.abs().max())
    # measured: bf16 rounding of the projections, <= 0.56% of the largest output
    assert float((y_b.float() - y).abs().max()) < 0.05 * scale
    assert float((y_t.float() - y_t32).abs().max()) < 0.05 * scale
    with torch.autocast("cpu", dtype=torch.bfloat16):  # and training under autocast
        layer(x, **times(ts, 7)).float().square().mean().backward()
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in layer.parameters())


def test_states_are_small_typed_objects():
    layers = {name: make(name, dtype=torch.float32) for name in ("retention", "temporal", "positional", "block")}
    x, ts = inputs(dtype=torch.float32, seed=11)
    expected = {  # bytes per user: float32 channel states + int64 counters
        "retention": (RetentionState, 2 * 8 * 8 * 4 + 8),
        "temporal": (TemporalRetentionState, 4 * 2 * 4 * 4 + 2 * 8),
        "positional": (LinearPositionalState, 1 * 4 * D * 4 + 8),
        "block": (FuXiLinearBlockState, (2 * 8 * 8 + 4 * 2 * 4 + 4 * D) * 4 + 2 * 8),
    }
    for name, layer in layers.items():
        with torch.no_grad():
            _, state = layer(x[:, :6], **times(ts, 6), return_state=True)
        kind, nbytes = expected[name]
        assert type(state) is kind and state.nbytes_per_user() == nbytes, name
        assert state.to("cpu").num_users == 3 and state.clone().position.data_ptr() != state.position.data_ptr()
        # a step of a subset of users equals the step of everyone, on those users
        with torch.no_grad():
            sub = state.select([2, 0])
            y_sub, sub = layer.step(x[[2, 0], 6], sub, timestamps=ts[[2, 0], 6], query_timestamps=ts[[2, 0], 7])
            y_all, state = layer.step(x[:, 6], state, timestamps=ts[:, 6], query_timestamps=ts[:, 7])
        assert torch.allclose(y_sub, y_all[[2, 0]], atol=1e-6)
        both = kind.cat([state.select([0]), state.select([1, 2])])
        assert all(torch.equal(a, b) for a, b in zip(both.tensors(), state.tensors()))


# ---------------------------------------------------------------------------------------------- bad input
def _bad_calls(name):
    layer = make(name, dtype=torch.float32)
    x, ts = inputs(B=2, T=4, dtype=torch.float32)
    t = times(ts, 4)
    with torch.no_grad():
        _, state = layer(x, **t, return_state=True)
    step_t = dict(timestamps=ts[:, 3], query_timestamps=ts[:, 4])
    calls = [
        (lambda: layer(x[0], **t), ValueError, r"x must have shape \(B, T, D\)"),
        (lambda: layer(x[..., :8], **t), ValueError, r"x must have shape .*D=16"),
        (lambda: layer(x.long(), **t), TypeError, "x must be a float tensor"),
        (lambda: layer(x.double(), **t), TypeError, "x is torch.float64 but the layer's parameters are torch.float32"),
        (lambda: layer(x[:, :0], **t), ValueError, "x must hold at least one"),
        (lambda: layer(x, **t, lengths=torch.tensor([4, 0])), ValueError, r"lengths must lie in \[1, T=4\]"),
        (lambda: layer(x, **t, lengths=torch.tensor([4.0, 2.0])), TypeError, "lengths must be an int64"),
        (lambda: layer(x, **t, lengths=torch.tensor([4, 2, 1])), ValueError, r"lengths must have shape \(B,\)"),
        (lambda: layer.step(x[:, 0, :8], state, **step_t), ValueError, r"x_t must have shape \(N, D\)"),
        (lambda: layer.step(x[:, 0], "state", **step_t), TypeError, "state must be a"),
        (lambda: layer.step(x[:1, 0], state, timestamps=ts[:1, 3], query_timestamps=ts[:1, 4]), ValueError,
         r"state\.\w+ must have shape"),
    ]
    temporal = name in ("temporal", "block")
    if temporal:
        calls += [
            (lambda: layer(x), ValueError, "needs timestamps"),
            (lambda: layer(x, timestamps=ts[:, :4]), ValueError, "needs query_timestamps"),
            (lambda: layer(x, timestamps=ts[:, :4].double(), query_timestamps=ts[:, 4]), TypeError,
             "timestamps must be int64"),
            (lambda: layer(x, timestamps=ts[:, :3], query_timestamps=ts[:, 4]), ValueError,
             r"timestamps must have shape \(B, T\)=\(2, 4\)"),
            (lambda: layer(x, timestamps=ts[:, :4], query_timestamps=ts[:1, 4]), ValueError,
             r"query_timestamps must have shape \(B,\)"),
            (lambda: layer.step(x[:, 0], state), ValueError, "needs timestamps"),
            (lambda: layer.step(x[:, 0], state, timestamps=ts[:, 3].int(), query_timestamps=ts[:, 4]), TypeError,
             "timestamps must be int64"),
        ]
    if name in ("positional", "block"):
        long_x = torch.zeros(1, 33, D)
        long_t = 1_700_000_000 + torch.arange(34)[None]
        far = layer.empty_state(1)
        far.position.fill_(32)
        calls += [
            (lambda: layer(long_x, timestamps=long_t[:, :33], query_timestamps=long_t[:, 33]), ValueError,
             "x reaches position 32, beyond the positional table of 32 rows"),
            (lambda: layer.step(long_x[:, 0], far, timestamps=long_t[:, 0], query_timestamps=long_t[:, 1]),
             ValueError, "a step reaches position 32"),
        ]
    return calls


@pytest.mark.parametrize("name", ["retention", "temporal", "positional", "block"])
def test_bad_inputs_name_the_argument(name):
    for call, error, message in _bad_calls(name):
        with pytest.raises(error, match=message):
            call()


def test_bad_constructor_arguments():
    with pytest.raises(ValueError, match="dim=10 must be divisible by num_heads=4"):
        Retention(10, 4)
    with pytest.raises(TypeError, match="num_heads must be a positive int"):
        Retention(16, 2.0)
    with pytest.raises(ValueError, match="dim=12 must be divisible by 2 \\* num_periods=8"):
        TemporalRetention(12, 4)
    with pytest.raises(ValueError, match="dim=7 must be even"):
        TemporalRetention(7)
    with pytest.raises(ValueError, match="num_periods=3 does not match the 2 periods"):
        TemporalRetention(16, 3, periods=[10, 100])
    with pytest.raises(ValueError, match="timestamp_unit must be one of"):
        TemporalRetention(16, timestamp_unit="h")
    with pytest.raises(ValueError, match="positional_dim must be an even int"):
        LinearPositional(16, 5)
    with pytest.raises(ValueError, match="backend must be one of"):
        FuXiLinearBlock(16, 2, backend="cuda")
    with pytest.raises(ValueError, match="dropout must lie in"):
        FuXiLinearBlock(16, 2, dropout=1.5)


# ---------------------------------------------------------------------------------------------- the model
def test_the_model_is_built_from_the_public_layers():
    """FuXiLinear's blocks are the public block, its channels the public layers; the blocks share the model's
    one temporal encoding (SPEC §3): stacking standalone blocks, each given a copy of that encoding and the
    model's block weights, reproduces the model's user vectors."""
    config = FuXiLinearConfig(num_items=30, max_seq_len=20, embedding_dim=D, num_blocks=2, num_heads=2,
                              temporal_num_periods=2, positional_dim=4, dropout=0.0)
    torch.manual_seed(12)
    model = FuXiLinear(config).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    for block in model.blocks:
        assert type(block) is FuXiLinearBlock and type(block.retention) is Retention
        assert type(block.temporal) is TemporalRetention and type(block.positional) is LinearPositional
        assert block.temporal.encoding is None  # the model's encoding serves every block
    assert [n for n, _ in model.named_parameters() if "decay_logits" in n and "temporal" in n] == \
        ["temporal.decay_logits"]
    lengths = torch.tensor([9, 6])
    ids = torch.randint(1, 31, (2, 9), generator=torch.Generator().manual_seed(13))
    ids[1, 6:] = 0  # right-padded
    ts = 1_700_000_000 + torch.cumsum(torch.randint(0, 30, (2, 10), generator=torch.Generator().manual_seed(14)), 1)
    query = ts[torch.arange(2), lengths]
    with torch.no_grad():
        want = model.encode(ids, ts[:, :9], lengths, query)
        x = model._embed(ids, torch.arange(9)[None])
        for block in model.blocks:
            alone = FuXiLinearBlock(D, 2, periods=model.temporal.periods.tolist(), positional_dim=4,
                                    max_positions=config.positional_table_size).double()
            alone.load_state_dict({**block.state_dict(),
                                   **{f"temporal.encoding.{k}": v for k, v in model.temporal.state_dict().items()}})
            x = alone(x, timestamps=ts[:, :9], query_timestamps=query, lengths=lengths)
        got = l2_normalize(x)
    assert (got - want).abs().max() < 1e-12
