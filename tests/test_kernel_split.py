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
from kernel_helpers import (  # noqa: F401 (kernel_settings: autouse fixture)
    ALL_MODES, C, DEVICE, NONE, PER_HEAD, PER_TOKEN, check_against_math, kernel_settings, make_inputs,
)

SEGMENT = 2 * C
FAMILIES = [pytest.param(True, id="small_heads"), pytest.param(False, id="general")]


@pytest.fixture
def split(monkeypatch):
    monkeypatch.setattr(launchers, "SEGMENT_TOKENS", SEGMENT)


def _assert_splits(inputs, cu_seqlens=None, expected_work=None):
    """The launch really is split (the plan the launcher will use for these inputs)."""
    call = launchers.prefill_call(inputs["q"], inputs["v"], inputs.get("g"), inputs.get("g_gamma"), 1.0, cu_seqlens)
    for kernel in ("fwd", "bwd_dq", "bwd_dkv"):
        plan = launchers._plan(kernel, call, launchers.resolve_chunk_size())
        assert plan.split and plan.L == SEGMENT, (kernel, plan)
        if expected_work is not None:
            assert plan.n_work == expected_work, (kernel, plan.n_work, expected_work)


@pytest.mark.parametrize("small_heads", FAMILIES)
@pytest.mark.parametrize("mode", ALL_MODES)
def test_split_matches_math(mode, small_heads, split, monkeypatch):
    monkeypatch.setattr(launchers, "SMALL_HEADS", small_heads)
    B, T, H, K, V = 2, 5 * C + 3, 3, 2, 8
    inputs = make_inputs(B, T, H, K, V, mode, h0=True)
    _assert_splits(inputs, expected_work=B * 3)
    check_against_math(inputs)


def test_split_without_initial_state_or_final_state(split):
    check_against_math(make_inputs(2, 5 * C + 3, 2, 32, 40, PER_TOKEN), output_final_state=False, scale=0.4)


@pytest.mark.parametrize("small_heads", FAMILIES)
@pytest.mark.parametrize("h0", [False, True], ids=["h0off", "h0on"])
def test_split_varlen(h0, small_heads, split, monkeypatch):
    """Packed sequences of 1 to 3 segments: the segment tables map every work item to its sequence."""
    monkeypatch.setattr(launchers, "SMALL_HEADS", small_heads)
    lengths = [1, 3 * C + 1, C, 2 * C, 5 * C + 7, 3]
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int32)
    segments = sum(math.ceil(n / SEGMENT) for n in lengths)
    inputs = make_inputs(1, sum(lengths), 2, 2, 8, PER_TOKEN, h0=h0, n_states=len(lengths))
    _assert_splits(inputs, cu, expected_work=segments)
    check_against_math(inputs, cu_seqlens=cu)


@pytest.mark.parametrize("mode", [NONE, PER_HEAD])
def test_split_varlen_other_decays(mode, split):
    lengths = [2 * C + 1, 1, 4 * C]
    cu = torch.tensor([0] + lengths, device=DEVICE).cumsum(0).to(torch.int64)
    check_against_math(make_inputs(1, sum(lengths), 2, 4, 20, mode, h0=True, n_states=3), cu_seqlens=cu)


@pytest.mark.parametrize("H,K,V", [(1, 32, 40), (2, 2, 8)], ids=["general", "small_heads"])
def test_split_shared_qk(H, K, V, split):
    """q/k of batch size 1 shared by 3 sequences, split: dq/dk summed over the batch and the segments."""
    check_against_math(make_inputs(3, 4 * C + 5, H, K, V, NONE, h0=True, shared_qk=True))


H100_SMS = 132
#: The plan's design target on an H100: PROGRAMS_PER_SM programs per SM
H100_TARGET = 4 * H100_SMS
FUXI_SHAPES = [("retention", 4, 32, 32), ("temporal", 16, 2, 8), ("positional", 1, 32, 128)]


def _h100_plan(kernel, H, K, V, B, T, precision, half):
    cfg = configs.prefill_config(kernel, H, K, V, precision, half_inputs=half)
    per_item = configs.programs_per_work_item(cfg, H)
    L = configs.segment_length(B * per_item, T, cfg.BT, H100_SMS)
    return cfg, per_item, L, B * per_item * (math.ceil(T / L) if L else 1)


@pytest.mark.parametrize("channel,H,K,V", FUXI_SHAPES)
@pytest.mark.parametrize("B,T", [(1, 8192), (64, 1024)])
@pytest.mark.parametrize("kernel", ["fwd", "bwd_dq", "bwd_dkv"])
@pytest.mark.parametrize("precision,half", [("tf32x3", False), ("tf32", False), ("tf32", True)],
                         ids=["fp32", "fp32_tf32", "bf16"])
def test_split_plan_fills_an_h100(channel, H, K, V, B, T, kernel, precision, half):
    """On 132 SMs one long history (B=1, T=8192) and a batch of shorter ones (B=64, T=1024) reach the design
    target of 4 programs per SM (528) with the longest segments that do (one chunk longer and they would not);
    where even one-chunk segments are too few (a history of one or two head programs), the plan cuts one-chunk
    segments, the most there can be. A batch that fills the GPU by itself is not split."""
    assert configs.PROGRAMS_PER_SM * H100_SMS == H100_TARGET
    cfg, per_item, L, programs = _h100_plan(kernel, H, K, V, B, T, precision, half)
    assert L is not None and L % cfg.BT == 0 and L < T, L
    if L == configs.MIN_SEGMENT_CHUNKS * cfg.BT:
        assert programs == B * per_item * math.ceil(T / cfg.BT)  # the most segments the plan allows
    else:
        assert programs >= H100_TARGET, (L, programs)
        assert B * per_item * math.ceil(T / (L + cfg.BT)) < H100_TARGET, (L, programs)  # L is the longest
    assert configs.segment_length(H100_TARGET, T, cfg.BT, H100_SMS) is None
    assert configs.segment_length(B * per_item, cfg.BT, cfg.BT, H100_SMS) is None  # one chunk: nothing to cut


@pytest.mark.parametrize("channel,kernel,B,T,expected", [
    # (segment length, programs), worked out by hand: n = ceil(528 / programs per position) segments are
    # needed; the longest multiple of the chunk length BT below T / (n - 1) gives at least n of them.
    ("temporal", "fwd", 1, 8192, (48, 684)),  # 4 head blocks: n = 132, 8192/131 = 62.5 -> 48 (BT 16): 171 segments
    ("retention", "fwd", 64, 1024, (480, 768)),  # 64 x 4 = 256: n = 3, 1024/2 = 512 -> 480 (BT 32): 3 segments
    ("temporal", "bwd_dkv", 64, 1024, (496, 768)),  # 256 again: 512 -> 496 (BT 16): 3 segments
    ("positional", "fwd", 1, 8192, (32, 512)),  # 2 V-blocks: n = 264, 8192/263 = 31.1 < BT 32: one-chunk segments
    ("positional", "fwd", 64, 1024, (224, 640)),  # 128: n = 5, 1024/4 = 256 -> 224 (BT 32): 5 segments
])
def test_split_plan_worked_examples(channel, kernel, B, T, expected):
    H, K, V = {name: shape for name, *shape in FUXI_SHAPES}[channel]
    _, _, L, programs = _h100_plan(kernel, H, K, V, B, T, "tf32x3", False)
    assert (L, programs) == expected
