"""Table tests for the pure retention planners in p88backup.core.retention.policy."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone

import pytest

from p88backup.core.retention.policy import (
    Candidate,
    Decision,
    GfsPolicy,
    plan_count_or_window,
    plan_gfs,
)


def t(text: str) -> datetime:
    """'2026-11-27T02:15' (UTC) or any ISO time with an offset."""
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def b(text: str, good: bool = True) -> Candidate:
    """A backup whose id is its time text, which keeps the tables readable."""
    return Candidate(id=text, time=t(text), good=good)


def days(first: str, count: int, hour: str = "02:15") -> list[Candidate]:
    start = datetime.fromisoformat(first).date()
    return [b(f"{start + timedelta(days=i)}T{hour}") for i in range(count)]


NOW = "2030-01-01T00:00"
ZERO = GfsPolicy(keep_daily=0, keep_weekly=0, keep_monthly=0, keep_min=0)


def daily(n: int, keep_min: int = 0) -> GfsPolicy:
    return GfsPolicy(keep_daily=n, keep_weekly=0, keep_monthly=0, keep_min=keep_min)


THIRTY = days("2026-11-01", 30)

GFS_CASES = [
    pytest.param([], daily(7), NOW, {}, [], id="empty"),
    pytest.param(
        [b("2026-11-27T02:15")],
        GfsPolicy(7, 4, 6),
        NOW,
        {
            "2026-11-27T02:15": [
                "daily 2026-11-27",
                "weekly 2026-W48",
                "monthly 2026-11",
                "newest",
                "min",
            ]
        },
        [],
        id="single-backup-all-reasons",
    ),
    pytest.param(
        [b("2026-11-25T02:15"), b("2026-11-26T02:15"), b("2026-11-27T02:15")],
        ZERO,
        NOW,
        {"2026-11-27T02:15": ["newest"]},
        ["2026-11-25T02:15", "2026-11-26T02:15"],
        id="all-zero-policy-keeps-newest",
    ),
    pytest.param(
        THIRTY,
        daily(7),
        NOW,
        {c.id: [f"daily {c.id[:10]}"] for c in THIRTY[23:29]} | {"2026-11-30T02:15": ["daily 2026-11-30", "newest"]},
        [c.id for c in THIRTY[:23]],
        id="30-days-keep-daily-7",
    ),
    pytest.param(
        [
            b("2026-11-25T01:00"),
            b("2026-11-25T13:00"),
            b("2026-11-26T01:00"),
            b("2026-11-26T13:00"),
            b("2026-11-26T23:59"),
            b("2026-11-27T00:00"),
            b("2026-11-27T12:00"),
        ],
        daily(2),
        NOW,
        {
            "2026-11-26T23:59": ["daily 2026-11-26"],
            "2026-11-27T12:00": ["daily 2026-11-27", "newest"],
        },
        [
            "2026-11-25T01:00",
            "2026-11-25T13:00",
            "2026-11-26T01:00",
            "2026-11-26T13:00",
            "2026-11-27T00:00",
        ],
        id="several-per-day-newest-represents-day",
    ),
    pytest.param(
        # 2026 has 53 ISO weeks: 2026-12-28 .. 2027-01-03 is 2026-W53.
        [
            b("2026-12-27T02:00"),  # Sun, 2026-W52
            b("2026-12-28T02:00"),  # Mon, 2026-W53
            b("2026-12-31T02:00"),  # Thu, 2026-W53
            b("2027-01-01T02:00"),  # Fri, 2026-W53
            b("2027-01-03T02:00"),  # Sun, 2026-W53
            b("2027-01-04T02:00"),  # Mon, 2027-W01
        ],
        GfsPolicy(keep_daily=0, keep_weekly=3, keep_monthly=0, keep_min=0),
        NOW,
        {
            "2026-12-27T02:00": ["weekly 2026-W52"],
            "2027-01-03T02:00": ["weekly 2026-W53"],
            "2027-01-04T02:00": ["weekly 2027-W01", "newest"],
        },
        ["2026-12-28T02:00", "2026-12-31T02:00", "2027-01-01T02:00"],
        id="weekly-across-iso-year-boundary",
    ),
    pytest.param(
        [
            b("2026-11-15T02:00"),
            b("2026-11-30T02:00"),
            b("2026-12-10T02:00"),
            b("2026-12-31T23:59"),
            b("2027-01-01T00:00"),
            b("2027-01-20T02:00"),
        ],
        GfsPolicy(keep_daily=0, keep_weekly=0, keep_monthly=3, keep_min=0),
        NOW,
        {
            "2026-11-30T02:00": ["monthly 2026-11"],
            "2026-12-31T23:59": ["monthly 2026-12"],
            "2027-01-20T02:00": ["monthly 2027-01", "newest"],
        },
        ["2026-11-15T02:00", "2026-12-10T02:00", "2027-01-01T00:00"],
        id="monthly-across-year-boundary",
    ),
    pytest.param(
        # 00:30 in UTC+01:00 is still December 31st in UTC.
        [b("2026-12-31T12:00"), b("2027-01-01T00:30+01:00"), b("2027-01-01T12:00")],
        daily(2),
        NOW,
        {
            "2027-01-01T00:30+01:00": ["daily 2026-12-31"],
            "2027-01-01T12:00": ["daily 2027-01-01", "newest"],
        },
        ["2026-12-31T12:00"],
        id="days-are-utc-days",
    ),
    pytest.param(
        [b("2026-11-25T02:15"), b("2026-11-26T02:15"), b("2026-11-27T02:15")],
        GfsPolicy(keep_daily=1, keep_weekly=1, keep_monthly=1, keep_min=1),
        NOW,
        {
            "2026-11-27T02:15": [
                "daily 2026-11-27",
                "weekly 2026-W48",
                "monthly 2026-11",
                "newest",
                "min",
            ]
        },
        ["2026-11-25T02:15", "2026-11-26T02:15"],
        id="overlapping-rules-list-every-reason",
    ),
    pytest.param(
        # Each rule counts on its own: weekly does not skip the week daily kept.
        [b("2026-11-09T02:00"), b("2026-11-16T02:00"), b("2026-11-26T02:00"), b("2026-11-27T02:00")],
        GfsPolicy(keep_daily=2, keep_weekly=2, keep_monthly=0, keep_min=0),
        NOW,
        {
            "2026-11-16T02:00": ["weekly 2026-W47"],
            "2026-11-26T02:00": ["daily 2026-11-26"],
            "2026-11-27T02:00": ["daily 2026-11-27", "weekly 2026-W48", "newest"],
        },
        ["2026-11-09T02:00"],
        id="rules-count-independently",
    ),
    pytest.param(
        [
            b("2026-11-01T02:00"),
            b("2026-11-02T02:00"),
            b("2026-11-10T02:00"),
            b("2026-11-20T02:00"),
            b("2026-11-21T02:00"),
        ],
        daily(3),
        NOW,
        {
            "2026-11-10T02:00": ["daily 2026-11-10"],
            "2026-11-20T02:00": ["daily 2026-11-20"],
            "2026-11-21T02:00": ["daily 2026-11-21", "newest"],
        },
        ["2026-11-01T02:00", "2026-11-02T02:00"],
        id="days-without-backups-do-not-use-quota",
    ),
    pytest.param(
        [
            b("2026-11-01T02:00"),
            b("2026-11-02T02:00"),
            b("2026-11-03T02:00", good=False),
            b("2026-11-04T02:00"),
        ],
        daily(2),
        NOW,
        {
            "2026-11-02T02:00": ["daily 2026-11-02"],
            "2026-11-04T02:00": ["daily 2026-11-04", "newest"],
        },
        ["2026-11-01T02:00", "2026-11-03T02:00"],
        id="bad-older-than-last-good-expired-and-uses-no-quota",
    ),
    pytest.param(
        [
            b("2026-11-01T02:00", good=False),
            b("2026-11-02T02:00"),
            b("2026-11-03T02:00", good=False),
            b("2026-11-04T02:00", good=False),
        ],
        daily(7),
        NOW,
        {
            "2026-11-02T02:00": ["daily 2026-11-02", "newest"],
            "2026-11-03T02:00": ["newer than last good"],
            "2026-11-04T02:00": ["newer than last good"],
        },
        ["2026-11-01T02:00"],
        id="bad-newer-than-last-good-kept",
    ),
    pytest.param(
        [b("2026-11-01T02:00", good=False), b("2026-11-02T02:00", good=False)],
        daily(7),
        NOW,
        {
            "2026-11-01T02:00": ["newer than last good"],
            "2026-11-02T02:00": ["newer than last good"],
        },
        [],
        id="no-good-backup-keeps-everything",
    ),
    pytest.param(
        days("2026-11-01", 5),
        daily(1, keep_min=3),
        NOW,
        {
            "2026-11-03T02:15": ["min"],
            "2026-11-04T02:15": ["min"],
            "2026-11-05T02:15": ["daily 2026-11-05", "newest", "min"],
        },
        ["2026-11-01T02:15", "2026-11-02T02:15"],
        id="keep-min-larger-than-policy",
    ),
    pytest.param(
        [b("2026-11-01T02:00"), b("2026-11-02T02:00", good=False), b("2026-11-03T02:00")],
        daily(0, keep_min=10),
        NOW,
        {
            "2026-11-01T02:00": ["min"],
            "2026-11-03T02:00": ["newest", "min"],
        },
        ["2026-11-02T02:00"],
        id="keep-min-counts-only-good",
    ),
    pytest.param(
        [b("2026-11-25T02:00"), b("2026-11-26T02:00"), b("2026-11-28T02:00")],
        ZERO,
        "2026-11-27T12:00",
        {"2026-11-28T02:00": ["newest", "future"]},
        ["2026-11-25T02:00", "2026-11-26T02:00"],
        id="future-dated-newest",
    ),
    pytest.param(
        [b("2026-11-25T02:00"), b("2026-11-26T02:00"), b("2026-11-28T02:00", good=False)],
        ZERO,
        "2026-11-27T12:00",
        {
            "2026-11-26T02:00": ["newest"],
            "2026-11-28T02:00": ["future", "newer than last good"],
        },
        ["2026-11-25T02:00"],
        id="future-dated-bad",
    ),
    pytest.param(
        [b("2026-11-25T02:00"), b("2026-11-26T02:00"), b("2026-11-27T02:00")],
        ZERO,
        "2026-11-20T00:00",
        {
            "2026-11-25T02:00": ["future"],
            "2026-11-26T02:00": ["future"],
            "2026-11-27T02:00": ["newest", "future"],
        },
        [],
        id="clock-behind-expires-nothing",
    ),
    pytest.param(
        # Same time: the larger id is "newer", whatever the input order.
        [
            Candidate("b", t("2026-11-27T02:00")),
            Candidate("a", t("2026-11-27T02:00")),
            Candidate("c", t("2026-11-26T02:00")),
        ],
        daily(1),
        NOW,
        {"b": ["daily 2026-11-27", "newest"]},
        ["c", "a"],
        id="equal-times-broken-by-id",
    ),
]


@pytest.mark.parametrize(("candidates", "policy", "now", "keep", "expire"), GFS_CASES)
def test_plan_gfs(
    candidates: list[Candidate],
    policy: GfsPolicy,
    now: str,
    keep: dict[str, list[str]],
    expire: list[str],
) -> None:
    decision = plan_gfs(candidates, policy, t(now))
    assert decision.keep == keep
    assert decision.expire == expire


WINDOW_CASES = [
    pytest.param([], 3, None, NOW, {}, [], id="empty"),
    pytest.param(
        days("2026-11-01", 5),
        2,
        None,
        NOW,
        {"2026-11-04T02:15": ["count"], "2026-11-05T02:15": ["newest", "count"]},
        ["2026-11-01T02:15", "2026-11-02T02:15", "2026-11-03T02:15"],
        id="count-only",
    ),
    pytest.param(
        days("2026-11-01", 5),
        0,
        None,
        NOW,
        {"2026-11-05T02:15": ["newest"]},
        ["2026-11-01T02:15", "2026-11-02T02:15", "2026-11-03T02:15", "2026-11-04T02:15"],
        id="keep-zero-still-keeps-newest",
    ),
    pytest.param(
        days("2026-11-01", 10),
        1,
        timedelta(days=3),
        "2026-11-10T12:00",
        {
            "2026-11-08T02:15": ["window"],
            "2026-11-09T02:15": ["window"],
            "2026-11-10T02:15": ["window", "newest", "count"],
        },
        [c.id for c in days("2026-11-01", 7)],
        id="window-and-count",
    ),
    pytest.param(
        days("2026-11-01", 3),
        1,
        timedelta(days=1),
        "2026-11-02T02:15",
        {
            "2026-11-01T02:15": ["window"],
            "2026-11-02T02:15": ["window"],
            "2026-11-03T02:15": ["window", "newest", "count", "future"],
        },
        [],
        id="window-boundary-is-kept",
    ),
    pytest.param(
        days("2026-11-01", 6),
        5,
        timedelta(days=1),
        "2026-11-06T12:00",
        {c.id: ["count"] for c in days("2026-11-02", 4)} | {"2026-11-06T02:15": ["window", "newest", "count"]},
        ["2026-11-01T02:15"],
        id="count-wider-than-window",
    ),
    pytest.param(
        [
            b("2026-11-08T02:00"),
            b("2026-11-09T02:00", good=False),
            b("2026-11-10T02:00"),
            b("2026-11-10T06:00", good=False),
        ],
        1,
        timedelta(days=7),
        "2026-11-10T12:00",
        {
            "2026-11-08T02:00": ["window"],
            "2026-11-10T02:00": ["window", "newest", "count"],
            "2026-11-10T06:00": ["newer than last good"],
        },
        ["2026-11-09T02:00"],
        id="window-does-not-keep-bad",
    ),
]


@pytest.mark.parametrize(("candidates", "count", "window", "now", "keep", "expire"), WINDOW_CASES)
def test_plan_count_or_window(
    candidates: list[Candidate],
    count: int,
    window: timedelta | None,
    now: str,
    keep: dict[str, list[str]],
    expire: list[str],
) -> None:
    decision = plan_count_or_window(candidates, count, window, t(now))
    assert decision.keep == keep
    assert decision.expire == expire


def test_keep_is_ordered_oldest_first() -> None:
    decision = plan_gfs(list(reversed(days("2026-11-01", 4))), daily(4), t(NOW))
    assert list(decision.keep) == [c.id for c in days("2026-11-01", 4)]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        pytest.param(
            lambda: plan_gfs([b("2026-11-01T00:00"), b("2026-11-01T00:00")], daily(1), t(NOW)),
            "duplicate",
            id="gfs-duplicate-id",
        ),
        pytest.param(
            lambda: plan_count_or_window(
                [Candidate("x", t(NOW)), Candidate("x", t("2026-01-01T00:00"))], 1, None, t(NOW)
            ),
            "duplicate",
            id="window-duplicate-id",
        ),
        pytest.param(
            lambda: plan_gfs([Candidate("", t(NOW))], daily(1), t(NOW)),
            "empty",
            id="empty-id",
        ),
        pytest.param(
            lambda: plan_gfs([Candidate("x", datetime(2026, 11, 1))], daily(1), t(NOW)),
            "timezone-aware",
            id="naive-backup-time",
        ),
        pytest.param(
            lambda: plan_gfs([], daily(1), datetime(2026, 11, 1)),
            "timezone-aware",
            id="naive-now",
        ),
        pytest.param(lambda: GfsPolicy(-1, 0, 0), "keep_daily", id="negative-policy"),
        pytest.param(lambda: GfsPolicy(0, 0, 0, keep_min=-1), "keep_min", id="negative-keep-min"),
        pytest.param(lambda: plan_count_or_window([], -1, None, t(NOW)), "keep", id="negative-keep"),
        pytest.param(
            lambda: plan_count_or_window([], 1, timedelta(days=-1), t(NOW)),
            "window",
            id="negative-window",
        ),
    ],
)
def test_invalid_input_raises(call: object, message: str) -> None:
    assert callable(call)
    with pytest.raises(ValueError, match=message):
        call()


def test_any_timezone_gives_the_same_plan() -> None:
    utc = days("2026-11-01", 10, hour="23:30")
    tokyo = timezone(timedelta(hours=9))
    shifted = [Candidate(c.id, c.time.astimezone(tokyo), c.good) for c in utc]
    policy = GfsPolicy(keep_daily=3, keep_weekly=2, keep_monthly=1)
    assert plan_gfs(shifted, policy, t(NOW)) == plan_gfs(utc, policy, t(NOW))


# -- property-style checks on random inputs ----------------------------------


def _random_candidates(rng: random.Random) -> list[Candidate]:
    base = t("2026-10-01T00:00")
    out = []
    for i in range(rng.randint(0, 40)):
        # Coarse minutes so equal times and several-per-day both happen.
        offset = timedelta(minutes=rng.randrange(0, 120 * 24 * 60, 240))
        out.append(Candidate(id=f"b{i:03d}", time=base + offset, good=rng.random() < 0.8))
    return out


def _check_invariants(candidates: list[Candidate], decision: Decision, now: datetime) -> None:
    ids = {c.id for c in candidates}
    assert set(decision.keep) | set(decision.expire) == ids
    assert not set(decision.keep) & set(decision.expire)
    assert len(decision.expire) == len(set(decision.expire))
    assert all(decision.keep.values()), "every kept backup says why"

    order = {c.id: (c.time, c.id) for c in candidates}
    assert decision.expire == sorted(decision.expire, key=order.__getitem__)
    assert list(decision.keep) == sorted(decision.keep, key=order.__getitem__)

    good = [c for c in candidates if c.good]
    if good:
        newest_good = max(good, key=lambda c: (c.time, c.id))
        assert "newest" in decision.keep[newest_good.id]
        newer_bad = [c for c in candidates if not c.good and order[c.id] > order[newest_good.id]]
    else:
        newer_bad = list(candidates)
    assert not {c.id for c in newer_bad} & set(decision.expire)
    assert not {c.id for c in candidates if c.time > now} & set(decision.expire)


@pytest.mark.parametrize("seed", range(300))
def test_random_inputs_keep_invariants(seed: int) -> None:
    rng = random.Random(seed)
    candidates = _random_candidates(rng)
    now = t("2026-10-01T00:00") + timedelta(days=rng.randint(0, 150))
    policy = GfsPolicy(
        keep_daily=rng.randint(0, 8),
        keep_weekly=rng.randint(0, 5),
        keep_monthly=rng.randint(0, 4),
        keep_min=rng.randint(0, 3),
    )
    gfs = plan_gfs(candidates, policy, now)
    _check_invariants(candidates, gfs, now)

    good_newest_first = sorted((c for c in candidates if c.good), key=lambda c: (c.time, c.id), reverse=True)
    for c in good_newest_first[: policy.keep_min]:
        assert "min" in gfs.keep[c.id]

    window = rng.choice([None, timedelta(days=rng.randint(0, 30))])
    count = rng.randint(0, 5)
    cw = plan_count_or_window(candidates, count, window, now)
    _check_invariants(candidates, cw, now)
    for c in good_newest_first[:count]:
        assert "count" in cw.keep[c.id]

    shuffled = list(candidates)
    rng.shuffle(shuffled)
    assert plan_gfs(shuffled, policy, now) == gfs, "input order must not matter"
    assert plan_count_or_window(shuffled, count, window, now) == cw
