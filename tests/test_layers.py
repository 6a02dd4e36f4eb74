"""Each public layer equals a direct double loop over (i, j) of its SPEC formula (tests/spec_oracle.py), on
its own parameters: the projections, the channel and the output are the layer's, the formulas the SPEC's."""
import math

import pytest
import torch

from fuxi_linear.models.released_checkpoint import _BLOCK_NAMES
from fuxi_linear.layers import (
    FuXiLinearBlock,
    LinearPositional,
    Retention,
    TemporalEncoding,
    TemporalRetention,
    layer_norm,
    rms_norm,
    sinusoidal_table,
    temporal_periods,
)
from fuxi_linear.layers.projection import ProjectionLayout
from spec_oracle import _ln, _silu, block_one_user, positional_loop, retention_loop, temporal_loop

F64 = torch.float64


def _perturbed(layer, seed, scale=0.3):
    """Parameters moved away from their initial values (so that every one of them matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return layer


def test_retention_rates_strictly_decrease_and_start_near_powers_of_half():
    r = Retention(10, 5).rates()
    assert torch.all(r[1:] < r[:-1])
    assert torch.allclose(r, torch.tensor([0.5 ** (h + 1) for h in range(5)]), rtol=0.1)


def test_retention_layer_matches_loop():
    torch.manual_seed(0)
    D, H, dqk = 12, 3, 4
    layer = _perturbed(Retention(D, H, dqk).double(), 0)
    x = torch.randn(2, 11, D, dtype=F64)
    y = layer(x)
    for b in range(2):
        uvqk = _silu(_ln(x[b]) @ layer.uvqk.detach())
        u, q, k, v = uvqk.split([D, H * dqk, H * dqk, D], dim=-1)
        o = retention_loop(q.reshape(11, H, dqk), k.reshape(11, H, dqk), v.reshape(11, H, D // H),
                           layer.decay_logits.detach()).reshape(11, D)
        want = (u * _ln(o)) @ layer.out_proj.weight.detach().t()
        assert (y[b] - want).abs().max() < 1e-12


def test_temporal_layer_matches_loop_with_ms_epoch_times():
    torch.manual_seed(1)
    periods = temporal_periods(2, 10, 3, 4)  # ms defaults: 2^10, 2^13, 2^16, 2^19 ms
    layer = _perturbed(TemporalRetention(16, 4, timestamp_unit="ms").double(), 1)
    assert torch.equal(layer.encoding.periods, periods)
    with torch.no_grad():
        layer.encoding.decay_logits.copy_(torch.randn(4) * 2 - 3)  # gamma close to 0 and 1 both appear
    n = 10
    gaps = torch.tensor([0, 300, 1200, 40, 0, 5000, -800, 70, 2500, 90, 600])  # ms; one negative gap
    ts_all = 1_712_345_678_901 + torch.cumsum(gaps, 0)  # beyond float32 precision on purpose
    ts, query = ts_all[:n], ts_all[n]
    x = torch.randn(1, n, 16, dtype=F64)
    y = layer(x, timestamps=ts[None], query_timestamps=query[None])
    vt = (_ln(x[0]) @ layer.proj_v.weight.detach().t()).reshape(n, 8, 2)
    o = temporal_loop(vt, ts.tolist(), int(query), periods.tolist(), layer.encoding.decay_logits.detach().double())
    want = (layer.alpha.detach()[:, None] * o + layer.beta.detach()[:, None] * vt).flatten(-2)
    # the operands are float32 (phases and decays), so agreement is to float32 accuracy
    assert (y[0] - want).abs().max() < 1e-6  # measured 1.1e-7
    no_skip = TemporalRetention(16, 4, timestamp_unit="ms", skip=False).double()
    no_skip.load_state_dict({k: v for k, v in layer.state_dict().items() if k not in ("alpha", "beta")})
    assert (no_skip(x, timestamps=ts[None], query_timestamps=query[None])[0] - o.flatten(-2)).abs().max() < 1e-6


def test_temporal_phase_uses_integer_modulo():
    enc = TemporalEncoding(torch.tensor([1000], dtype=torch.int64))
    t = torch.tensor([1_700_000_000_123, 1_700_000_000_124])  # 1 ms apart; float32 would merge them
    theta = enc.phases(t)[:, 0]
    assert abs(float(theta[1] - theta[0]) - 2 * math.pi / 1000) < 1e-9
    assert abs(float(theta[0]) - 2 * math.pi * 123 / 1000) < 1e-9


def test_default_periods_follow_the_unit_and_the_width():
    assert TemporalRetention(64).encoding.periods.tolist() == [16 ** m for m in range(8)]  # seconds, Ht = 8
    assert TemporalRetention(24).num_periods == 6  # the most periods <= 8 whose 2Ht heads divide D
    assert TemporalRetention(16, 2, timestamp_unit="ms").encoding.periods.tolist() == [2 ** 10, 2 ** 13]
    assert TemporalRetention(16, periods=[60, 3600]).encoding.periods.tolist() == [60, 3600]


def test_positional_table_init_and_layer_matches_loop():
    table = sinusoidal_table(7, 6)
    p, f = 5, 2
    assert abs(float(table[p, f]) - math.sin(p * 10000 ** (-f / 3))) < 1e-6
    assert abs(float(table[p, 3 + f]) - math.cos(p * 10000 ** (-f / 3))) < 1e-6
    torch.manual_seed(2)
    layer = _perturbed(LinearPositional(8, 6, 128).double(), 2)
    x = torch.randn(2, 9, 8, dtype=F64)
    y = layer(x)
    vp = _ln(x) @ layer.proj_p.weight.detach().t()
    for b in range(2):
        want = layer.alpha.detach() * positional_loop(vp[b], layer.table.detach()) + layer.beta.detach() * vp[b]
        assert (y[b] - want).abs().max() < 1e-12


def test_block_matches_loop():
    """The standalone block equals SPEC §5 transcribed as loops (on its parameters under the released names)."""
    torch.manual_seed(3)
    block = _perturbed(FuXiLinearBlock(16, 2, 4, num_periods=2, periods=[20, 600], positional_dim=4,
                                       max_positions=32, ffn_dim=24).double(), 3, scale=0.2)
    n = 8
    ts = 1_700_000_000 + torch.cumsum(torch.randint(0, 30, (n + 1,)), 0)
    x = torch.randn(1, n, 16, dtype=F64)
    y = block(x, timestamps=ts[None, :n], query_timestamps=ts[None, n])
    params = dict(block.named_parameters())
    released = {theirs: params[mine].detach() for theirs, mine in _BLOCK_NAMES}
    want = block_one_user(released, x[0], ts[:n].tolist(), int(ts[n]), [20, 600],
                          block.temporal.encoding.decay_logits.detach())
    assert (y[0] - want).abs().max() < 1e-6  # float32 temporal operands: measured 1.8e-7 (|y| up to 3.9)


def test_norms_are_parameter_free_and_correct():
    x = torch.randn(3, 10, dtype=F64) * 4 + 2
    ln = layer_norm(x)
    assert torch.allclose(ln.mean(-1), torch.zeros(3, dtype=F64), atol=1e-12)
    assert torch.allclose((x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6), ln)
    assert torch.allclose(rms_norm(x), x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6))


def test_projection_layout_is_stated_once():
    """One :class:`ProjectionLayout` names the columns ``[u | q | k | v]`` of the fused input projection: the
    block's and Retention's ``uvqk``, the block's decode-step matrix ``[uvqk | W_v^T | W_p^T]`` and a released
    checkpoint's ``_uvqk`` width all follow it, and its split takes the columns in order."""
    D, H, dqk = 12, 3, 4
    block = FuXiLinearBlock(D, H, dqk, num_periods=2, positional_dim=4, max_positions=16)
    layout = block.uvqk_layout
    assert layout == ProjectionLayout(gate=3 * D, qk=H * dqk, value=D, heads=H)
    assert block.uvqk.shape == (D, layout.width) == (D, 3 * D + 2 * H * dqk + D)
    w_in = block.step_weights().w_in
    assert w_in.shape[1] == layout.width + 2 * D == sum(layout.step_sizes)
    assert block.step_weights().columns == tuple(layout.step_sizes)  # the step splits its product by the layout
    assert ProjectionLayout.of_block_width(layout.width, D, H) == layout
    with pytest.raises(ValueError, match="does not fit 4D"):
        ProjectionLayout.of_block_width(layout.width + 1, D, H)
    retention = Retention(D, H, dqk)
    assert retention.uvqk_layout == ProjectionLayout(gate=D, qk=H * dqk, value=D, heads=H)
    assert retention.uvqk.shape == (D, 2 * D + 2 * H * dqk)
    proj = torch.arange(layout.width, dtype=F64).expand(2, -1)
    u, q, k, v = layout.split(proj)
    assert (u.shape, q.shape, k.shape, v.shape) == ((2, 3 * D), (2, H, dqk), (2, H, dqk), (2, H, D // H))
    assert torch.equal(torch.cat([u, q.flatten(-2), k.flatten(-2), v.flatten(-2)], -1), proj)
    assert torch.equal(proj[:, layout.gate_and_q], torch.cat([u, q.flatten(-2)], -1))
    assert torch.equal(proj[:, layout.k_and_v], torch.cat([k.flatten(-2), v.flatten(-2)], -1))
    assert torch.equal(proj[:, layout.qkv], proj[:, layout.gate:])
