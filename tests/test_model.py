"""The model: decode equals encode, packed equals padded, gradients, decode state handling."""
import pytest
import torch

from fuxi_linear import DecodeState
from model_helpers import random_histories, tiny_model


@pytest.mark.parametrize("use_temporal", [True, False])
def test_prefill_then_steps_equals_encode_on_longer_history(use_temporal):
    model = tiny_model(use_temporal=use_temporal)
    full = torch.tensor([12, 7, 4, 9])
    ids, ts, _, ts_ext = random_histories(model.config.num_items, full)
    B = len(full)
    rows = torch.arange(B)
    with torch.no_grad():
        ref = model.encode(ids, ts, full, ts_ext[rows, full])
        prefix = full - 3
        pad_ids = torch.where(torch.arange(ids.shape[1])[None] < prefix[:, None], ids, 0)
        user, state = model.prefill(pad_ids, ts, prefix, ts_ext[rows, prefix])
        pre = model.encode(pad_ids, ts, prefix, ts_ext[rows, prefix])
        assert (user - pre[rows, prefix - 1]).abs().max() < 1e-10
        for j in range(3):
            p = prefix + j
            user, state = model.step(state, ids[rows, p], ts[rows, p], ts_ext[rows, p + 1])
            assert (user - ref[rows, p]).abs().max() < 1e-10
    assert torch.equal(state.position, full) and torch.equal(state.last_timestamp, ts[rows, full - 1])


def test_packed_and_padded_layouts_agree_in_float32():
    model = tiny_model(dtype=torch.float32)
    lengths = torch.tensor([17, 1, 5, 30])
    ids, ts, _, ts_ext = random_histories(model.config.num_items, lengths, seed=3)
    q = ts_ext[torch.arange(4), lengths]
    with torch.no_grad():
        a = model.encode(ids, ts, lengths, q)
        b = model.encode(ids, ts, lengths, q, packed=True)
    assert (a - b).abs().max() < 1e-5
    assert torch.all(a[1, 1:] == 0) and torch.all(b[1, 1:] == 0)


def test_padding_columns_and_garbage_timestamps_do_not_change_results():
    model = tiny_model()
    lengths = torch.tensor([4, 6])
    ids, ts, _, ts_ext = random_histories(model.config.num_items, lengths, seed=5)
    q = ts_ext[torch.arange(2), lengths]
    with torch.no_grad():
        a = model.encode(ids, ts, lengths, q)
        ids_wide = torch.nn.functional.pad(ids, (0, 5))
        ts_wide = torch.nn.functional.pad(ts, (0, 5), value=-123)
        ts_wide[0, 4:] = 99  # entries past a user's length are ignored
        b = model.encode(ids_wide, ts_wide, lengths, q)
    assert (a - b[:, :6]).abs().max() < 1e-12 and torch.all(b[:, 6:] == 0)


def test_gradients_reach_every_parameter():
    model = tiny_model(dtype=torch.float32, dropout=0.1).train()
    lengths = torch.tensor([10, 4, 7])
    ids, ts, _, ts_ext = random_histories(model.config.num_items, lengths, seed=1)
    loss = model.loss(ids, ts, lengths, ts_ext[torch.arange(3), lengths], target_ids=torch.tensor([3, 4, 5]))
    loss.backward()
    names = {n for n, p in model.named_parameters()}
    assert {"temporal.decay_logits", "blocks.0.retention.decay_logits", "blocks.1.positional.table"} <= names
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_frozen_temporal_decay_is_a_buffer():
    model = tiny_model(learn_temporal_decay=False)
    assert "temporal.decay_logits" not in dict(model.named_parameters())
    assert torch.all(model.temporal.decay_logits == 0)


def test_decode_state_select_cat_save_load(tmp_path):
    model = tiny_model()
    lengths = torch.tensor([5, 3, 8])
    ids, ts, _, ts_ext = random_histories(model.config.num_items, lengths, seed=2)
    rows = torch.arange(3)
    with torch.no_grad():
        _, state = model.prefill(ids, ts, lengths, ts_ext[rows, lengths])
    assert state.retention.shape == (2, 3, 2, 4, 8)
    assert state.temporal.shape == (2, 3, 4, 2, 4) and state.positional.shape == (2, 3, 1, 4, 16)
    assert state.nbytes_per_user() == 8 * (2 * (2 * 4 * 8 + 4 * 2 * 4 + 4 * 16)) + 16
    sub = state.select([2, 0])
    assert torch.equal(sub.retention[:, 0], state.retention[:, 2]) and torch.equal(sub.position, torch.tensor([8, 5]))
    back = DecodeState.cat([state.select([0]), state.select(torch.tensor([False, True, True]))])
    for a, b in zip(back.tensors(), state.tensors()):
        assert torch.equal(a, b)
    state.save(tmp_path / "s.pt")
    loaded = DecodeState.load(tmp_path / "s.pt")
    for a, b in zip(loaded.tensors(), state.tensors()):
        assert torch.equal(a, b)
    # stepping the selected users alone equals stepping them inside the full pool
    new = (torch.tensor([1, 2, 3]), ts[rows, lengths - 1] + 10, ts[rows, lengths - 1] + 20)
    with torch.no_grad():
        u_all, _ = model.step(state.clone(), *new)
        u_sub, _ = model.step(state.select([1]), *(t[1:2] for t in new))
    assert (u_all[1:2] - u_sub).abs().max() < 1e-12
    with pytest.raises(ValueError, match="users"):
        state.select([3])
    last = state.select([-1])  # counts from the end, like Python (index_select alone would reject it)
    for a, b in zip(last.tensors(), state.select([2]).tensors()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="concatenate"):
        DecodeState.cat([state, tiny_model(num_blocks=1).prefill(ids, ts, lengths, ts_ext[rows, lengths])[1]])
    (tmp_path / "bad.pt").write_bytes(b"")
    torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="DecodeState"):
        DecodeState.load(tmp_path / "bad.pt")


def test_temporal_ablation_changes_outputs():
    lengths = torch.tensor([6])
    a, b = tiny_model(), tiny_model(use_temporal=False)
    ids, ts, _, ts_ext = random_histories(a.config.num_items, lengths)
    with torch.no_grad():
        ya = a.encode(ids, ts, lengths, ts_ext[:, 6])
        yb = b.encode(ids, ts, lengths, ts_ext[:, 6])
    assert (ya - yb).abs().max() > 1e-3
