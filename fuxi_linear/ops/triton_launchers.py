"""Launchers of the decay-attention kernels (SPEC §1): the launch plan of a call and the plain functions that
run the forward, the backward and the decode step on real tensors. :mod:`fuxi_linear.ops.triton_decay_attention`
registers them as ``torch.library`` custom operators with their autograd formula.

Launch plan of a prefill call (kernels in ``fuxi_linear.kernels``, listed in its ``__init__``):

1. kernel family by head shape: the small-head kernels for tiny heads (the temporal channel), the general
   ones otherwise; launch configuration from ``fuxi_linear.kernels.configs``;
2. split-T: when (sequences x heads) programs would leave the GPU's SMs idle, sequences are cut into
   segments (``configs.segment_length`` from the SM count); a summary kernel and a scan over segments give
   every segment its entering state (and, backwards, its exiting state gradient); otherwise one program per
   sequence;
3. the main kernels, one program per work item (sequence or segment), head (block) and V-block;
4. backward only: the decay gradient from the per-token ``q . dq`` and ``k . dk`` scalars (float64 reverse
   cumulative sum per sequence, plus the final-state term).

Every kernel is launched with keyword arguments only, built from named groups: a tensor with its strides is one
:class:`Rows` value (``rows.args("q")`` gives ``q``, ``sq_b``, ``sq_t``, ``sq_h``), what all kernels of a call
share is one :class:`PrefillCall` (sizes, decay mode, ``g``/``g_gamma``, scale, packing, dtypes), the split
plan one :class:`LaunchPlan`. q, k, v (and do, g) are read through their strides (unit stride on the last axis
and a batch stride of whole token rows; anything else is copied), so the model's slices of one projection are
not copied. Nothing that changes with T is specialised by the JIT (T, segment lengths and counts, batch
strides) and no block size depends on T, so a new length never recompiles
(``tests/test_kernels.py::test_no_new_specialisation_for_new_T``).

The module-level switches below (chunk length, split-T, kernel family, float32 product precision, poisoned
outputs) are read at every call: tests set them to force a code path.
"""
from __future__ import annotations

import math
from typing import Dict, NamedTuple, Optional

import torch
import triton

from fuxi_linear.kernels import configs
from fuxi_linear.kernels.chunk_bwd import decay_attn_bwd_dkv_kernel, decay_attn_bwd_dq_kernel
from fuxi_linear.kernels.chunk_fwd import decay_attn_fwd_kernel
from fuxi_linear.kernels.decay_mode import DecayMode
from fuxi_linear.kernels.segments import segment_scan_kernel, segment_summary_kernel
from fuxi_linear.kernels.small_heads import (small_heads_bwd_dkv_kernel, small_heads_bwd_dq_kernel,
                                             small_heads_fwd_kernel)
from fuxi_linear.kernels.step import decay_attn_step_kernel

from .dtypes import compute_dtype

__all__ = ["fwd_impl", "bwd_impl", "step_impl", "resolve_chunk_size", "check_head_dims", "Rows", "token_rows",
           "PrefillCall", "prefill_call", "LaunchPlan", "DEFAULT_CHUNK_SIZE", "POISON_OUTPUTS",
           "FP32_DOT_PRECISION", "SEGMENT_TOKENS", "SMALL_HEADS", "MAX_K"]

#: Chunk length used when ``chunk_size`` is not given (read at call time, by :func:`resolve_chunk_size`; tests
#: lower it to keep the Triton interpreter fast). None: each kernel's configured chunk length
#: (``fuxi_linear.kernels.configs``); otherwise a power of two >= 16 for every kernel.
DEFAULT_CHUNK_SIZE: Optional[int] = None
#: Test hook: when True every output buffer is allocated filled with NaN, so an element a kernel fails to
#: write shows up as NaN instead of as whatever memory happened to hold.
POISON_OUTPUTS = False
#: ``tl.dot`` precision of float32 inputs: None follows ``torch.get_float32_matmul_precision()`` (see
#: :func:`_precision`); "ieee" forces exact float32 products (slow on a GPU: tests use it for 1e-5 checks).
FP32_DOT_PRECISION: Optional[str] = None
#: Split-T switch: None lets the launcher decide from the SM count (never on a CPU, where the interpreter runs
#: programs one after another); a positive int forces segments of that many tokens (rounded up to the chunk
#: length) wherever a sequence is longer; 0 never splits.
SEGMENT_TOKENS: Optional[int] = None
#: Kernel family switch: None picks by head shape (``configs.uses_small_heads``); True/False force the
#: small-head / general kernels (tests run both families on the same shapes).
SMALL_HEADS: Optional[bool] = None

#: Largest q/k head dim (see ``fuxi_linear.kernels.configs.MAX_K``); V is split into blocks: any V works.
MAX_K = configs.MAX_K

check_head_dims = configs.check_head_dims


def _new(shape, dtype, device) -> torch.Tensor:
    if POISON_OUTPUTS:
        return torch.full(shape, float("nan"), dtype=dtype, device=device)
    return torch.empty(shape, dtype=dtype, device=device)


def _precision(dtype: torch.dtype) -> str:
    """``tl.dot`` input precision of the products with float32 operands (ignored by the CPU interpreter).

    float64 input: "ieee" (fp64 products). float32 input: follows torch's global float32 matmul precision:
    "highest" (torch's default) gives "tf32x3" (three TF32 tensor-core products, about float32 accuracy),
    "high"/"medium" give "tf32". Half inputs: the chunk matrices and the state are float32 and multiply
    bf16/fp16 data that TF32 holds exactly, so "tf32" (10-bit mantissa on the float32 side, float32
    accumulation).
    """
    if dtype == torch.float64:
        return "ieee"
    if dtype == torch.float32:
        if FP32_DOT_PRECISION is not None:
            return FP32_DOT_PRECISION
        return "tf32x3" if torch.get_float32_matmul_precision() == "highest" else "tf32"
    return "tf32"


def resolve_chunk_size(chunk_size: Optional[int] = None) -> int:
    """The chunk length every prefill kernel of a call runs at, resolved once per call (the only place that
    reads :data:`DEFAULT_CHUNK_SIZE`): ``chunk_size``, else :data:`DEFAULT_CHUNK_SIZE`; 0 when both are None
    (each kernel its configured length, ``configs.prefill_config``). A given length must be a power of two
    >= 16 (``ValueError`` otherwise)."""
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK_SIZE
    if chunk_size is None:
        return 0
    if not isinstance(chunk_size, int) or chunk_size < 16 or chunk_size & (chunk_size - 1):
        raise ValueError(f"chunk_size must be a power of two >= 16, got {chunk_size!r}")
    return chunk_size


# ----------------------------------------------------------------------------------------------------------
# Launch arguments, grouped
# ----------------------------------------------------------------------------------------------------------

class Rows(NamedTuple):
    """A ``(B, T, H, ...)`` operand as the prefill kernels address it: the tensor (None: absent) and its
    (batch, token, head) strides, the batch stride in token rows (``stride(0) / stride(1)``; see
    ``kernels/common.py``)."""

    tensor: Optional[torch.Tensor]
    batch: int
    token: int
    head: int

    def args(self, name: str) -> Dict[str, object]:
        """The operand's keyword arguments in a prefill kernel whose parameter is ``name``:
        ``{name: tensor, s<name>_b: batch, s<name>_t: token, s<name>_h: head}``."""
        return {name: self.tensor, f"s{name}_b": self.batch, f"s{name}_t": self.token, f"s{name}_h": self.head}


def token_rows(x: Optional[torch.Tensor], zero_batch: bool = False) -> Rows:
    """``x`` as :class:`Rows`, read in place when its last axis has unit stride and its batch stride is a whole
    number of token rows (copied otherwise). ``zero_batch``: batch stride 0 (q/k shared by the batch, or packed
    input whose one batch row the kernels address through ``cu_seqlens``)."""
    if x is None:
        return Rows(None, 0, 0, 0)
    batch_rows = zero_batch or x.shape[0] == 1  # one batch row: only row 0 is ever addressed
    if (x.ndim == 4 and x.stride(-1) != 1) or (not batch_rows and (x.stride(1) <= 0 or x.stride(0) % x.stride(1))):
        x = x.contiguous()
    return Rows(x, 0 if batch_rows else x.stride(0) // x.stride(1), x.stride(1), x.stride(2))


class PrefillCall(NamedTuple):
    """What every kernel of one prefill call (forward, or backward) shares."""

    N: int  # sequences (states): B, or the packed sequences
    T: int  # length of the token axis (the packed length when packed)
    H: int
    K: int
    V: int
    decay: DecayMode
    g: Rows  # the per-token log-decay (tensor None unless decay is PER_TOKEN)
    g_gamma: Optional[torch.Tensor]  # the per-head log-decay (PER_HEAD)
    scale: float
    cu_seqlens: Optional[torch.Tensor]
    acc: torch.dtype  # accumulation dtype of states and gradients
    precision: str  # tl.dot precision of float32 products
    half: bool  # bf16/fp16 inputs
    device: torch.device

    def args(self) -> Dict[str, object]:
        """The keyword arguments every main and summary kernel takes from the call."""
        return dict(**self.g.args("g"), g_gamma=self.g_gamma, cu_seqlens=self.cu_seqlens, scale=self.scale,
                    T=self.T, H=self.H, K=self.K, V=self.V, DECAY=int(self.decay),
                    IS_VARLEN=self.cu_seqlens is not None)


def prefill_call(q: torch.Tensor, v: torch.Tensor, g: Optional[torch.Tensor], g_gamma: Optional[torch.Tensor],
                 scale: float, cu_seqlens: Optional[torch.Tensor]) -> PrefillCall:
    """The :class:`PrefillCall` of prefill operands ``q (Bq, T, H, K)``, ``v (B, T, H, V)`` and the decay."""
    B, T, H, V = v.shape
    varlen = cu_seqlens is not None
    return PrefillCall(N=cu_seqlens.numel() - 1 if varlen else B, T=T, H=H, K=q.shape[-1], V=V,
                       decay=DecayMode.of(g, g_gamma), g=token_rows(g, varlen), g_gamma=g_gamma, scale=float(scale),
                       cu_seqlens=cu_seqlens, acc=compute_dtype(v.dtype), precision=_precision(v.dtype),
                       half=v.dtype in (torch.float16, torch.bfloat16), device=v.device)


class LaunchPlan(NamedTuple):
    """Kernel configuration and work items of one prefill kernel's launch."""

    cfg: configs.LaunchConfig
    head_programs: int  # programs per work item: heads x V-blocks, or head blocks
    split: bool
    L: int  # segment length (tokens) when split, else 1
    NS: int  # segments per sequence when split and not packed, else 1
    n_work: int
    seg_first: Optional[torch.Tensor]  # (N+1,) int32: first work item of each packed sequence
    seg_seq: Optional[torch.Tensor]  # (n_work,) int32: sequence of each work item (packed)

    def segment_args(self) -> Dict[str, object]:
        """The keyword arguments that say which tokens each work item owns (main and summary kernels)."""
        return dict(seg_first=self.seg_first, seg_seq=self.seg_seq, L=self.L, NS=self.NS)


class _HostLengths:
    """The packed sequences' lengths on the host, copied (one device-to-host sync) at the first :meth:`get`
    only: the plans of one call share it, and a call that does not split never copies."""

    def __init__(self, cu_seqlens: torch.Tensor):
        self._cu_seqlens, self._lengths = cu_seqlens, None

    def get(self) -> torch.Tensor:
        if self._lengths is None:
            self._lengths = (self._cu_seqlens[1:] - self._cu_seqlens[:-1]).to("cpu", torch.int64)
        return self._lengths


_SM_COUNTS = {}


def _sm_count(device: torch.device) -> int:
    if device.type != "cuda":
        return 0
    idx = device.index if device.index is not None else torch.cuda.current_device()
    if idx not in _SM_COUNTS:
        _SM_COUNTS[idx] = torch.cuda.get_device_properties(idx).multi_processor_count
    return _SM_COUNTS[idx]


def _plan(kernel: str, call: PrefillCall, chunk_size: int,
          host_lengths: Optional[_HostLengths] = None) -> LaunchPlan:
    """The :class:`LaunchPlan` of main kernel ``kernel`` ("fwd", "bwd_dq", "bwd_dkv") in ``call``, at the chunk
    length :func:`resolve_chunk_size` gave (0: the configured one)."""
    cfg = configs.prefill_config(kernel, call.H, call.K, call.V, call.precision, half_inputs=call.half,
                                 small_heads=SMALL_HEADS, chunk_size=chunk_size)
    head_programs = configs.programs_per_work_item(cfg, call.H)
    N, T, cu_seqlens = call.N, call.T, call.cu_seqlens
    base = dict(cfg=cfg, head_programs=head_programs)
    no_split = LaunchPlan(**base, split=False, L=1, NS=1, n_work=N, seg_first=None, seg_seq=None)
    mean_len = T if cu_seqlens is None else math.ceil(T / N)
    if SEGMENT_TOKENS is None:
        L = configs.segment_length(N * head_programs, mean_len, cfg.BT, _sm_count(call.device))
    elif SEGMENT_TOKENS > 0:
        L = triton.cdiv(SEGMENT_TOKENS, cfg.BT) * cfg.BT
    else:
        L = None
    if L is None:
        return no_split
    if cu_seqlens is None:
        NS = triton.cdiv(T, L)
        if NS <= 1:
            return no_split
        return LaunchPlan(**base, split=True, L=L, NS=NS, n_work=N * NS, seg_first=None, seg_seq=None)
    # packed: segment tables from the lengths (one small device-to-host copy per call, only when splitting)
    lengths = (host_lengths or _HostLengths(cu_seqlens)).get()
    counts = (lengths + L - 1) // L
    if int(counts.max()) <= 1:
        return no_split
    first = torch.zeros(N + 1, dtype=torch.int64)
    first[1:] = counts.cumsum(0)
    seq = torch.repeat_interleave(torch.arange(N), counts)
    return LaunchPlan(**base, split=True, L=L, NS=1, n_work=int(first[-1]),
                      seg_first=first.to(call.device, torch.int32), seg_seq=seq.to(call.device, torch.int32))


def _launch_main(plan: LaunchPlan, call: PrefillCall, general_kernel, small_heads_kernel, **operands) -> None:
    """Run a main kernel over ``plan``'s work items: the small-head or the general kernel as the plan chose, with
    the call's shared arguments, the plan's segments, blocks and launch options (and, for the general kernels,
    the ``tl.dot`` precision) and the kernel's own ``operands`` (keyword arguments)."""
    c = plan.cfg
    family = dict(HB=c.HB) if c.small else dict(PRECISION=call.precision)
    kernel = small_heads_kernel if c.small else general_kernel
    kernel[(plan.n_work * plan.head_programs,)](
        **operands, **call.args(), **plan.segment_args(), SPLIT=plan.split,
        BT=c.BT, BK=c.BK, BV=c.BV, **family, num_warps=c.num_warps, num_stages=c.num_stages,
    )


def _starting_states(plan: LaunchPlan, call: PrefillCall, x: Rows, y: Rows, h_init: Optional[torch.Tensor],
                     h_final: Optional[torch.Tensor], reverse: bool) -> Optional[torch.Tensor]:
    """What a main kernel's work items start from: ``h_init`` (None, or one state per sequence) when the plan
    does not split; otherwise the boundary states of every segment ``(n_work, H, K, V)``: entering states
    (forward; x = k, y = v, ``h_init`` = initial state, ``h_final`` <- final state) or gradients w.r.t. the
    state at each segment's end (``reverse``; x = q, y = do, ``h_init`` = d final state, ``h_final`` <- d
    initial state)."""
    if not plan.split:
        return h_init
    H, K, V = call.H, call.K, call.V
    sum_cfg = configs.prefill_config("summary", H, K, V, call.precision, half_inputs=call.half)
    scan_cfg = configs.state_config(K, V)
    BK, BV, NV = sum_cfg.BK, sum_cfg.BV, sum_cfg.NV
    summary = _new((plan.n_work, H, K, V), call.acc, call.device)
    seg_decay = _new((plan.n_work, H), call.acc, call.device)
    segment_summary_kernel[(plan.n_work * H * NV,)](
        **x.args("x"), **y.args("y"), summary=summary, seg_decay=seg_decay, **call.args(), **plan.segment_args(),
        BT=configs.summary_chunk(plan.cfg, sum_cfg), BK=BK, BV=BV, REVERSE=reverse, PRECISION=call.precision,
        num_warps=sum_cfg.num_warps, num_stages=sum_cfg.num_stages,
    )
    boundary = _new((plan.n_work, H, K, V), call.acc, call.device)
    segment_scan_kernel[(call.N * H * NV,)](
        summary=summary, seg_decay=seg_decay, boundary=boundary, h_init=h_init, h_final=h_final,
        seg_first=plan.seg_first, NS=plan.NS, H=H, K=K, V=V, BK=BK, BV=BV, USE_INIT=h_init is not None,
        STORE_FINAL=h_final is not None, IS_VARLEN=call.cu_seqlens is not None, REVERSE=reverse,
        num_warps=scan_cfg.num_warps,
    )
    return boundary


# ----------------------------------------------------------------------------------------------------------
# Launchers (plain functions on real tensors)
# ----------------------------------------------------------------------------------------------------------

def _interpreted_bf16(v: torch.Tensor) -> bool:
    """bfloat16 under the Triton interpreter (CPU tensors), whose ``tl.dot`` multiplies bfloat16 bit patterns
    as integers (Triton 3.9): such calls run on float32 copies, which is exact for the products."""
    return v.dtype == torch.bfloat16 and v.device.type == "cpu"


def fwd_impl(q, k, v, g, g_gamma, scale, initial_state, cu_seqlens, chunk_size: int):
    """Prefill forward -> ``(o (B, T, H, V) in v's dtype, final state (N, H, K, V) in the accumulation
    dtype)``; ``chunk_size`` as :func:`resolve_chunk_size` returns it."""
    if _interpreted_bf16(v):
        o, ht = fwd_impl(q.float(), k.float(), v.float(), g, g_gamma, scale, initial_state, cu_seqlens, chunk_size)
        return o.to(v.dtype), ht
    call = prefill_call(q, v, g, g_gamma, scale, cu_seqlens)
    varlen = cu_seqlens is not None
    shared = q.shape[0] != v.shape[0]
    plan = _plan("fwd", call, chunk_size)
    q_rows, k_rows = token_rows(q, shared or varlen), token_rows(k, shared or varlen)
    v_rows = token_rows(v, varlen)
    h0 = initial_state.contiguous() if initial_state is not None else None
    o = _new(v.shape, v.dtype, call.device)
    ht = _new((call.N, call.H, call.K, call.V), call.acc, call.device)
    h_in = _starting_states(plan, call, x=k_rows, y=v_rows, h_init=h0, h_final=ht, reverse=False)
    _launch_main(plan, call, decay_attn_fwd_kernel, small_heads_fwd_kernel,
                 **q_rows.args("q"), **k_rows.args("k"), **v_rows.args("v"), **token_rows(o, varlen).args("o"),
                 h_in=h_in, h_out=ht, USE_H0=h0 is not None)
    return o, ht


def _decay_gradient(qdq, kdk, final_term, B, T, H, cu_seqlens, decay: DecayMode):
    """Per-token ``dg (B, T, H)`` (``PER_TOKEN``) or per-head ``dg_gamma (H,)`` (``PER_HEAD``), float64, from
    the kernels' per-token scalars: ``dB = sum_vblocks (q . dq - k . dk)``, ``dg_t = sum_{u >= t, same
    sequence} dB_u + <dS_final, S_final>`` of the token's sequence."""
    dB = qdq.double().sum(0) - kdk.double().sum(0)  # (TT, H); the two kernels' V-block counts may differ
    TT = dB.shape[0]
    dev = dB.device
    if cu_seqlens is not None:
        ends = cu_seqlens[1:].long()
    else:
        ends = torch.arange(1, B + 1, device=dev) * T
    csum = dB.cumsum(0)
    seq = torch.searchsorted(ends, torch.arange(TT, device=dev), right=True)
    dg = csum[ends - 1][seq] - csum + dB
    if final_term is not None:
        dg = dg + final_term[seq]
    if decay == DecayMode.PER_TOKEN:
        return dg.view(B, T, H)
    return dg.sum(0)


def bwd_impl(q, k, v, g, g_gamma, initial_state, cu_seqlens, do, dht, scale, chunk_size: int):
    """Prefill backward -> ``(dq, dk, dv, dg, dg_gamma, d initial_state)`` (an absent input: an empty tensor);
    ``chunk_size`` as :func:`resolve_chunk_size` returns it."""
    if _interpreted_bf16(v):
        grads = bwd_impl(
            q.float(), k.float(), v.float(), g, g_gamma, initial_state, cu_seqlens, do.float(), dht, scale, chunk_size
        )
        return tuple(x.to(v.dtype) for x in grads[:3]) + grads[3:]
    call = prefill_call(q, v, g, g_gamma, scale, cu_seqlens)
    B, T, H, V = v.shape
    Bq, K, N, acc, dev = q.shape[0], call.K, call.N, call.acc, call.device
    varlen = cu_seqlens is not None
    shared = Bq != B
    decayed = call.decay != DecayMode.NONE
    q_dtype, k_dtype = q.dtype, k.dtype
    q_rows, k_rows = token_rows(q, shared or varlen), token_rows(k, shared or varlen)
    v_rows, do_rows = token_rows(v, varlen), token_rows(do, varlen)
    h0 = initial_state.contiguous() if initial_state is not None else None
    dht = dht.contiguous() if dht is not None else None
    need_final = decayed and dht is not None  # the final state enters the decay gradient

    dv = _new((B, T, H, V), v.dtype, dev)
    dh0 = _new((N, H, K, V), acc, dev) if h0 is not None else None
    ht = _new((N, H, K, V), acc, dev) if need_final else None
    host_lengths = _HostLengths(cu_seqlens) if varlen else None
    plans = {kernel: _plan(kernel, call, chunk_size, host_lengths) for kernel in ("bwd_dq", "bwd_dkv")}
    # dq/dk rows get contributions from several programs when q/k are shared or V is split into blocks
    atomic = shared or plans["bwd_dq"].cfg.NV > 1 or plans["bwd_dkv"].cfg.NV > 1
    alloc = (lambda shape: torch.zeros(shape, dtype=acc, device=dev)) if atomic else (lambda s: _new(s, acc, dev))
    dq = alloc((Bq, T, H, K))
    dk = alloc((Bq, T, H, K))
    scalars = {kernel: _new((plan.cfg.NV, B * T, H), acc, dev) if decayed else None for kernel, plan in plans.items()}
    operands = dict(**q_rows.args("q"), **k_rows.args("k"), **v_rows.args("v"), **do_rows.args("do"), TT=B * T,
                    ATOMIC=atomic, USE_H0=h0 is not None)

    # ---- dq (forward direction: the state entering each work item) ----
    plan = plans["bwd_dq"]
    h_in = _starting_states(plan, call, x=k_rows, y=v_rows, h_init=h0, h_final=ht, reverse=False)
    _launch_main(plan, call, decay_attn_bwd_dq_kernel, small_heads_bwd_dq_kernel, **operands,
                 **token_rows(dq, shared or varlen).args("dq"), h_in=h_in, qdq=scalars["bwd_dq"], h_out=ht,
                 STORE_FINAL=need_final and not plan.split)

    # ---- dk, dv (reverse direction: the state gradient leaving each work item) ----
    plan = plans["bwd_dkv"]
    dh_in = _starting_states(plan, call, x=q_rows, y=do_rows, h_init=dht, h_final=dh0, reverse=True)
    _launch_main(plan, call, decay_attn_bwd_dkv_kernel, small_heads_bwd_dkv_kernel, **operands,
                 **token_rows(dk, shared or varlen).args("dk"), **token_rows(dv, varlen).args("dv"), dh_in=dh_in,
                 kdk=scalars["bwd_dkv"], dh0=dh0, USE_DHT=dht is not None)

    # absent inputs get distinct empty tensors (a custom op's outputs may not alias one another)
    dg_out = v.new_empty(0)
    dgamma_out = v.new_empty(0)
    if decayed:
        final_term = (dht.double() * ht.double()).sum((2, 3)) if need_final else None
        grad = _decay_gradient(scalars["bwd_dq"], scalars["bwd_dkv"], final_term, B, T, H, cu_seqlens, call.decay)
        if call.decay == DecayMode.PER_TOKEN:
            dg_out = grad.to(g.dtype)
        else:
            dgamma_out = grad.to(g_gamma.dtype)
    dh0_out = dh0.to(initial_state.dtype) if initial_state is not None else v.new_empty(0)
    return dq.to(q_dtype), dk.to(k_dtype), dv, dg_out, dgamma_out, dh0_out


def step_impl(q, k, v, state, g, g_gamma, scale, state_indices):
    """One decode step: ``state`` advanced in place, returns ``o (N, H, V)`` in v's dtype."""
    q, k, v, g, g_gamma, state_indices = (None if x is None else x.contiguous()
                                          for x in (q, k, v, g, g_gamma, state_indices))
    N, H, V = v.shape
    K = q.shape[-1]
    cfg = configs.state_config(K, V)
    o = _new((N, H, V), v.dtype, v.device)
    stride_sn, stride_sh, stride_sk, stride_sv = state.stride()
    decay_attn_step_kernel[(N * H * cfg.NV,)](
        q=q, k=k, v=v, g=g, g_gamma=g_gamma, state=state, state_indices=state_indices, o=o, scale=float(scale),
        stride_sn=stride_sn, stride_sh=stride_sh, stride_sk=stride_sk, stride_sv=stride_sv,
        H=H, K=K, V=V, BK=cfg.BK, BV=cfg.BV, DECAY=int(DecayMode.of(g, g_gamma)),
        USE_INDICES=state_indices is not None, num_warps=cfg.num_warps,
    )
    return o
