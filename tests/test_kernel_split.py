"""Split-T: long sequences cut into segments that separate programs run, against the float64 math.

The launcher splits only on a GPU whose SMs a whole-sequence launch would leave idle; these tests force the
split with ``SEGMENT_TOKENS`` (segments of 2 chunks, so a sequence of 5C + 3 tokens has 3 segments, the last
one partial) and check outputs, final states and every gradient, on both kernel families, with and without
initial state, packed and shared q/k. The split plan itself is checked against an H100's 132 SMs.
"""
import math

import pytest
import torch

from fuxi_linear.kernels import configs
from fuxi_linear.ops import triton_launchers as launchers
from kernel_helpers import C, DEVICE, check_against_math, kernel_settings, make_inputs  # noqa: F401

SEGMENT = 2 * C
FAMILIES = [pytest.param(True, id="small_heads"), pytest.param(False, id="general")]


@pytest.fixture
def split(monkeypatch):
    monkeypatch.setattr(launchers, "SEGMENT_TOKENS", SEGMENT)


def _assert_splits(H, K, V, N, T, cu_seqlens=None, expected_work=None):
    """The launch really is split (the plan the launcher will use for these shapes)."""
    for kernel in ("fwd", "bwd_dq", "bwd_dkv"):
        plan = launchers._plan(kernel, K, V, H, N, T, "ieee", False, 0, cu_seqlens, torch.device(DEVICE))
        assert plan.split and plan.L == SEGMENT, (kernel, plan)
        if expected_work is not None:
            assert plan.n_work == expected_work, (kernel, plan.n_work, expected_work)


@pytest.mark.parametrize("small_heads", FAMILIES)
@pytest.mark.parametrize("mode", ["none", "g", "gamma"])
def test_split_matches_math(mode, small_heads, split, monkeypatch):
    monkeypatch.setattr(launchers, "SMALL_HEADS", small_heads)
    B, T, H, K, V = 2, 5 * C + 3, 3, 2, 8
    _assert_splits(H, K, V, B, T, expected_work=B * 3)
    check_against_math(make_inputs(B, T, H, K, V, mode, h0=True))


def test_split_without_initial_state_or_final_state(split):
    check_against_math(make_inputs(2, 5 * C + 3, 2, 32, 40, "g"), output_final_state=False, scale=0.4)


@pytest.mark.parametrize("small_heads", FAMILIES)
@pytest.mark.parametrize("h0", [False, True], ids=["h0off", "h0on"])
def test_split_varlen(h0, small_heads, split, monkeypatch):
    """Packed sequences of 1 to 3 segments: the segment tables map every work item to its sequence."""
    monkeypatch.setattr(launchers, "SMALL_HEADS", small_heads)
    lengths = [1, 3 * C + 1, C, 2 * C, 5 * C + 7, 3]
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    segments = sum(math.ceil(n / SEGMENT) for n in lengths)
    _assert_splits(2, 2, 8, len(lengths), sum(lengths), cu, expected_work=segments)
    check_against_math(make_inputs(1, sum(lengths), 2, 2, 8, "g", h0=h0, n_states=len(lengths)), cu_seqlens=cu)


@pytest.mark.parametrize("mode", ["none", "gamma"])
def test_split_varlen_other_decays(mode, split):
    lengths = [2 * C + 1, 1, 4 * C]
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int64)
    check_against_math(make_inputs(1, sum(lengths), 2, 4, 20, mode, h0=True, n_states=3), cu_seqlens=cu)


@pytest.mark.parametrize("H,K,V", [(1, 32, 40), (2, 2, 8)], ids=["general", "small_heads"])
def test_split_shared_qk(H, K, V, split):
    """q/k of batch size 1 shared by 3 sequences, split: dq/dk summed over the batch and the segments."""
    check_against_math(make_inputs(3, 4 * C + 5, H, K, V, "none", h0=True, shared_qk=True))


@pytest.mark.parametrize("channel,H,K,V", [("retention", 4, 32, 32), ("temporal", 16, 2, 8),
                                          ("positional", 1, 32, 128)])
@pytest.mark.parametrize("B,T", [(1, 8192), (64, 1024)])
@pytest.mark.parametrize("kernel", ["fwd", "bwd_dq", "bwd_dkv"])
@pytest.mark.parametrize("precision,half", [("tf32x3", False), ("tf32", False), ("tf32", True)],
                         ids=["fp32", "fp32_tf32", "bf16"])
def test_split_plan_fills_an_h100(channel, H, K, V, B, T, kernel, precision, half):
    """On 132 SMs, one long history (B=1, T=8192) and a batch of shorter ones (B=64, T=1024) both launch at
    least 2 programs per SM; a batch that fills the GPU by itself is not split."""
    sms = 132
    cfg = configs.prefill_config(kernel, H, K, V, precision, half_inputs=half)
    per_item = configs.programs_per_work_item(cfg, H)
    L = configs.segment_length(B * per_item, T, cfg.BT, sms)
    programs = B * per_item * (math.ceil(T / L) if L else 1)
    assert programs >= 2 * sms, (L, programs)
    if L is not None:
        assert L % cfg.BT == 0 and L >= configs.MIN_SEGMENT_CHUNKS * cfg.BT
    assert configs.segment_length(configs.PROGRAMS_PER_SM * sms, T, cfg.BT, sms) is None
