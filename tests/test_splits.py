"""Leave-one-out splits: exact windows, padding, no target leakage (incl. timestamp ties)."""

import numpy as np
import pytest
import torch

from fuxi_linear.data.interactions import InteractionLog
from fuxi_linear.data.splits import collate_batch, leave_one_out, make_loader
from fuxi_linear.data.synthetic import make_synthetic_log


def _log(seqs):
    """One user per list of (item, time) pairs; item raw ids are kept as-is."""
    users, items, times = [], [], []
    for u, seq in enumerate(seqs):
        for it, t in seq:
            users.append(u)
            items.append(it)
            times.append(t)
    return InteractionLog.from_arrays(np.array(users), np.array(items), np.array(times), name="s")


def _raw(log, ids):
    return [int(log.item_raw_ids[i - 1]) for i in ids]


def test_three_way_windows_exact():
    # user 0: items 10..16 at times 100..106 (7 events); user 1: 3 events; user 2: 2 events (dropped)
    log = _log(
        [
            [(10 + k, 100 + k) for k in range(7)],
            [(30, 5), (31, 6), (32, 7)],
            [(40, 1), (41, 2)],
        ]
    )
    with pytest.warns(UserWarning, match="dropped 1 of 3 users"):
        sp = leave_one_out(log, max_seq_len=3, mode="3way")
    assert sp.num_dropped_users == 1 and sp.num_users_without_train == 1
    assert len(sp.test) == 2 and len(sp.valid) == 2 and len(sp.train) == 1

    t = sp.test[0]
    assert _raw(log, t["item_ids"]) == [13, 14, 15]
    assert t["timestamps"].tolist() == [103, 104, 105]
    assert _raw(log, [t["target_id"]]) == [16] and t["query_timestamp"] == 106
    assert _raw(log, t["train_targets"]) == [14, 15, 16]
    assert _raw(log, t["history_ids"]) == [10, 11, 12, 13, 14, 15]  # full prefix, not only the window

    v = sp.valid[0]
    assert _raw(log, v["item_ids"]) == [12, 13, 14] and _raw(log, [v["target_id"]]) == [15]
    assert v["query_timestamp"] == 105

    # Train part = events 10..14; window = last 4 (= max_seq_len + 1): input 11,12,13 -> target 14.
    tr = sp.train[0]
    assert _raw(log, tr["item_ids"]) == [11, 12, 13]
    assert _raw(log, tr["train_targets"]) == [12, 13, 14]
    assert _raw(log, [tr["target_id"]]) == [14] and tr["query_timestamp"] == 104

    # User 1 (3 events): valid history (30) -> 31, test (30, 31) -> 32, no train example.
    assert _raw(log, sp.valid[1]["item_ids"]) == [30] and _raw(log, [sp.valid[1]["target_id"]]) == [31]
    assert _raw(log, sp.test[1]["item_ids"]) == [30, 31]


def test_two_way_and_short_history():
    log = _log([[(1, 1), (2, 2)], [(5, 1), (6, 2), (7, 3)], [(9, 1)]])
    with pytest.warns(UserWarning):
        sp = leave_one_out(log, max_seq_len=10, mode="2way")
    assert sp.valid is None and sp.num_dropped_users == 1
    assert [_raw(log, sp.test[i]["item_ids"]) for i in range(2)] == [[1], [5, 6]]
    # Train part of user 1 = (5, 6): input 5 -> target 6; user 0's train part (1) is too short.
    assert len(sp.train) == 1
    assert _raw(log, sp.train[0]["item_ids"]) == [5] and _raw(log, [sp.train[0]["target_id"]]) == [6]


def test_train_stride_tiles_history():
    log = _log([[(k + 1, k) for k in range(12)]])
    sp = leave_one_out(log, max_seq_len=4, mode="3way", train_stride=4)
    # Train part: items 1..10 (event 9 is the last train target).
    windows = [(_raw(log, sp.train[i]["item_ids"]), _raw(log, [sp.train[i]["target_id"]])[0]) for i in range(len(sp.train))]
    assert windows == [([6, 7, 8, 9], 10), ([2, 3, 4, 5], 6), ([1], 2)]
    single = leave_one_out(log, max_seq_len=4, mode="3way")
    assert len(single.train) == 1


def test_no_leakage_with_equal_timestamps():
    # All events of a user share one timestamp; file order decides what is "before".
    items = [101, 102, 103, 104, 105, 106]
    log = _log([[(it, 50) for it in items], [(201, 7), (202, 7), (203, 7)]])
    sp = leave_one_out(log, max_seq_len=10, mode="3way")
    t, v, tr = sp.test[0], sp.valid[0], sp.train[0]
    assert _raw(log, t["item_ids"]) == items[:5] and _raw(log, [t["target_id"]]) == [106]
    assert _raw(log, v["item_ids"]) == items[:4] and _raw(log, [v["target_id"]]) == [105]
    assert _raw(log, tr["item_ids"]) == items[:3] and _raw(log, [tr["target_id"]]) == [104]
    for ds in (sp.train, sp.valid, sp.test):
        for i in range(len(ds)):
            ex = ds[i]
            assert ex["target_id"] not in ex["item_ids"].tolist()
            assert ex["target_id"] not in ex["history_ids"].tolist()


def test_no_leakage_property_on_synthetic():
    log = make_synthetic_log(num_users=40, num_items=300, mean_events=40, seed=5)
    sp = leave_one_out(log, max_seq_len=16, mode="3way", train_stride=8)
    for ds in (sp.train, sp.valid, sp.test):
        assert np.all(ds.starts < ds.targets)
        assert np.all(ds.targets - ds.starts <= 16)
        # Every input event precedes the target in (time, file order) and belongs to its user.
        assert np.all(log.user_ids[ds.starts] == log.user_ids[ds.targets])
        for i in range(0, len(ds), 7):
            ex = ds[i]
            assert ex["timestamps"].max() <= ex["query_timestamp"]
    # Held-out events never appear as train inputs or train targets.
    held = set(sp.test.targets.tolist()) | set(sp.valid.targets.tolist())
    for s, t in zip(sp.train.starts.tolist(), sp.train.targets.tolist()):
        assert held.isdisjoint(range(s, t + 1))
    # Validation history is a strict prefix of the test history's events.
    assert np.all(sp.valid.targets == sp.test.targets - 1)


def test_collate_and_loader():
    log = _log([[(1, 1), (2, 2), (3, 3), (4, 4), (5, 5)], [(7, 1), (8, 2), (9, 3)]])
    sp = leave_one_out(log, max_seq_len=3, mode="3way")
    batch = collate_batch([sp.test[0], sp.test[1]])
    assert set(batch) == {
        "item_ids", "timestamps", "train_targets", "lengths",
        "query_timestamps", "target_ids", "user_ids", "history_ids",
    }
    for v in batch.values():
        assert v.dtype == torch.int64
    assert batch["item_ids"].shape == (2, 3)
    assert batch["lengths"].tolist() == [3, 2]
    assert _raw(log, batch["item_ids"][0].tolist()) == [2, 3, 4]
    assert batch["item_ids"][1, 2].item() == 0 and batch["timestamps"][1, 2].item() == 0
    assert batch["train_targets"][1, 2].item() == 0
    # train_targets: next item inside the window, target at the last valid position.
    assert batch["train_targets"][0, 2] == batch["target_ids"][0]
    assert batch["train_targets"][1, 1] == batch["target_ids"][1]
    assert torch.equal(batch["train_targets"][0, :2], batch["item_ids"][0, 1:3])
    assert batch["query_timestamps"].tolist() == [5, 3]
    assert batch["history_ids"].shape == (2, 4) and batch["history_ids"][1, 2:].tolist() == [0, 0]

    a = [b["target_ids"].tolist() for b in make_loader(sp.train, 1, shuffle=True, seed=3)]
    b = [b["target_ids"].tolist() for b in make_loader(sp.train, 1, shuffle=True, seed=3)]
    assert a == b
    with pytest.raises(ValueError, match="examples"):
        collate_batch([])


def test_bad_arguments():
    log = _log([[(1, 1), (2, 2), (3, 3)]])
    with pytest.raises(ValueError, match="max_seq_len"):
        leave_one_out(log, max_seq_len=0)
    with pytest.raises(ValueError, match="mode"):
        leave_one_out(log, max_seq_len=4, mode="1way")
    with pytest.raises(ValueError, match="train_stride"):
        leave_one_out(log, max_seq_len=4, train_stride=0)
    with pytest.raises(TypeError, match="log"):
        leave_one_out({"not": "a log"}, max_seq_len=4)
