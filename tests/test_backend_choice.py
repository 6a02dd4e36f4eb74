"""The backend choice is loud on CUDA: ``backend="triton"`` raises with the import error when the kernels
cannot load, ``"auto"`` warns once per process when it falls back to the CPU path. The CPU path's former name
``"reference"`` still works, with a ``DeprecationWarning``.

No GPU is needed: the import of the Triton backend is broken through ``sys.modules`` and the device check
(``_is_cuda``) is faked, so CPU tensors stand in for CUDA ones.
"""
import sys
import warnings

import pytest
import torch

import fuxi_linear.ops as ops_pkg
from fuxi_linear import FuXiLinearConfig
from fuxi_linear.layers import Retention
from fuxi_linear.ops import backends as dispatch
from fuxi_linear.ops import chunk_decay_attention, decay_attention_step, resolve_backend, triton_available

BACKEND_MODULE = "fuxi_linear.ops.triton_decay_attention"


@pytest.fixture
def fresh_import_state(monkeypatch):
    """Forget the cached import result and the 'already warned' flag (restored after the test)."""
    monkeypatch.setattr(dispatch, "_TRITON_IMPORT_RESULT", dispatch._NOT_TRIED)
    monkeypatch.setattr(dispatch, "_FALLBACK_WARNED", False)


@pytest.fixture
def broken_triton(monkeypatch, fresh_import_state):
    """Importing the Triton backend raises ModuleNotFoundError (None in sys.modules halts an import)."""
    monkeypatch.setitem(sys.modules, BACKEND_MODULE, None)
    if hasattr(ops_pkg, "triton_decay_attention"):  # `from . import x` would return the attribute as is
        monkeypatch.delattr(ops_pkg, "triton_decay_attention")


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(dispatch, "_is_cuda", lambda device: True)


def _inputs(B=2, T=9, H=2, K=3, V=4):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, d, generator=gen) for d in (K, K, V))
    g = -torch.rand(B, T, H, generator=gen)
    return q, k, v, g


def test_forced_triton_on_cuda_raises_with_the_import_error(broken_triton, fake_cuda):
    assert not triton_available()
    q, k, v, g = _inputs()
    with pytest.raises(RuntimeError, match="cannot be loaded: ModuleNotFoundError") as info:
        chunk_decay_attention(q, k, v, g=g, backend="triton")
    assert isinstance(info.value.__cause__, ImportError)
    assert BACKEND_MODULE in str(info.value)
    state = torch.zeros(2, 2, 3, 4)
    with pytest.raises(RuntimeError, match="cannot be loaded"):
        decay_attention_step(q[:, 0], k[:, 0], v[:, 0], state, g=g[:, 0], backend="triton")


def test_auto_on_cuda_warns_once_and_runs_the_cpu_path(broken_triton, fake_cuda):
    q, k, v, g = _inputs()
    expected, _ = chunk_decay_attention(q, k, v, g=g, backend="cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # count our own once-only logic, not the warnings registry's
        first, _ = chunk_decay_attention(q, k, v, g=g, backend="auto")
        second, _ = chunk_decay_attention(q, k, v, g=g, backend="auto")
        decay_attention_step(q[:, 0], k[:, 0], v[:, 0], torch.zeros(2, 2, 3, 4), g=g[:, 0], backend="auto")
    fallbacks = [w for w in caught if issubclass(w.category, RuntimeWarning) and "falls back" in str(w.message)]
    assert len(fallbacks) == 1, [str(w.message) for w in caught]
    assert "ModuleNotFoundError" in str(fallbacks[0].message)
    assert fallbacks[0].filename == __file__  # points at the caller, not at the dispatch code
    torch.testing.assert_close(first, expected, rtol=0, atol=0)
    torch.testing.assert_close(second, expected, rtol=0, atol=0)


def test_auto_off_cuda_is_silent_and_does_not_import_triton(broken_triton):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", torch.device("cpu")) == "cpu"
    assert dispatch._TRITON_IMPORT_RESULT is dispatch._NOT_TRIED


def test_auto_on_cuda_picks_triton_when_it_loads(fresh_import_state, fake_cuda):
    pytest.importorskip("triton")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_backend("auto", torch.device("cuda")) == "triton"
    assert triton_available()


def test_unknown_backend_is_a_value_error():
    with pytest.raises(ValueError, match="backend must be one of"):
        resolve_backend("cuda", torch.device("cpu"))


def test_reference_is_the_deprecated_name_of_the_cpu_path():
    """``backend="reference"`` (the CPU path's former name) runs the CPU path, with a DeprecationWarning that
    names the new name; the config and the layers store ``"cpu"``."""
    q, k, v, g = _inputs()
    expected, _ = chunk_decay_attention(q, k, v, g=g, backend="cpu")
    with pytest.warns(DeprecationWarning, match="backend='reference' is deprecated.*backend='cpu'"):
        o, _ = chunk_decay_attention(q, k, v, g=g, backend="reference")
    torch.testing.assert_close(o, expected, rtol=0, atol=0)
    with pytest.warns(DeprecationWarning, match="backend='reference' is deprecated"):
        assert resolve_backend("reference", torch.device("cpu")) == "cpu"
    with pytest.warns(DeprecationWarning, match="backend='reference' is deprecated"):
        assert FuXiLinearConfig(num_items=5, backend="reference").backend == "cpu"
    with pytest.warns(DeprecationWarning, match="backend='reference' is deprecated"):
        assert Retention(8, 2, backend="reference").backend == "cpu"
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'triton', 'cpu'\)"):
        FuXiLinearConfig(num_items=5, backend="ref")
