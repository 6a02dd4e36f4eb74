"""Triton kernels of fuxi-linear, installed as ``fuxi_linear.kernels`` (never as a top-level ``kernels``)."""
