"""FuXi-Linear's O(1) decode: the decode state, the decode step as one pure tensor function, its compiled CPU
form, and the fingerprint that ties a saved state to the model that made it.

``FuXiLinear.prefill`` returns a :class:`DecodeState`; ``FuXiLinear.step`` calls :func:`decode_step` (eagerly,
or through :class:`CompiledDecodeStep` after ``compile_step()``). The serving loop over a pool of users is
:mod:`fuxi_linear.serving`.
"""
from .decode_state import DecodeState
from .decode_step import ModelStepOperands, decode_step
from .compiled_step import CompiledDecodeStep, compile_failures
from .fingerprint import check_fingerprint, model_fingerprint

__all__ = ["DecodeState", "ModelStepOperands", "decode_step", "CompiledDecodeStep", "compile_failures",
           "model_fingerprint", "check_fingerprint"]
