"""Synthetic generator: determinism, realistic gaps, and a time-dependent signal."""

import numpy as np
import pytest

from fuxi_linear.data.synthetic import make_synthetic_log, synthetic_item_topics, time_context


@pytest.fixture(scope="module")
def default_log():
    return make_synthetic_log(seed=3)


def test_deterministic_by_seed():
    a = make_synthetic_log(num_users=30, num_items=200, mean_events=60, seed=7)
    b = make_synthetic_log(num_users=30, num_items=200, mean_events=60, seed=7)
    c = make_synthetic_log(num_users=30, num_items=200, mean_events=60, seed=8)
    for f in ("user_ids", "item_ids", "timestamps", "item_raw_ids"):
        assert np.array_equal(getattr(a, f), getattr(b, f))
    assert not np.array_equal(a.item_ids, c.item_ids) or not np.array_equal(a.timestamps, c.timestamps)


def test_default_sizes_and_dtypes(default_log):
    log = default_log
    assert log.timestamp_unit == "s" and log.num_users == 500
    assert 900 <= log.num_items <= 1000
    lengths = log.sequence_lengths
    assert 230 <= lengths.mean() <= 270 and lengths.min() >= 140 and lengths.max() <= 360
    assert log.timestamps.dtype == np.int64
    # Long histories on request.
    long = make_synthetic_log(num_users=2, num_items=100, mean_events=3000, seed=0, num_topics=10)
    assert long.sequence_lengths.min() >= 1800


def test_gap_statistics(default_log):
    log = default_log
    same_user = np.diff(log.user_ids) == 0
    gaps = np.diff(log.timestamps)[same_user]
    assert gaps.min() >= 10  # strictly increasing within a user
    minutes = gaps < 30 * 60
    nights = (gaps >= 6 * 3600) & (gaps < 14 * 3600)
    multi_day = gaps >= 2 * 86400
    assert 0.55 < minutes.mean() < 0.8  # sessions of a few events minutes apart
    assert np.median(gaps[minutes]) < 5 * 60
    assert 0.03 < nights.mean() < 0.2
    assert 0.002 < multi_day.mean() < 0.05
    # Few events between 01:00 and 06:00 UTC (nights are skipped).
    hour = (log.timestamps % 86400) // 3600
    assert np.mean((hour >= 1) & (hour < 6)) < 0.03


def test_next_topic_depends_on_request_time(default_log):
    """A heuristic that reads the gap to the request time predicts the held-out topic far better than
    time-blind ones: in a session it keeps the previous topic, after a short break it guesses the topic the
    user checked after earlier short breaks, after a long one the topic they came back to before."""
    log = default_log
    topics = synthetic_item_topics(log.item_raw_ids[log.item_ids - 1], num_items=1000, num_topics=20)
    aware = last = majority = 0
    for u in range(log.num_users):
        lo, hi = log.user_offsets[u], log.user_offsets[u + 1]
        t_hist = topics[lo : hi - 1]
        gaps = np.diff(log.timestamps[lo:hi])  # gaps[j] = gap before event lo + j + 1
        target = topics[hi - 1]
        starts_after = t_hist[1:]
        long_breaks = starts_after[gaps[:-1] >= 6 * 3600]
        short_breaks = starts_after[(gaps[:-1] >= 1800) & (gaps[:-1] < 6 * 3600)]
        if gaps[-1] >= 6 * 3600 and long_breaks.size:
            guess = np.bincount(long_breaks).argmax()
        elif gaps[-1] >= 1800 and short_breaks.size:
            guess = np.bincount(short_breaks).argmax()
        else:
            guess = t_hist[-1]
        aware += guess == target
        last += t_hist[-1] == target
        majority += np.bincount(t_hist).argmax() == target
    n = log.num_users
    assert aware / n > 0.65
    assert aware / n > last / n + 0.15
    assert aware / n > majority / n + 0.3


def test_most_popular_is_weak(default_log):
    log = default_log
    last = log.user_offsets[1:] - 1
    train = np.ones(log.num_events, dtype=bool)
    train[last] = False
    pop = np.bincount(log.item_ids[train], minlength=log.num_items + 1)
    pop[0] = -1
    top10 = np.argsort(-pop, kind="stable")[:10]
    hr10 = np.isin(log.item_ids[last], top10).mean()
    assert hr10 < 0.15


def test_time_context():
    monday_0000 = 1_609_718_400
    assert time_context(monday_0000) == 0
    assert time_context(monday_0000 + 7 * 3600) == 1
    assert time_context(monday_0000 + 13 * 3600) == 2
    assert time_context(monday_0000 + 20 * 3600) == 3
    saturday = monday_0000 + 5 * 86400
    assert time_context(saturday + 8 * 3600) == 5
    assert time_context(np.array([saturday - 1, saturday])).tolist() == [3, 4]


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_users"):
        make_synthetic_log(num_users=0)
    with pytest.raises(ValueError, match="p_context_topic"):
        make_synthetic_log(num_users=2, p_context_topic=1.5)
    with pytest.raises(ValueError, match="num_topics"):
        make_synthetic_log(num_users=2, num_items=5, num_topics=6)
    with pytest.raises(ValueError, match="raw_item_ids"):
        synthetic_item_topics(np.array([10]), num_items=10, num_topics=2)
