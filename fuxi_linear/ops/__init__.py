"""The scalar-decay linear-attention operator (SPEC §1): ``S_t = exp(g_t) S_{t-1} + k_t^T v_t``,
``o_t = scale q_t S_t``.

* the public functions: :func:`chunk_decay_attention` (prefill) and :func:`decay_attention_step` (decode), with
  a ``backend`` (:mod:`.backends`: ``"auto"``, ``"triton"``, ``"cpu"``); :func:`fused_block_step` (a block's
  three channels in one decode step);
* :class:`DecayMode`: the decay (none, per token ``g``, per head ``g_gamma``), the kernels' ``DECAY``;
* the readable definition (:mod:`.definition`): :func:`recurrent_decay_attention`, :func:`parallel_decay_attention`;
* the CPU path (:mod:`.cpu_decay_attention`, on :mod:`.decay_plan`): :func:`chunk_decay_attention_cpu`,
  :func:`decay_attention_step_cpu`, :func:`prepare_decay_attention` / :class:`DecayAttentionPlan`;
* the Triton backend: :mod:`.triton_decay_attention` (custom ops, autograd) on :mod:`.triton_launchers`.
"""
from fuxi_linear.kernels.decay_mode import DecayMode

from .backends import BACKENDS, resolve_backend, triton_available
from .cpu_decay_attention import chunk_decay_attention_cpu, decay_attention_step_cpu
from .decay_plan import DecayAttentionPlan, prepare_decay_attention
from .definition import parallel_decay_attention, recurrent_decay_attention
from .fused_block_step import fused_block_step, fused_block_step_cpu
from .public_api import chunk_decay_attention, decay_attention_step
from .step_channel import StepChannel

__all__ = [
    "chunk_decay_attention",
    "decay_attention_step",
    "DecayMode",
    "StepChannel",
    "fused_block_step",
    "fused_block_step_cpu",
    "BACKENDS",
    "resolve_backend",
    "triton_available",
    "chunk_decay_attention_cpu",
    "decay_attention_step_cpu",
    "prepare_decay_attention",
    "DecayAttentionPlan",
    "parallel_decay_attention",
    "recurrent_decay_attention",
]
