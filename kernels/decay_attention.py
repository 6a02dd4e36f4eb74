"""All kernels of scalar-decay linear attention (SPEC §1), one import for the launcher.

``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t`` per sequence and head. One module per
responsibility:

* :mod:`.common` — shared JIT helpers: work items (whole sequences or segments), strided addressing, the
  chunk-local decay in log2 units with its cancellation-free differences;
* :mod:`.chunk_fwd` — prefill forward, any head size, products on tensor cores;
* :mod:`.chunk_bwd` — prefill backward (dq kernel, dk/dv kernel), same tiling;
* :mod:`.small_heads` — forward and backward for tiny heads (the temporal channel, K = 2, V = 8): several
  heads per program, CUDA-core products, short chunks;
* :mod:`.segments` — split-T: per-segment summaries and the scan over segments that gives every segment its
  boundary state, so one long sequence fills the GPU;
* :mod:`.step` — one decode step, state in place;
* :mod:`.configs` — launch configurations per channel shape and the split plan (pure Python);
* :mod:`.resources` — ``python -m fuxi_linear.kernels.resources``: registers, spills and shared memory of
  every kernel variant compiled for sm_90 (no GPU needed).

Compile-time switches (``tl.constexpr``) rather than copies: head sizes ``H, K, V`` and their padded blocks,
chunk length ``BT``, ``DECAY`` (0 none, 1 per-token ``g``, 2 per-head ``g_gamma``), ``USE_H0``/``USE_DHT``,
``IS_VARLEN`` (``cu_seqlens``), ``SPLIT`` (segments), ``ATOMIC`` (gradient rows shared by several programs)
and ``PRECISION`` (``tl.dot`` input precision of float32 products). T, segment lengths and counts and the batch
strides (which change with T) are runtime arguments that are never specialised, and no block size depends on T
(``configs.summary_chunk``): a new T never recompiles (``tests/test_kernels.py`` checks the compile-cache keys).
"""
from .chunk_bwd import decay_attn_bwd_dkv_kernel, decay_attn_bwd_dq_kernel
from .chunk_fwd import decay_attn_fwd_kernel
from .segments import segment_scan_kernel, segment_summary_kernel
from .small_heads import small_heads_bwd_dkv_kernel, small_heads_bwd_dq_kernel, small_heads_fwd_kernel
from .step import decay_attn_step_kernel

__all__ = [
    "decay_attn_fwd_kernel",
    "decay_attn_bwd_dq_kernel",
    "decay_attn_bwd_dkv_kernel",
    "small_heads_fwd_kernel",
    "small_heads_bwd_dq_kernel",
    "small_heads_bwd_dkv_kernel",
    "segment_summary_kernel",
    "segment_scan_kernel",
    "decay_attn_step_kernel",
]
