"""InteractionLog: remapping, stable ordering, k-core, persistence, validation."""

import numpy as np
import pytest

from fuxi_linear.data.interactions import InteractionLog


def _log(users, items, times, unit="s"):
    return InteractionLog.from_arrays(
        np.array(users), np.array(items), np.array(times), timestamp_unit=unit, name="t"
    )


def test_from_arrays_remaps_and_sorts_stably():
    # raw users 50 and 7, items 900/300/100; user 50 has a timestamp tie.
    log = _log([50, 7, 50, 50, 7], [900, 300, 100, 300, 900], [20, 5, 10, 10, 1])
    assert log.num_users == 2 and log.num_items == 3
    assert log.user_raw_ids.tolist() == [7, 50]
    assert log.item_raw_ids.tolist() == [100, 300, 900]
    assert log.user_ids.tolist() == [0, 0, 1, 1, 1]
    # user 7: (900, t=1), (300, t=5); user 50: ties at t=10 keep file order 100 then 300.
    assert log.item_ids.tolist() == [3, 2, 1, 2, 3]
    assert log.timestamps.tolist() == [1, 5, 10, 10, 20]
    assert log.user_offsets.tolist() == [0, 2, 5]
    assert log.sequence_lengths.tolist() == [2, 3]
    items, times = log.user_events(1)
    assert items.tolist() == [1, 2, 3] and times.tolist() == [10, 10, 20]
    for arr in (log.user_ids, log.item_ids, log.timestamps, log.user_offsets):
        assert arr.dtype == np.int64


def test_many_ties_keep_file_order():
    rng = np.random.default_rng(0)
    n = 2000
    users = rng.integers(0, 5, n)
    times = rng.integers(0, 3, n)  # heavy ties
    items = np.arange(n)  # item raw id == file row
    log = _log(users, items, times)
    for u in range(log.num_users):
        it, ts = log.user_events(u)
        rows = log.item_raw_ids[it - 1]
        order = np.lexsort((rows, ts))
        assert np.array_equal(order, np.arange(len(order)))


def test_string_ids_and_large_ids():
    log = _log(np.array(["bob", "amy", "bob"]), np.array([10**12, 5, 5]), [3, 2, 1])
    assert log.user_raw_ids.tolist() == ["amy", "bob"]
    assert log.item_raw_ids.tolist() == [5, 10**12]
    assert log.user_ids.tolist() == [0, 1, 1]
    assert log.item_ids.tolist() == [1, 1, 2]


def test_k_core_iterates_to_fixed_point():
    # Chain: user 2 has 1 event on item C; removing it makes item C have 1
    # event (user 1), so user 1 drops below 2 after C is gone, etc.
    users = [0, 0, 0, 1, 1, 1, 2, 3, 3]
    items = [1, 2, 3, 1, 2, 4, 4, 5, 5]
    times = list(range(9))
    log = _log(users, items, times)
    core = log.k_core(min_user=2, min_item=2)
    # Item 3 and 5? item 5 has 2 events (user 3) -> kept; item 4: users 1 and 2;
    # user 2 has 1 event -> dropped -> item 4 has 1 -> dropped -> user 1 keeps items 1,2.
    # Item 3 has 1 event -> dropped.
    assert core.num_users == 3
    assert core.user_raw_ids.tolist() == [0, 1, 3]
    assert core.item_raw_ids.tolist() == [1, 2, 5]
    assert core.sequence_lengths.tolist() == [2, 2, 2]
    counts_u = np.bincount(core.user_ids)
    counts_i = np.bincount(core.item_ids)[1:]
    assert counts_u.min() >= 2 and counts_i.min() >= 2
    # Remapped densely, order preserved.
    assert core.item_ids.tolist() == [1, 2, 1, 2, 3, 3]
    # A second pass changes nothing.
    again = core.k_core(2, 2)
    assert np.array_equal(again.item_ids, core.item_ids) and again.num_users == core.num_users


def test_k_core_can_empty_the_log():
    log = _log([0, 1], [1, 2], [0, 0])
    empty = log.k_core(2, 2)
    assert empty.num_events == 0 and empty.num_users == 0 and empty.num_items == 0
    assert empty.user_offsets.tolist() == [0]


def test_drop_short_users():
    log = _log([0, 0, 0, 1, 2, 2], [1, 2, 3, 4, 1, 5], range(6))
    kept, dropped = log.drop_short_users(2)
    assert dropped == 1
    assert kept.user_raw_ids.tolist() == [0, 2]
    assert kept.item_raw_ids.tolist() == [1, 2, 3, 5]  # item 4 only belonged to user 1
    with pytest.raises(ValueError, match="min_events"):
        log.drop_short_users(-1)


def test_save_load_roundtrip(tmp_path):
    log = _log(np.array(["u1", "u2", "u1"]), [3, 4, 3], [5, 6, 7], unit="ms")
    path = tmp_path / "sub" / "log.bin"  # exact name kept, no ".npz" appended
    log.save(path)
    assert path.is_file()
    back = InteractionLog.load(path)
    for f in ("user_ids", "item_ids", "timestamps", "user_offsets", "user_raw_ids", "item_raw_ids"):
        assert np.array_equal(getattr(back, f), getattr(log, f)), f
    assert (back.num_users, back.num_items, back.timestamp_unit, back.name) == (2, 2, "ms", "t")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        InteractionLog.load(tmp_path / "missing.npz")


def test_constructor_validation():
    ok = dict(user_ids=[0, 0], item_ids=[1, 2], timestamps=[1, 2], num_users=1, num_items=2)
    InteractionLog(**ok)
    with pytest.raises(ValueError, match="sorted"):
        InteractionLog(**{**ok, "timestamps": [2, 1]})
    with pytest.raises(ValueError, match="item_ids"):
        InteractionLog(**{**ok, "item_ids": [0, 1]})
    with pytest.raises(ValueError, match="timestamp_unit"):
        InteractionLog(**ok, timestamp_unit="us")
    with pytest.raises(TypeError, match="timestamps"):
        InteractionLog(**{**ok, "timestamps": [1.5, 2.0]})
    with pytest.raises(ValueError, match="same length"):
        InteractionLog(**{**ok, "timestamps": [1]})
    with pytest.raises(ValueError, match="user_offsets"):
        InteractionLog(**ok, user_offsets=np.array([0, 1]))
    with pytest.raises(ValueError, match="k_core|min_user"):
        InteractionLog(**ok).k_core(-1, 2)
