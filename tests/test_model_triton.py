"""The model's encode, prefill, step and a training step run through the Triton kernels (interpreted on a
CPU) and agree with the reference backend."""
import pytest
import torch

from error_bounds import check_errors
from fuxi_linear.ops import triton_available
from fuxi_linear.ops import triton_launchers as launchers
from model_helpers import random_histories, tiny_model

pytestmark = pytest.mark.skipif(not triton_available(), reason="Triton is not installed")


@pytest.fixture(autouse=True)
def small_exact_kernels(monkeypatch):
    monkeypatch.setattr(launchers, "DEFAULT_CHUNK_SIZE", 16)  # keeps the interpreter quick
    monkeypatch.setattr(launchers, "FP32_DOT_PRECISION", "ieee")
    monkeypatch.setattr(launchers, "POISON_OUTPUTS", True)


def _pair(**overrides):
    ref = tiny_model(dtype=torch.float32, backend="cpu", **overrides)
    tri = tiny_model(dtype=torch.float32, backend="triton", **overrides)
    tri.load_state_dict(ref.state_dict())
    return ref, tri


STATE_NAMES = ("retention", "temporal", "positional", "last_timestamp", "position")


def _rel(a, b):
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())


def test_encode_prefill_step_match_cpu_path():
    ref, tri = _pair()
    lengths = torch.tensor([19, 4, 3])
    ids, ts, _, ts_ext = random_histories(ref.config.num_items, lengths, seed=11)
    rows = torch.arange(3)
    errors = {}
    with torch.no_grad():
        for packed in (False, True):
            errors[f"encode_packed_{packed}"] = _rel(tri.encode(ids, ts, lengths, ts_ext[rows, lengths], packed=packed),
                                                     ref.encode(ids, ts, lengths, ts_ext[rows, lengths], packed=packed))
        prefix = torch.tensor([17, 2, 1])
        u_ref, s_ref = ref.prefill(ids, ts, prefix, ts_ext[rows, prefix])
        u_tri, s_tri = tri.prefill(ids, ts, prefix, ts_ext[rows, prefix])
        errors["prefill"] = _rel(u_tri, u_ref)
        for name, a, b in zip(STATE_NAMES, s_tri.tensors(), s_ref.tensors()):
            if a.dtype == torch.int64:
                assert torch.equal(a, b), name
            else:
                errors[f"prefill_state_{name}"] = _rel(a, b)
        for j in range(2):
            p = prefix + j
            args = (ids[rows, p], ts[rows, p], ts_ext[rows, p + 1])
            u_ref, s_ref = ref.step(s_ref, *args)
            u_tri, s_tri = tri.step(s_tri, *args)
            errors[f"step{j}"] = _rel(u_tri, u_ref)
            for name, a, b in zip(STATE_NAMES[:3], s_tri.tensors(), s_ref.tensors()):
                errors[f"step{j}_state_{name}"] = _rel(a, b)
    check_errors(errors)


def test_training_step_gradients_match_cpu_path():
    ref, tri = _pair(dropout=0.0)
    lengths = torch.tensor([20, 9])
    ids, ts, _, ts_ext = random_histories(ref.config.num_items, lengths, seed=12)
    q = ts_ext[torch.arange(2), lengths]
    grads = []
    for model in (ref, tri):
        model.train()
        gen = torch.Generator().manual_seed(0)
        loss = model.loss(ids, ts, lengths, q, target_ids=torch.tensor([1, 2]), generator=gen)
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    check_errors({name: _rel(grads[1][name], g_ref) for name, g_ref in grads[0].items()})
