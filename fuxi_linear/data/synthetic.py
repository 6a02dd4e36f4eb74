"""Synthetic interaction logs whose next item depends on *when* it is requested.

The generator is meant for quick CPU experiments and tests: a model that reads
the query timestamp (time of day, weekday vs weekend) should clearly beat a
time-blind sequential model, and both should beat most-popular.

Generative process (all randomness from ``numpy.random.default_rng(seed)``,
all times are UTC unix seconds):

1. **Catalogue.** Items ``0 .. num_items - 1`` (raw ids) are split into
   ``num_topics`` contiguous topics of (almost) equal size. Inside each topic
   the items have a Zipf popularity (exponent ``item_zipf_exponent``) over a
   random permutation of positions, and items are arranged on a ring so
   ``position +- 1, 2`` are "neighbours". Because topics are equally likely
   overall, global popularity is flat-ish and most-popular is a weak baseline.
2. **Users.** Each user draws ``topics_per_user`` favourite topics and maps
   each of the 8 *time contexts* (``{weekday, weekend} x {night [0h, 6h),
   morning [6h, 12h), afternoon [12h, 18h), evening [18h, 24h)}``) to one
   favourite, via a random permutation so every favourite covers about the same
   number of contexts and adjacent contexts usually differ. The number of
   events per user is ``mean_events * U(1 - events_spread, 1 + events_spread)``
   (at least ``min_events``).
3. **Timeline.** A user starts at ``start_timestamp + U(0, 14 days)`` and
   produces sessions. Session lengths are geometric with mean
   ``mean_session_length``; events inside a session are
   ``max(10 s, Exp(intra_session_gap_s))`` apart (minutes). Between sessions
   the gap is ``30 min + Exp(mean_session_gap_s)`` (hours), or with probability
   ``p_long_absence`` a multi-day absence ``U(1.5, 10)`` days. A session that
   would start between 23:00 and 07:00 is, with probability ``p_night_skip``,
   moved to 07:00-09:00 the next morning, which yields ~8 h night gaps.
4. **Item choice** for an event requested at time ``t``:

   * topic: for the first event of a session, with probability ``p_comeback_topic``, the break decides:
     after at least ``comeback_gap_s`` (6 h) the user's *home* topic (first favourite), after a shorter
     break their *quick-check* topic (second favourite) — only the gap to the request time tells a
     comeback from a quick check from a continuation of the session;
     otherwise, with probability ``p_context_topic`` the user's topic for the time
     context of ``t``; otherwise a random favourite (half of the time) or a
     uniformly random topic;
   * item: inside a session, if the topic equals the previous event's topic,
     with probability ``p_neighbor`` a ring neighbour of the previous item;
     otherwise a Zipf draw inside the topic.

The first event of a session (about ``1 / mean_session_length`` of all
events, and often the held-out last event) is therefore predictable from the
request timestamp but not from the previous items, which come from another
time context. Within a session the previous item carries most of the signal.
"""

from __future__ import annotations

import math

import numpy as np

from .interactions import InteractionLog

__all__ = [
    "SLOT_NAMES",
    "SYNTHETIC_TEMPORAL_PERIODS",
    "make_synthetic_log",
    "synthetic_item_topics",
    "time_context",
]

#: Temporal-channel periods (seconds) matched to this generator's calendar: minute, 10 minutes, hour, the
#: 6-hour slot, day, week, four weeks, year. The training defaults use them for the synthetic dataset, the way
#: the paper picks periods per dataset (SPEC §3's base/start/stride rule gives none of a day or a week).
SYNTHETIC_TEMPORAL_PERIODS: tuple[int, ...] = (60, 600, 3_600, 21_600, 86_400, 604_800, 2_419_200, 31_536_000)

#: Names of the four daily slots (UTC hours [0, 6), [6, 12), [12, 18), [18, 24)).
SLOT_NAMES: tuple[str, ...] = ("night", "morning", "afternoon", "evening")

_DAY = 86_400
_HOUR = 3_600
# 1970-01-01 was a Thursday; with Monday = 0 the weekday of day d is (d + 3) % 7.
_EPOCH_WEEKDAY = 3
_NIGHT_START_S = 23 * _HOUR
_MORNING_S = 7 * _HOUR


def time_context(timestamps: np.ndarray | int) -> np.ndarray:
    """Time context id in ``0..7`` of unix-second timestamps (UTC).

    ``context = 4 * is_weekend + slot`` with ``slot = hour // 6``
    (see :data:`SLOT_NAMES`).

    Args:
        timestamps: int or ``(...,)`` integer array of unix seconds.

    Returns:
        int64 array of the same shape.
    """
    t = np.asarray(timestamps, dtype=np.int64)
    days = np.floor_divide(t, _DAY)
    weekend = ((days + _EPOCH_WEEKDAY) % 7) >= 5
    slot = (t - days * _DAY) // (6 * _HOUR)
    return (4 * weekend + slot).astype(np.int64)


def _topic_bounds(num_items: int, num_topics: int) -> np.ndarray:
    """``(num_topics + 1,)`` raw-id boundaries: topic k owns ``[b[k], b[k+1])``."""
    return (np.arange(num_topics + 1, dtype=np.int64) * num_items) // num_topics


def synthetic_item_topics(raw_item_ids: np.ndarray, num_items: int, num_topics: int) -> np.ndarray:
    """Topic of raw synthetic item ids (as stored in ``InteractionLog.item_raw_ids``).

    Args:
        raw_item_ids: integer array of raw ids in ``[0, num_items)``.
        num_items, num_topics: the values passed to :func:`make_synthetic_log`.

    Returns:
        int64 array of topics in ``[0, num_topics)``, same shape.
    """
    raw = np.asarray(raw_item_ids, dtype=np.int64)
    if raw.size and (raw.min() < 0 or raw.max() >= num_items):
        raise ValueError(f"raw_item_ids must lie in [0, num_items={num_items})")
    bounds = _topic_bounds(num_items, num_topics)
    return (np.searchsorted(bounds, raw, side="right") - 1).astype(np.int64)


def _check_int(arg: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{arg} must be an int >= {minimum}, got {value!r}")
    return int(value)


def _check_prob(arg: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{arg} must be a probability in [0, 1], got {value!r}")
    return float(value)


def _check_pos(arg: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ValueError(f"{arg} must be a positive number, got {value!r}")
    return float(value)


def make_synthetic_log(
    num_users: int = 500,
    num_items: int = 1000,
    mean_events: int = 250,
    seed: int = 0,
    *,
    num_topics: int = 20,
    topics_per_user: int = 4,
    events_spread: float = 0.4,
    min_events: int = 8,
    mean_session_length: float = 2.5,
    intra_session_gap_s: float = 180.0,
    mean_session_gap_s: float = 4.0 * _HOUR,
    p_long_absence: float = 0.04,
    p_night_skip: float = 0.9,
    p_context_topic: float = 0.85,
    p_neighbor: float = 0.6,
    p_comeback_topic: float = 0.8,
    comeback_gap_s: float = 6.0 * _HOUR,
    item_zipf_exponent: float = 1.0,
    start_timestamp: int = 1_609_718_400,  # Monday 2021-01-04 00:00:00 UTC
    name: str = "synthetic",
) -> InteractionLog:
    """Generate a deterministic, time-dependent interaction log (see module docstring).

    Args:
        num_users: number of users (all appear in the log).
        num_items: catalogue size (raw ids ``0..num_items-1``; items never
            drawn are absent from the remapped log).
        mean_events: mean events per user.
        seed: RNG seed; equal arguments give identical logs.
        num_topics: number of item topics (``<= num_items``).
        topics_per_user: favourite topics per user (``<= num_topics``).
        events_spread: relative half-width of the per-user event count range.
        min_events: lower bound of events per user.
        mean_session_length: mean events per session (``>= 1``).
        intra_session_gap_s: mean gap inside a session (seconds).
        mean_session_gap_s: mean extra gap between sessions (seconds).
        p_long_absence: probability that a session gap is a multi-day absence.
        p_night_skip: probability that a night-time session start is moved
            to the next morning.
        p_comeback_topic: probability that the first event of a session is chosen by the length of the
            break before it: the user's home topic (first favourite) after a break of at least
            ``comeback_gap_s``, their quick-check topic (second favourite) after a shorter one.
        comeback_gap_s: the break (seconds) from which a session counts as a comeback.
        p_context_topic: probability that an event's topic is the user's topic
            for the time context of its timestamp.
        p_neighbor: probability of moving to a ring neighbour of the previous
            item (same session, same topic).
        item_zipf_exponent: Zipf exponent of popularity inside a topic.
        start_timestamp: earliest possible first timestamp (unix seconds).
        name: log name.

    Returns:
        :class:`InteractionLog` with ``timestamp_unit="s"``;
        ``item_raw_ids`` hold the raw ids, see :func:`synthetic_item_topics`.
    """
    num_users = _check_int("num_users", num_users, 1)
    num_items = _check_int("num_items", num_items, 1)
    mean_events = _check_int("mean_events", mean_events, 1)
    seed = _check_int("seed", seed, 0)
    num_topics = _check_int("num_topics", num_topics, 1)
    if num_topics > num_items:
        raise ValueError(f"num_topics ({num_topics}) must be <= num_items ({num_items})")
    topics_per_user = _check_int("topics_per_user", topics_per_user, 1)
    if topics_per_user > num_topics:
        raise ValueError(f"topics_per_user ({topics_per_user}) must be <= num_topics ({num_topics})")
    min_events = _check_int("min_events", min_events, 1)
    start_timestamp = _check_int("start_timestamp", start_timestamp, 0)
    if isinstance(events_spread, bool) or not isinstance(events_spread, (int, float)) or not 0 <= events_spread < 1:
        raise ValueError(f"events_spread must be in [0, 1), got {events_spread!r}")
    mean_session_length = _check_pos("mean_session_length", mean_session_length)
    if mean_session_length < 1:
        raise ValueError(f"mean_session_length must be >= 1, got {mean_session_length}")
    intra_session_gap_s = _check_pos("intra_session_gap_s", intra_session_gap_s)
    mean_session_gap_s = _check_pos("mean_session_gap_s", mean_session_gap_s)
    p_long_absence = _check_prob("p_long_absence", p_long_absence)
    p_night_skip = _check_prob("p_night_skip", p_night_skip)
    p_context_topic = _check_prob("p_context_topic", p_context_topic)
    p_neighbor = _check_prob("p_neighbor", p_neighbor)
    p_comeback_topic = _check_prob("p_comeback_topic", p_comeback_topic)
    comeback_gap_s = _check_pos("comeback_gap_s", comeback_gap_s)
    if isinstance(item_zipf_exponent, bool) or not isinstance(item_zipf_exponent, (int, float)) or item_zipf_exponent < 0:
        raise ValueError(f"item_zipf_exponent must be >= 0, got {item_zipf_exponent!r}")
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")

    rng = np.random.default_rng(seed)

    # --- catalogue ---------------------------------------------------------
    bounds = _topic_bounds(num_items, num_topics)
    sizes = np.diff(bounds)
    # Per topic: cumulative Zipf probabilities over popularity ranks and the
    # ring position that holds each rank (popular items are scattered).
    topic_cdf: list[np.ndarray] = []
    topic_rank_to_pos: list[np.ndarray] = []
    for size in sizes.tolist():
        weights = np.arange(1, size + 1, dtype=np.float64) ** (-float(item_zipf_exponent))
        cdf = np.cumsum(weights / weights.sum())
        cdf[-1] = 1.0
        topic_cdf.append(cdf)
        topic_rank_to_pos.append(rng.permutation(size))

    bounds_list = bounds.tolist()
    sizes_list = sizes.tolist()

    # --- users ---------------------------------------------------------------
    log_stay = math.log1p(-1.0 / mean_session_length) if mean_session_length > 1 else None
    users_out: list[np.ndarray] = []
    items_out: list[np.ndarray] = []
    times_out: list[np.ndarray] = []
    for user in range(num_users):
        n_events = max(
            min_events,
            int(round(mean_events * rng.uniform(1.0 - events_spread, 1.0 + events_spread))),
        )
        favourites = rng.choice(num_topics, size=topics_per_user, replace=False)
        context_topic = favourites[rng.permutation(8) % topics_per_user].tolist()
        fav_list = favourites.tolist()
        # Pre-drawn uniforms keep the Python loop free of per-call RNG overhead.
        # Columns: 0 absence coin, 1 gap size, 2 night coin, 3 morning offset,
        # 4 session length, 5 context coin, 6 favourite coin, 7 topic pick,
        # 8 neighbour coin, 9 Zipf rank, 10 neighbour step, 11 comeback coin.
        draws = rng.random((n_events, 12)).tolist()
        t = start_timestamp + int(rng.integers(0, 14 * _DAY))
        items = np.empty(n_events, dtype=np.int64)
        times = np.empty(n_events, dtype=np.int64)
        left_in_session = 0
        session_gap = 0
        prev_topic = -1
        prev_pos = -1
        for k in range(n_events):
            u = draws[k]
            if left_in_session == 0:
                if k > 0:
                    # Gap to the next session (hours, sometimes days, nights skipped).
                    if u[0] < p_long_absence:
                        gap = int(_DAY * (1.5 + 8.5 * u[1]))
                    else:
                        gap = 1800 + int(-mean_session_gap_s * math.log1p(-u[1]))
                    t_before = t
                    t += gap
                    sod = t % _DAY
                    if (sod >= _NIGHT_START_S or sod < _MORNING_S) and u[2] < p_night_skip:
                        day_start = t - sod + (_DAY if sod >= _NIGHT_START_S else 0)
                        t = day_start + _MORNING_S + int(2 * _HOUR * u[3])
                    session_gap = t - t_before
                if log_stay is None:
                    left_in_session = 1
                else:
                    left_in_session = 1 + int(math.log1p(-u[4]) / log_stay)
                first_in_session = True
            else:
                t += max(10, int(-intra_session_gap_s * math.log1p(-u[1])))
                first_in_session = False
            left_in_session -= 1

            # Topic from the *request* time of this event.
            days = t // _DAY
            ctx = 4 * (((days + _EPOCH_WEEKDAY) % 7) >= 5) + (t - days * _DAY) // (6 * _HOUR)
            if first_in_session and k > 0 and u[11] < p_comeback_topic:
                # the length of the break decides where a session starts: after a long one the user's home
                # topic, after a short one their quick-check topic
                topic = fav_list[0] if session_gap >= comeback_gap_s or topics_per_user == 1 else fav_list[1]
            elif u[5] < p_context_topic:
                topic = context_topic[ctx]
            elif u[6] < 0.5:
                topic = fav_list[int(u[7] * topics_per_user)]
            else:
                topic = int(u[7] * num_topics)
            size = sizes_list[topic]
            if not first_in_session and topic == prev_topic and u[8] < p_neighbor and size > 1:
                step = (-2, -1, 1, 2)[int(u[10] * 4)] if size > 2 else 1
                pos = (prev_pos + step) % size
            else:
                rank = int(np.searchsorted(topic_cdf[topic], u[9], side="right"))
                pos = int(topic_rank_to_pos[topic][min(rank, size - 1)])
            items[k] = bounds_list[topic] + pos
            times[k] = t
            prev_topic, prev_pos = topic, pos
        users_out.append(np.full(n_events, user, dtype=np.int64))
        items_out.append(items)
        times_out.append(times)

    return InteractionLog.from_arrays(
        np.concatenate(users_out),
        np.concatenate(items_out),
        np.concatenate(times_out),
        timestamp_unit="s",
        name=name,
    )
