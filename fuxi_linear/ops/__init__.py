"""The scalar-decay linear-attention operator (SPEC §1): public API, reference forms and backends."""
from .decay_attention import chunk_decay_attention, decay_attention_step, resolve_backend, triton_available
from .fused_block_step import StepChannel, fused_block_step, fused_block_step_reference
from .reference import (
    chunk_decay_attention_reference,
    decay_attention_step_reference,
    parallel_decay_attention,
    recurrent_decay_attention,
)

__all__ = [
    "chunk_decay_attention",
    "decay_attention_step",
    "StepChannel",
    "fused_block_step",
    "fused_block_step_reference",
    "resolve_backend",
    "triton_available",
    "chunk_decay_attention_reference",
    "decay_attention_step_reference",
    "parallel_decay_attention",
    "recurrent_decay_attention",
]
