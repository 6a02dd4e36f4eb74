"""The fused block decode step (``fuxi_linear.ops.fused_block_step``): the Triton kernel (interpreted on a
CPU) against the float64 math, in every decay mode, with pools, strided states, fp32 and bf16 inputs; the
PyTorch CPU path against the single-channel operator; validation; the custom operator under
``torch.compile``."""
import os

import torch

if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"  # must precede the first import of triton

import pytest  # noqa: E402

from error_bounds import check_errors  # noqa: E402
from fuxi_linear.ops import (DecayMode, StepChannel, decay_attention_step_cpu, fused_block_step,  # noqa: E402
                             fused_block_step_cpu, triton_available)

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton is not installed")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# The FuXi block's channel shapes, small: retention H=2 heads of 4 x 8, temporal 4 heads of 2 x 4 (tiny heads
# batched many to a program), positional 1 head of 6 x 16 (K not a power of two, V split into blocks).
SHAPES = {"retention": (2, 4, 8), "temporal": (4, 2, 4), "positional": (1, 6, 16)}
NONE, PER_TOKEN, PER_HEAD = DecayMode.NONE, DecayMode.PER_TOKEN, DecayMode.PER_HEAD
#: the FuXi block's decay modes per channel (retention per head, temporal per token, positional none)
BLOCK_MODES = (PER_HEAD, PER_TOKEN, NONE)


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    from fuxi_linear.ops import triton_fused_block_step as tfs

    monkeypatch.setattr(tfs, "POISON_OUTPUTS", True)  # an output element the kernel skips shows up as NaN
    torch.manual_seed(0)


def rel(a, b):
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    assert a.shape == b.shape and torch.isfinite(a).all()
    return float((a - b).norm() / b.norm())


def make_channel(H, K, V, decay: DecayMode, N, rows=None, dtype=torch.float32, strided=False, k_scale=1.0, scale=1.0):
    """A channel of N users: inputs in ``dtype``, a float32 state of ``rows`` (pool) or N rows; ``strided``
    makes the state a non-contiguous view (a V-slice of a wider buffer, K and V axes swapped in memory) and
    q, k, v column slices of one wider row (as the block's projection gives them)."""
    rows = rows or N
    if strided:
        wide = torch.randn(N, 3 * H * K + H * V + 5, device=DEVICE).to(dtype)
        q = wide[:, :H * K].view(N, H, K)
        k = wide[:, H * K + 3:2 * H * K + 3].view(N, H, K)
        v = wide[:, 3 * H * K:3 * H * K + H * V].view(N, H, V)
        buffer = torch.randn(rows, H, V + 3, K, device=DEVICE)
        state = buffer[:, :, 1:V + 1, :].transpose(-1, -2)  # (rows, H, K, V) with strides (., ., 1, K)
    else:
        q, k = (torch.randn(N, H, K, device=DEVICE).to(dtype) for _ in range(2))
        v = torch.randn(N, H, V, device=DEVICE).to(dtype)
        state = torch.randn(rows, H, K, V, device=DEVICE)
    g = (-torch.rand(N, H, device=DEVICE)).to(dtype) if decay == PER_TOKEN else None
    g_gamma = -torch.rand(H, device=DEVICE) if decay == PER_HEAD else None
    return StepChannel(q, k, v, state, g=g, g_gamma=g_gamma, scale=scale, k_scale=k_scale)


def as_float64(c: StepChannel) -> StepChannel:
    f = lambda t: None if t is None else t.double()  # noqa: E731
    return c._replace(q=f(c.q), k=f(c.k), v=f(c.v), state=c.state.double().clone(), g=f(c.g), g_gamma=f(c.g_gamma))


def check_against_float64(channels, state_indices=None, check_output=True):
    """The kernel's output and states against the float64 CPU step (errors held to their measured bounds),
    rows the step does not name untouched bit for bit. Returns the output and its float64 counterpart."""
    expected = [as_float64(c) for c in channels]
    before = [c.state.clone() for c in channels]
    o_ref = fused_block_step_cpu(expected, state_indices)
    o = fused_block_step(channels, state_indices, backend="triton")
    assert o.shape == (channels[0].v.shape[0], sum(c.v.shape[1] * c.v.shape[2] for c in channels))
    assert o.dtype == channels[0].v.dtype
    errors = {"o": rel(o, o_ref)} if check_output else {}
    for i, (c, e, b) in enumerate(zip(channels, expected, before)):
        errors[f"state_{i}"] = rel(c.state, e.state)
        if state_indices is not None:  # rows the step does not name are untouched, bit for bit
            untouched = [r for r in range(c.state.shape[0]) if r not in state_indices.tolist()]
            assert torch.equal(c.state[untouched], b[untouched])
    check_errors(errors)
    return o, o_ref


@pytest.mark.parametrize("modes", [BLOCK_MODES, (NONE, PER_HEAD, PER_TOKEN), (PER_TOKEN, NONE, PER_HEAD)])
def test_three_channels_every_decay_mode(modes):
    N = 5
    channels = [make_channel(*shape, mode, N, k_scale=0.5 if name == "positional" else 1.0,
                             scale=0.75 if name == "retention" else 1.0)
                for (name, shape), mode in zip(SHAPES.items(), modes)]
    check_against_float64(channels)


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_pool_rows(index_dtype):
    N, P = 4, 9
    channels = [make_channel(*shape, mode, N, rows=P) for shape, mode in zip(SHAPES.values(), BLOCK_MODES)]
    check_against_float64(channels, torch.tensor([7, 0, 4, 2], dtype=index_dtype, device=DEVICE))


def test_strided_inputs_and_states():
    N, P = 3, 6
    channels = [make_channel(*shape, mode, N, rows=P, strided=True)
                for shape, mode in zip(SHAPES.values(), BLOCK_MODES)]
    assert not channels[0].q.is_contiguous() and not channels[0].state.is_contiguous()
    check_against_float64(channels, torch.tensor([5, 1, 3], device=DEVICE))


def _to_bf16(x: torch.Tensor, truncate: bool) -> torch.Tensor:
    """float64 -> bf16 as the kernel's output conversion does it: round to nearest (a GPU), or toward zero (the
    Triton interpreter's float32 -> bf16 conversion drops the low 16 bits)."""
    x = x.float()
    if truncate:
        x = (x.view(torch.int32) & ~0xFFFF).view(torch.float32)
    return x.to(torch.bfloat16)


def test_bf16_inputs_fp32_state():
    """bf16 inputs are converted on load and everything accumulates in float32, into the float32 states: the
    states are as accurate as with float32 inputs, and each output element is the float64 result converted to
    bf16 -- at most one bf16 unit in the last place away where float32 rounding tips a value at a conversion
    boundary (rare), not the several units a bf16 accumulation or a bf16 state would cost."""
    N = 4
    channels = [make_channel(*shape, mode, N, dtype=torch.bfloat16)
                for shape, mode in zip(SHAPES.values(), BLOCK_MODES)]
    assert all(c.state.dtype == torch.float32 for c in channels)
    o, o_ref = check_against_float64(channels, check_output=False)
    expected = _to_bf16(o_ref.cpu(), truncate=DEVICE == "cpu").double()
    ulp = torch.exp2(torch.floor(torch.log2(expected.abs().clamp(min=1e-30))) - 7)  # bf16: 8 significant bits
    off = (o.double().cpu() - expected).abs() / ulp
    assert off.max() <= 1.0, float(off.max())
    assert (off > 0).double().mean() <= 0.02, f"{int((off > 0).sum())} of {off.numel()} elements off by one unit"


@pytest.mark.parametrize("count", [1, 2])
def test_fewer_channels(count):
    N = 3
    channels = [make_channel(*shape, mode, N) for shape, mode in list(zip(SHAPES.values(), (PER_TOKEN, PER_HEAD, NONE)))[:count]]
    check_against_float64(channels)


def test_many_users_span_several_programs():
    """Enough users that every channel needs several programs (and the temporal rows a partial last block)."""
    from fuxi_linear.ops.triton_fused_block_step import channel_tiles

    N = 70
    assert channel_tiles(*SHAPES["temporal"], N)[3] > 1
    channels = [make_channel(*shape, mode, N) for shape, mode in zip(SHAPES.values(), BLOCK_MODES)]
    check_against_float64(channels)


@pytest.mark.parametrize("name, shape, N, tiles", [
    # (BR (user, head) rows, BK, BV, programs) of TILE_ELEMENTS = 2048-element tiles, worked out by hand:
    ("retention", (4, 32, 32), 4096, (2, 32, 32, 8192)),  # 2 rows of 32 x 32; 16384 rows / 2
    ("temporal", (16, 2, 8), 4096, (128, 2, 8, 512)),  # 128 rows of 2 x 8 batched; 65536 rows / 128
    ("positional", (1, 32, 128), 4096, (1, 32, 64, 8192)),  # V split in 2 blocks of 64; 4096 rows x 2
    ("retention", (4, 32, 32), 1, (2, 32, 32, 2)),  # same tiles for one user: only the count changes
    ("temporal", (16, 2, 8), 1, (128, 2, 8, 1)),
    ("positional", (1, 32, 128), 64, (1, 32, 64, 128)),
    ("tests' temporal", (4, 2, 4), 70, (256, 2, 4, 2)),  # 280 rows: a full block and a partial one
    ("tests' positional", (1, 6, 16), 3, (16, 8, 16, 1)),  # K=6 padded to 8
])
def test_program_sizes(name, shape, N, tiles):
    """Tiles of TILE_ELEMENTS state elements; the temporal heads are batched 128 (user, head) rows to a
    program, not one tiny tile each; nothing depends on N but the program count."""
    from fuxi_linear.ops.triton_fused_block_step import TILE_ELEMENTS, channel_tiles

    assert TILE_ELEMENTS == 2048
    assert channel_tiles(*shape, N) == tiles


def test_k_scale_scales_the_update_not_the_state_read():
    """``S <- exp(g) S + k_scale k^T v; o = scale q S``: worked out in float64 by hand for both backends (the
    positional channel's ``k / (P/2)`` is this k_scale)."""
    N, H, K, V = 3, 2, 4, 8
    c = make_channel(H, K, V, PER_HEAD, N, k_scale=0.25, scale=0.5)
    S0 = c.state.double().clone()
    S1 = torch.exp(c.g_gamma.double())[None, :, None, None] * S0 \
        + 0.25 * c.k.double()[..., :, None] * c.v.double()[..., None, :]
    o_hand = 0.5 * torch.einsum("nhk,nhkv->nhv", c.q.double(), S1).reshape(N, H * V)
    assert (S1 - S0 * torch.exp(c.g_gamma.double())[None, :, None, None]).abs().max() > 0.1  # the update matters
    errors = {}
    for backend in ("cpu", "triton"):
        ch = c._replace(state=c.state.clone())
        o = fused_block_step([ch], backend=backend)
        errors[f"{backend}_o"] = rel(o, o_hand)
        errors[f"{backend}_state"] = rel(ch.state, S1)
    check_errors(errors)


def test_cpu_step_equals_single_channel_operator():
    """The fused CPU step is the single-channel decode step per channel (float64, pools included)."""
    N, P = 4, 6
    rows = torch.tensor([5, 2, 0, 3], device=DEVICE)
    channels = [as_float64(make_channel(*shape, mode, N, rows=P, scale=0.5))
                for shape, mode in zip(SHAPES.values(), BLOCK_MODES)]
    copies = [c.state.clone() for c in channels]
    o = fused_block_step_cpu(channels, rows)
    col = 0
    for c, copy in zip(channels, copies):
        o_c, _ = decay_attention_step_cpu(c.q, c.k, c.v, copy, g=c.g, g_gamma=c.g_gamma, scale=c.scale,
                                          state_indices=rows)
        width = c.v.shape[1] * c.v.shape[2]
        check_errors({f"o_{col}": (o[:, col:col + width] - o_c.flatten(1)).abs().max(),
                      f"state_{col}": (c.state - copy).abs().max()})
        col += width


def test_empty_batch():
    channels = [make_channel(*shape, mode, 0, rows=3) for shape, mode in zip(SHAPES.values(), BLOCK_MODES)]
    before = [c.state.clone() for c in channels]
    o = fused_block_step(channels, torch.zeros(0, dtype=torch.int64, device=DEVICE), backend="triton")
    assert o.shape == (0, 16 + 16 + 16)
    assert all(torch.equal(c.state, b) for c, b in zip(channels, before))


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda ch, idx: ("x", idx), TypeError, "list or tuple of StepChannel"),
    (lambda ch, idx: (ch[0], idx), TypeError, "list or tuple of StepChannel"),
    (lambda ch, idx: ([], idx), ValueError, "1 to 3 channels"),
    (lambda ch, idx: (ch + ch[:1], idx), ValueError, "1 to 3 channels"),
    (lambda ch, idx: ([ch[0], (1, 2)], idx), TypeError, r"channels\[1\] must be a StepChannel"),
    (lambda ch, idx: ([ch[0]._replace(k=ch[0].k[..., :3])], idx), ValueError, r"channels\[0\]: q and k"),
    (lambda ch, idx: ([ch[0], ch[1]._replace(state=ch[1].state.half())], idx), TypeError,
     r"channels\[1\]: state must have dtype"),
    (lambda ch, idx: ([ch[0], ch[1]._replace(q=ch[1].q[:3], k=ch[1].k[:3], v=ch[1].v[:3], g=ch[1].g[:3])], None),
     ValueError, "every channel must share N"),
    (lambda ch, idx: ([ch[0], ch[1]._replace(q=ch[1].q.double(), k=ch[1].k.double(), v=ch[1].v.double())], None),
     ValueError, "every channel must share N, the dtype"),
    (lambda ch, idx: ([ch[0]._replace(k_scale="2")], idx), TypeError, "k_scale must be a float"),
    (lambda ch, idx: (ch, torch.tensor([0, 9, 1, 2])), ValueError, r"state_indices must lie in \[0, 6\)"),
    (lambda ch, idx: (ch, torch.tensor([0, 1, 1, 2])), ValueError, "distinct state rows"),
    (lambda ch, idx: (ch, torch.tensor([0, 1, 2])), ValueError, "state_indices must have N=4"),
    (lambda ch, idx: (ch, torch.tensor([0., 1., 2., 3.])), TypeError, "state_indices must have dtype"),
])
def test_bad_inputs(mutate, exc, match):
    channels = [make_channel(*shape, mode, 4, rows=6) for shape, mode in zip(SHAPES.values(), BLOCK_MODES)]
    channels, idx = mutate(channels, torch.tensor([0, 1, 2, 3]))
    with pytest.raises(exc, match=match):
        fused_block_step(channels, idx, backend="cpu")


def test_validate_false_skips_the_checks():
    """For callers that guarantee their inputs: no checks at all (here a repeated row, which races)."""
    channels = [make_channel(*SHAPES["retention"], PER_HEAD, 2, rows=3)]
    fused_block_step(channels, torch.tensor([1, 1]), backend="cpu", validate=False)


def test_torch_compile_traces_one_node():
    """The custom operator traces without a graph break and mutates the states like the eager launcher."""
    from fuxi_linear.ops.triton_fused_block_step import fused_block_step_triton

    N = 3
    channels = [make_channel(*shape, mode, N, rows=4) for shape, mode in zip(SHAPES.values(), BLOCK_MODES)]
    idx = torch.tensor([3, 0, 2], device=DEVICE)
    eager = [c._replace(state=c.state.clone()) for c in channels]

    def step(channels, idx):
        return fused_block_step_triton(channels, idx) * 2

    out_eager = step(eager, idx)
    out_compiled = torch.compile(step, backend="aot_eager", fullgraph=True)(channels, idx)
    errors = {"o": rel(out_compiled, out_eager)}
    errors.update({f"state_{i}": rel(a.state, b.state) for i, (a, b) in enumerate(zip(channels, eager))})
    check_errors(errors)
    schema = str(torch.ops.fuxi_linear.fused_block_step.default._schema)
    assert "Tensor(a3!)[] states" in schema
