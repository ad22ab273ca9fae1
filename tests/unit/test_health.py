"""status's verdict (core/health.py) and the WAL freshness arithmetic (core/wal/freshness.py), as tables.

Before: `status` had no verdict at all (it always exited 0), and nothing measured how far the
server was ahead of the archive, so an archive that had simply stopped looked like a quiet one.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from p88backup.core.health import (
    CHECKS,
    Facts,
    Limits,
    Newest,
    age_check,
    drill_passed_check,
    human,
    judge,
    wal_check,
)
from p88backup.core.status import limits
from p88backup.core.wal.freshness import ServerPosition, WalFreshness, archive_lag, newest_on_history
from p88backup.core.wal.names import HistoryEntry

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
SEG = 16 * 1024 * 1024
H, D, M = 3600.0, 86400.0, 60.0


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def backup(age: float, bid: str = "20261130T000000Z") -> Newest:
    return Newest(bid, ago(age))


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (59.6, "1m"),
        (899, "14m59s"),
        (3 * H + 12 * M + 31, "3h13m"),
        (2 * D + 3 * H + 1, "2d3h"),
        (8 * D, "8d"),
    ],
)
def test_human_durations_are_as_precise_as_they_are_worth(seconds: float, text: str) -> None:
    assert human(seconds) == text


@pytest.mark.parametrize(
    ("newest", "limit", "ok", "reason"),
    [
        (None, None, True, "no dump (no limit set)"),
        (None, 26 * H, False, "no dump at all (limit 1d2h)"),
        (backup(3 * H), None, True, "newest dump 20261130T000000Z is 3h old (no limit set)"),
        (backup(3 * H), 26 * H, True, "newest dump 20261130T000000Z is 3h old (limit 1d2h)"),
        (backup(26 * H), 26 * H, True, "newest dump 20261130T000000Z is 1d2h old (limit 1d2h)"),
        (
            backup(2 * D + 3 * H),
            26 * H,
            False,
            "newest dump 20261130T000000Z is 2d3h old: 1d1h over the 1d2h limit",
        ),
        (backup(2.0), 1.0, False, "newest dump 20261130T000000Z is 2s old: 1s over the 1s limit"),
        # a backup "from the future" (clock skew between hosts) is not negative age
        (backup(-30), 60.0, True, "newest dump 20261130T000000Z is 0s old (limit 1m)"),
    ],
)
def test_age_check(newest: Newest | None, limit: float | None, ok: bool, reason: str) -> None:
    check = age_check("dump_age", "dump", newest, limit, NOW)
    assert (check.ok, check.reason, check.limit) == (ok, reason, limit)
    assert check.value == (None if newest is None else max(0.0, (NOW - newest.finished_at).total_seconds()))


def wal(
    age: float | None,
    *,
    lag_segments: int | None = None,
    error: str = "no database_url configured",
) -> WalFreshness:
    """Freshness facts: the newest file archived ``age`` seconds ago; with ``lag_segments`` a known server."""
    server = None if lag_segments is None else ServerPosition(SEG * (10 + lag_segments) + 100, 1, SEG)
    return WalFreshness(
        NOW,
        0 if age is None else 5,
        None if age is None else ago(age),
        None if age is None else "00000001000000000000000A",
        server=server,
        server_error=None if server else error,
        archived_lsn=None if server is None else SEG * 11,
        lag_bytes=None if server is None else server.lsn - SEG * 11,
        lag_segments=lag_segments,
    )


@pytest.mark.parametrize(
    ("facts", "limit", "ok", "reason_has"),
    [
        pytest.param(wal(None), None, True, ["no WAL archived (no limit set)"], id="none-no-limit"),
        pytest.param(wal(None), 15 * M, False, ["no WAL archived at all (limit 15m)"], id="none"),
        pytest.param(wal(2 * M, lag_segments=0), 15 * M, True, ["archived 2m ago", "no finished segment"], id="fresh"),
        pytest.param(
            wal(2 * M, lag_segments=3), 15 * M, True, ["3 finished segment(s)", "not archived"], id="fresh-behind"
        ),
        pytest.param(
            wal(2 * H, lag_segments=0),
            15 * M,
            True,
            ["the server is quiet", "archived 2h ago", "no finished segment is missing"],
            id="quiet-server",
        ),
        pytest.param(
            wal(2 * H, lag_segments=1),
            15 * M,
            False,
            [
                "archiving has stopped while the server kept writing",
                "1 finished segment(s)",
                "1h45m over the 15m limit",
            ],
            id="stopped",
        ),
        pytest.param(
            wal(2 * H),
            15 * M,
            False,
            [
                "archiving may have stopped",
                "server position unknown (no database_url configured): judged by age alone",
                "1h45m over",
            ],
            id="old-no-server",
        ),
        pytest.param(
            wal(5 * M, error="cannot connect to PostgreSQL at db:5432/p88: refused"),
            15 * M,
            True,
            ["server position unknown (cannot connect", "judged by age alone"],
            id="fresh-no-server",
        ),
        pytest.param(wal(2 * D, lag_segments=9), None, True, ["(no limit set)"], id="no-limit-not-judged"),
    ],
)
def test_wal_check(facts: WalFreshness, limit: float | None, ok: bool, reason_has: list[str]) -> None:
    check = wal_check(facts, limit)
    assert check.name == "wal_age" and check.ok is ok and check.limit == limit
    for text in reason_has:
        assert text in check.reason, check.reason


@pytest.mark.parametrize(
    ("drill", "ok", "reason"),
    [
        (None, True, "no drill report"),
        (Newest("20261129T030000Z", ago(H), ok=True), True, "the newest drill 20261129T030000Z passed"),
        (
            Newest("20261129T030000Z", ago(H), ok=False, detail="pitr drill of 20261128T000000Z: check orders failed"),
            False,
            "the newest drill 20261129T030000Z failed: pitr drill of 20261128T000000Z: check orders failed",
        ),
    ],
)
def test_drill_passed_check(drill: Newest | None, ok: bool, reason: str) -> None:
    check = drill_passed_check(drill)
    assert (check.ok, check.reason) == (ok, reason)


def test_judge_names_every_check_in_order_and_only_failures_fail() -> None:
    facts = Facts(
        dump=backup(30 * H),
        basebackup=backup(2 * D),
        drill=Newest("20261120T000000Z", ago(10 * D), ok=True),
        wal=wal(H, lag_segments=2),
    )
    limits = Limits(max_dump_age=26 * H, max_basebackup_age=8 * D, max_wal_age=15 * M, max_drill_age=8 * D)
    verdict = judge(facts, limits, NOW)
    assert [c.name for c in verdict.checks] == ["dump_age", "basebackup_age", "wal_age", "drill_age", "drill_passed"]
    assert [c.name for c in verdict.failures] == ["dump_age", "wal_age", "drill_age"]
    assert not verdict.healthy
    assert verdict.checks[0].as_dict() == {
        "name": "dump_age",
        "ok": False,
        "value": 30 * 3600,
        "limit": 26 * 3600,
        "reason": "newest dump 20261130T000000Z is 1d6h old: 4h over the 1d2h limit",
    }
    fresh = Facts(backup(H), backup(H), Newest("20261130T000000Z", ago(H)), wal(M, lag_segments=0))
    assert judge(fresh, limits, NOW).healthy
    assert judge(facts, Limits(), NOW).healthy  # no thresholds: nothing to exceed


# -- where the archive ends on the server's history, and how far the server is past it -------------


def seg(timeline: int, segno: int) -> str:
    return f"{timeline:08X}{segno >> 8:08X}{segno & 0xFF:08X}"


# Timeline 2 forked from 1 at segment 5 (+0x100): timeline 1 went on to segment 9 before the restore.
FORK = [HistoryEntry(1, 5 * SEG + 0x100, "before the bad migration")]
ARCHIVE = [seg(1, n) for n in range(1, 10)] + [seg(2, 5), seg(2, 6)]


@pytest.mark.parametrize(
    ("segments", "history", "timeline", "expected"),
    [
        (ARCHIVE, [], 1, seg(1, 9)),
        # following timeline 2, the abandoned segments 6..9 of timeline 1 are not its archive
        (ARCHIVE, FORK, 2, seg(2, 6)),
        (ARCHIVE[:9] + [seg(2, 5)], FORK, 2, seg(2, 5)),
        # timeline 2 archived nothing yet: the archive ends at the last timeline-1 segment it reads
        (ARCHIVE[:9], FORK, 2, seg(1, 4)),
        # no history readable: only the server's own timeline counts
        (ARCHIVE[:9], [], 2, None),
        ([], [], 1, None),
        # a name that does not fit 16 MiB segments (segment 0x100 of a log) is not this server's
        ([seg(1, 3), "0000000100000000000001FF"], [], 1, seg(1, 3)),
        # a later timeline than the server's is never its archive
        ([seg(1, 3), seg(3, 8)], [], 1, seg(1, 3)),
    ],
)
def test_newest_on_history(segments: list[str], history: list[HistoryEntry], timeline: int, expected: str) -> None:
    assert newest_on_history(segments, history, timeline, SEG) == expected


@pytest.mark.parametrize(
    ("newest", "server_lsn", "expected"),
    [
        # writing the segment right after the archive's newest: nothing finished is missing
        (seg(1, 9), 10 * SEG + 0x28, (10 * SEG, 0x28, 0)),
        (seg(1, 9), 10 * SEG, (10 * SEG, 0, 0)),
        # segment 10 finished (e.g. switched) and not archived
        (seg(1, 9), 11 * SEG, (10 * SEG, SEG, 1)),
        (seg(1, 9), 13 * SEG + 5, (10 * SEG, 3 * SEG + 5, 3)),
        # nothing archived: everything before the current segment is missing
        (None, 3 * SEG + 1, (0, 3 * SEG + 1, 3)),
        # the archive ahead of the server (a restored server, an old timeline): no lag
        (seg(1, 9), 5 * SEG, (10 * SEG, 0, 0)),
    ],
)
def test_archive_lag(newest: str | None, server_lsn: int, expected: tuple[int, int, int]) -> None:
    assert archive_lag(newest, ServerPosition(server_lsn, 1, SEG)) == expected


def test_the_checks_are_the_ones_judge_makes() -> None:
    """p88backup_check_ok{check} and a failed check's NaNs (metrics.status_check_failed) use CHECKS."""
    verdict = judge(Facts(None, None, None, wal(None)), Limits(), NOW)
    assert tuple(c.name for c in verdict.checks) == CHECKS


class Thresholds:
    """``Settings.status`` as limits() reads it: seconds by name."""

    def __init__(self, **seconds: float) -> None:
        self.given = seconds

    def seconds(self, name: str) -> float | None:
        return self.given.get(name)


@pytest.mark.parametrize(
    ("configured", "given", "expected"),
    [
        ({}, {}, Limits()),
        ({"max_dump_age": 26 * H, "max_wal_age": 15 * M}, {}, Limits(max_dump_age=26 * H, max_wal_age=15 * M)),
        # the command line wins, each threshold on its own; None on the command line: the config's
        ({"max_dump_age": 26 * H}, {"max_dump_age": 3 * D, "max_wal_age": None}, Limits(max_dump_age=3 * D)),
        ({"max_drill_age": 8 * D}, {"max_basebackup_age": 1.0}, Limits(max_basebackup_age=1.0, max_drill_age=8 * D)),
    ],
)
def test_limits_from_the_config_and_the_command_line(
    configured: dict[str, float], given: dict[str, float | None], expected: Limits
) -> None:
    assert limits(Thresholds(**configured), **given) == expected


def test_limits_refuse_a_name_that_is_no_threshold() -> None:
    with pytest.raises(TypeError, match="max_dumps_age"):
        limits(Thresholds(), max_dumps_age=1.0)
