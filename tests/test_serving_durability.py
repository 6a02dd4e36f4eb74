"""Durable serving state: ``Decoder.save`` / ``Decoder.load`` restore every user exactly (the restored decoder
continues bit for bit as the saved one would have, and equals fresh prefills); a process killed with SIGKILL in
the middle of a save leaves the previous snapshot loadable; ``DecodeState.save`` is atomic and carries the
model's fingerprint; a state or snapshot of another model, or a truncated or foreign file, is a clear error."""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fuxi_linear import DecodeState
from fuxi_linear.fault_injection import CRASH_ENV
from fuxi_linear.decoding.fingerprint import model_fingerprint
from fuxi_linear.serving import Decoder
from fuxi_linear.serving.snapshots import current_snapshot
from model_helpers import tiny_model
from test_serving import Histories, _admit, _step

TESTS = Path(__file__).resolve().parent


def _events(hist, users):
    events = [hist.next_event(u) for u in users]
    return (torch.tensor([e[0] for e in events]), torch.tensor([e[1] for e in events]),
            torch.tensor([e[2] for e in events]), events)


def _served(model, seed=3):
    hist = Histories(model.config.num_items, seed=seed)
    decoder = Decoder(model, max_users=6, device="cpu")
    _admit(decoder, hist, ["ann", "bob", 7, ("eu", 2)], [5, 2, 9, 1], model)
    _step(decoder, hist, ["bob", 7], model)
    decoder.evict(["ann"])
    _admit(decoder, hist, ["cy"], [4], model)  # takes ann's row
    _step(decoder, hist, [("eu", 2), "cy", "bob"], model)
    return decoder, hist


def test_save_and_load_continue_exactly(tmp_path):
    model = tiny_model()
    decoder, hist = _served(model)
    folder = decoder.save(tmp_path / "snap")
    assert folder.name == "snapshot-000001" and current_snapshot(tmp_path / "snap") == folder
    restored = Decoder.load(tmp_path / "snap", model)
    assert restored.users == decoder.users and restored.num_free_rows == decoder.num_free_rows
    for u in decoder.users:
        assert restored.row_of(u) == decoder.row_of(u) and restored.position_of(u) == decoder.position_of(u)
    # both continue with the same events: identical outputs (the same rows, the same free-row order)
    users = ["cy", 7, ("eu", 2)]
    ids, ts, qts, events = _events(hist, users)
    assert torch.equal(restored.step(users, ids, ts, qts), decoder.step(users, ids, ts, qts))
    for u, (item, t, _) in zip(users, events):
        hist.events[u].append((item, t))
    _admit(restored, hist, ["dee"], [3], model)
    decoder.admit(["dee"], *hist.batch(["dee"], [hist.events["dee"][-1][1] + 100]))
    assert restored.row_of("dee") == decoder.row_of("dee")
    for u in restored.users:  # every restored user equals a fresh prefill of its whole history
        _step(restored, hist, [u], model)
    # a second save replaces the first; only the newest snapshot is kept
    second = restored.save(tmp_path / "snap")
    assert second.name == "snapshot-000002" and not folder.exists()
    # another pool size: every user still served, rows packed in admission order
    bigger = Decoder.load(tmp_path / "snap", model, max_users=9)
    assert bigger.users == restored.users and bigger.num_free_rows == 9 - len(restored.users)
    for u in bigger.users:
        assert torch.equal(bigger.state_of([u]).retention, restored.state_of([u]).retention)
    with pytest.raises(ValueError, match="holds 5 users, more than max_users=4"):
        Decoder.load(tmp_path / "snap", model, max_users=4)


def test_a_snapshot_of_another_model_is_refused(tmp_path):
    model = tiny_model()
    decoder, _ = _served(model)
    decoder.save(tmp_path / "snap")
    other = tiny_model()
    with torch.no_grad():
        other.blocks[1].uvqk.view(-1)[0] += 1e-6  # the same sizes, one weight differs
    with pytest.raises(ValueError, match="saved by another model"):
        Decoder.load(tmp_path / "snap", other)
    assert Decoder.load(tmp_path / "snap", other, check_model=False).users == decoder.users
    # the configuration enters too: a different decay bound, same shapes, same weights
    reconfigured = tiny_model(temporal_max_log_decay=10.0)
    with pytest.raises(ValueError, match="saved by another model"):
        Decoder.load(tmp_path / "snap", reconfigured)
    # ...but not what does not change the served function (dropout, the loss's settings, the backend)
    same = tiny_model(dropout=0.3, num_negatives=7, backend="cpu")
    assert model_fingerprint(same) == model_fingerprint(model)
    assert Decoder.load(tmp_path / "snap", same).users == decoder.users


def test_fingerprint_follows_the_weights():
    model = tiny_model()
    first = model_fingerprint(model)
    assert first == model_fingerprint(model) and first.startswith("fuxi-fp1:")
    old = model.item_embedding.weight[3, 0].item()
    with torch.no_grad():
        model.item_embedding.weight[3, 0] = old + 1.0
    assert model_fingerprint(model) != first  # an in-place change is noticed (the cache is not stale)
    with torch.no_grad():
        model.item_embedding.weight[3, 0] = old
    assert model_fingerprint(model) == first
    model.load_state_dict(tiny_model(num_items=40).state_dict())
    assert model_fingerprint(model) == first
    assert model_fingerprint(model.float()) != first  # the dtype is part of the bytes


def test_decode_state_files(tmp_path):
    model = tiny_model()
    hist = Histories(model.config.num_items, seed=4)
    for u, n in (("a", 3), ("b", 6)):
        hist.new_user(u, n)
    with torch.no_grad():
        _, state = model.prefill(*hist.batch(["a", "b"], [hist.events[u][-1][1] + 5 for u in "ab"]))
    path = state.save(tmp_path / "s.pt", model)
    assert path == tmp_path / "s.pt" and not list(tmp_path.glob(".*.tmp"))
    loaded = DecodeState.load(path, model)
    for a, b in zip(loaded.tensors(), state.tensors()):
        assert torch.equal(a, b)
    other = tiny_model(num_items=41)
    with pytest.raises(ValueError, match="saved by another model"):
        DecodeState.load(path, other)
    with pytest.raises(ValueError, match="does not fit this model"):
        DecodeState.load(path, tiny_model(num_blocks=1), check_model=False)
    # no model at save time: loadable alone, refused next to a model unless asked
    state.save(tmp_path / "bare.pt")
    DecodeState.load(tmp_path / "bare.pt")
    with pytest.raises(ValueError, match="carries no model fingerprint"):
        DecodeState.load(tmp_path / "bare.pt", model)
    DecodeState.load(tmp_path / "bare.pt", model, check_model=False)
    # the first format (the tensors alone) still loads
    torch.save({name: t for name, t, _ in state._user_tensors()}, tmp_path / "v1.pt")
    DecodeState.load(tmp_path / "v1.pt")
    # truncated, foreign, missing: errors naming the file
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) * 2 // 3])
    with pytest.raises(ValueError, match=r"cut\.pt is not a saved DecodeState: it cannot be read"):
        DecodeState.load(tmp_path / "cut.pt")
    (tmp_path / "text.pt").write_text("user,item,time\n")
    with pytest.raises(ValueError, match=r"text\.pt is not a saved DecodeState"):
        DecodeState.load(tmp_path / "text.pt")
    torch.save({"format": "fuxi_linear.DecodeState", "version": 9, "tensors": {}}, tmp_path / "new.pt")
    with pytest.raises(ValueError, match="version 9"):
        DecodeState.load(tmp_path / "new.pt")
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        DecodeState.load(tmp_path / "nothing.pt")


def test_damaged_snapshots_fail_clearly(tmp_path):
    model = tiny_model()
    decoder, _ = _served(model)
    with pytest.raises(FileNotFoundError, match="no decoder snapshot in"):
        Decoder.load(tmp_path / "none", model)
    folder = decoder.save(tmp_path / "snap")
    state = folder / "state.pt"
    data = state.read_bytes()
    state.write_bytes(data[:-100])
    with pytest.raises(ValueError, match=r"state\.pt has .* bytes, its manifest says .*: truncated"):
        Decoder.load(tmp_path / "snap", model)
    (folder / "manifest.pt").write_bytes(b"\x00" * 50)
    with pytest.raises(ValueError, match=r"manifest\.pt is not a decoder snapshot manifest: it cannot be read"):
        Decoder.load(tmp_path / "snap", model)
    (tmp_path / "snap" / "CURRENT").write_text("../../etc\n")
    with pytest.raises(ValueError, match="CURRENT is not a decoder snapshot pointer"):
        Decoder.load(tmp_path / "snap", model)
    with pytest.raises(TypeError, match="cannot save users"):
        d = Decoder(model, max_users=2, device="cpu")
        d._rows[object()] = 0  # a user id a snapshot cannot hold
        d._positions.update({u: 0 for u in d._rows})
        d.save(tmp_path / "other")


CHILD = r"""
import sys, torch
sys.path.insert(0, {tests!r})
from fuxi_linear.serving import Decoder
from model_helpers import tiny_model
from test_serving import Histories, _admit, _step
model = tiny_model()
hist = Histories(model.config.num_items, seed=5)
decoder = Decoder(model, max_users=4, device="cpu")
_admit(decoder, hist, ["a", "b", "c"], [4, 6, 2], model)
_step(decoder, hist, ["a", "c"], model)
decoder.save({snap!r})  # the snapshot that must survive
torch.save({{"users": decoder.users, "state": decoder.state_of(decoder.users).tensors(),
            "positions": [decoder.position_of(u) for u in decoder.users]}}, {expected!r})
_step(decoder, hist, ["b", "c"], model)
decoder.evict(["a"])
decoder.save({snap!r})  # killed in here
print("save finished", flush=True)
"""


@pytest.mark.parametrize("point", ["decoder.state_written", "decoder.manifest_written"])
def test_killed_during_a_save_the_previous_snapshot_loads(tmp_path, point):
    """SIGKILL inside the second save -- after the new states are written, or when the new snapshot is complete
    but not yet current: the previous snapshot loads intact, and the next save clears the leftovers."""
    snap, expected = tmp_path / "snap", tmp_path / "expected.pt"
    script = CHILD.format(tests=str(TESTS), snap=str(snap), expected=str(expected))
    env = dict(os.environ, **{CRASH_ENV: f"{point}:2"})  # the second save
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == -signal.SIGKILL, run.stdout + run.stderr[-3000:]
    assert "save finished" not in run.stdout
    leftovers = [p.name for p in snap.iterdir() if p.name not in ("CURRENT", "snapshot-000001")]
    assert leftovers, "the killed save left nothing behind: the crash point was not inside the save"
    model = tiny_model()
    restored = Decoder.load(snap, model)
    saved = torch.load(expected, weights_only=True)
    assert restored.users == saved["users"] == ["a", "b", "c"]
    assert [restored.position_of(u) for u in restored.users] == saved["positions"]
    for a, b in zip(restored.state_of(restored.users).tensors(), saved["state"]):
        assert torch.equal(a, b)
    restored.save(snap)  # the next save completes and clears what the killed one left
    assert sorted(p.name for p in snap.iterdir()) == ["CURRENT", "snapshot-000002" if point ==
                                                       "decoder.state_written" else "snapshot-000003"]
