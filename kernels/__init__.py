"""Triton kernels of scalar-decay linear attention (SPEC §1), installed as ``fuxi_linear.kernels`` (never as a
top-level ``kernels``).

``S_t = exp(g_t) S_{t-1} + k_t^T v_t``, ``o_t = scale q_t S_t`` per sequence and head. One module per
responsibility (the launchers, ``fuxi_linear/ops/triton_launchers.py``, import each kernel from its module):

* :mod:`.decay_mode` — :class:`~.decay_mode.DecayMode`, the decay of the state (none, per token, per head):
  the ``DECAY`` constant of every kernel (pure Python);
* :mod:`.common` — shared JIT helpers: work items (whole sequences or segments), strided addressing, the
  chunk-local decay in log2 units with its cancellation-free differences;
* :mod:`.chunk_fwd` — prefill forward, any head size, products on tensor cores;
* :mod:`.chunk_bwd` — prefill backward (dq kernel, dk/dv kernel), same tiling;
* :mod:`.small_heads` — forward and backward for tiny heads (the temporal channel, K = 2, V = 8): several
  heads per program, CUDA-core products, short chunks;
* :mod:`.segments` — split-T: per-segment summaries and the scan over segments that gives every segment its
  boundary state, so one long sequence fills the GPU;
* :mod:`.step` — one decode step, state in place;
* :mod:`.fused_block_step` — a FuXi-Linear block's decode step, its three channels in one launch;
* :mod:`.configs` — launch configurations per channel shape and the split plan (pure Python);
* :mod:`.resources` — ``python -m fuxi_linear.kernels.resources``: registers, spills and shared memory of
  every prefill kernel variant compiled for sm_90 (no GPU needed).

Compile-time switches (``tl.constexpr``) rather than copies: head sizes ``H, K, V`` and their padded blocks,
chunk length ``BT``, ``DECAY`` (a :class:`~.decay_mode.DecayMode` value), ``USE_H0``/``USE_DHT``,
``IS_VARLEN`` (``cu_seqlens``), ``SPLIT`` (segments), ``ATOMIC`` (gradient rows shared by several programs)
and ``PRECISION`` (``tl.dot`` input precision of float32 products). T, segment lengths and counts and the batch
strides (which change with T) are runtime arguments that are never specialised, and no block size depends on T
(``configs.summary_chunk``): a new T never recompiles (``tests/test_kernels.py`` checks the compile-cache keys).

This package imports nothing on import: ``fuxi_linear.kernels.decay_mode`` and ``.configs`` load without Triton.
"""
