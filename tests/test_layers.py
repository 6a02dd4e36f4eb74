"""Each channel module equals a direct double loop over (i, j) of its SPEC formula."""
import math

import torch

from fuxi_linear.layers import (
    LinearPositionalChannel,
    RetentionChannel,
    TemporalEncoding,
    TemporalRetentionChannel,
    layer_norm,
    rms_norm,
    sinusoidal_table,
    temporal_periods,
)
from error_bounds import check_errors, max_abs
from spec_oracle import positional_loop, retention_loop, temporal_loop

F64 = torch.float64


def test_retention_rates_strictly_decrease_and_start_near_powers_of_half():
    ch = RetentionChannel(5)
    r = ch.rates()
    assert torch.all(r[1:] < r[:-1])
    assert torch.allclose(r, torch.tensor([0.5 ** (h + 1) for h in range(5)]), rtol=0.1)


def test_retention_channel_matches_loop():
    torch.manual_seed(0)
    ch = RetentionChannel(3).double()
    with torch.no_grad():
        ch.decay_logits.copy_(torch.randn(3, dtype=F64))
    q, k, v = torch.randn(1, 11, 3, 4, dtype=F64), torch.randn(1, 11, 3, 4, dtype=F64), torch.randn(1, 11, 3, 5, dtype=F64)
    o, _ = ch(q, k, v)
    check_errors({"o": max_abs(o[0], retention_loop(q[0], k[0], v[0], ch.decay_logits.detach()))})


def test_temporal_channel_matches_loop_with_ms_epoch_times():
    torch.manual_seed(1)
    periods = temporal_periods(2, 10, 3, 4)  # ms defaults: 2^10, 2^13, 2^16, 2^19 ms
    enc = TemporalEncoding(periods, learn_decay=True)
    with torch.no_grad():
        enc.decay_logits.copy_(torch.randn(4) * 2 - 3)  # gamma close to 0 and 1 both appear
    ch = TemporalRetentionChannel(16, 4).double()
    n = 10
    gaps = torch.tensor([0, 300, 1200, 40, 0, 5000, -800, 70, 2500, 90, 600])  # ms; one negative gap
    ts_all = 1_712_345_678_901 + torch.cumsum(gaps, 0)  # beyond float32 precision on purpose
    ts, query = ts_all[:n], ts_all[n]
    x_hat = layer_norm(torch.randn(1, n, 16, dtype=F64))
    feats = enc(ts[None], torch.tensor([n]), query[None])
    y, _ = ch(x_hat, feats)
    vt = ch._values(x_hat)[0]
    o = temporal_loop(vt, ts.tolist(), int(query), periods.tolist(), enc.decay_logits.detach().double())
    want = (ch.alpha[:, None] * o + ch.beta[:, None] * vt).flatten(-2)
    # the operands are float32 (phases and decays), so agreement is to float32 accuracy
    check_errors({"y": max_abs(y[0], want)})


def test_temporal_phase_uses_integer_modulo():
    enc = TemporalEncoding(torch.tensor([1000], dtype=torch.int64))
    t = torch.tensor([1_700_000_000_123, 1_700_000_000_124])  # 1 ms apart; float32 would merge them
    theta = enc.phases(t)[:, 0]
    assert abs(float(theta[1] - theta[0]) - 2 * math.pi / 1000) < 1e-9
    assert abs(float(theta[0]) - 2 * math.pi * 123 / 1000) < 1e-9


def test_positional_table_init_and_channel_matches_loop():
    table = sinusoidal_table(7, 6)
    p, f = 5, 2
    assert abs(float(table[p, f]) - math.sin(p * 10000 ** (-f / 3))) < 1e-6
    assert abs(float(table[p, 3 + f]) - math.cos(p * 10000 ** (-f / 3))) < 1e-6
    torch.manual_seed(2)
    ch = LinearPositionalChannel(8, 6, 128).double()
    with torch.no_grad():
        ch.table.add_(torch.randn_like(ch.table) * 0.3)
    x_hat = layer_norm(torch.randn(2, 9, 8, dtype=F64))
    y, _ = ch(x_hat)
    vp = ch.proj_p(x_hat)
    errors = {}
    for b in range(2):
        want = ch.alpha * positional_loop(vp[b], ch.table.detach()) + ch.beta * vp[b]
        errors[f"y_{b}"] = max_abs(y[b], want)
    check_errors(errors)


def test_norms_are_parameter_free_and_correct():
    x = torch.randn(3, 10, dtype=F64) * 4 + 2
    ln = layer_norm(x)
    assert torch.allclose(ln.mean(-1), torch.zeros(3, dtype=F64), atol=1e-12)
    assert torch.allclose((x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-6), ln)
    assert torch.allclose(rms_norm(x), x / torch.sqrt((x ** 2).mean(-1, keepdim=True) + 1e-6))
