"""Triton kernels of fuxi-linear, installed as ``fuxi_linear.kernels`` (never as a top-level ``kernels``).

:mod:`.decay_attention` imports every kernel and lists the modules; :mod:`.configs` holds the launch
configurations; ``python -m fuxi_linear.kernels.resources`` reports their sm_90 register and shared-memory use.
"""
