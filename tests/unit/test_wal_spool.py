"""Table tests for the wal-stream spool against the server's timeline history (core.wal.spool), for
what a failed pg_receivewal means (core.wal.stream.receivewal_failure), and setting spool files aside."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from p88backup.core.wal.archive import WalArchive
from p88backup.core.wal.names import HistoryEntry, classify, parse_lsn, segment_name
from p88backup.core.wal.spool import SetAside, SpoolPlan, archived_position, caught_up, newest_file, plan_spool
from p88backup.core.wal.stream import WalStreamer, receivewal_failure
from p88backup.errors import ArchivingError, DatabaseError, ExitCode, PgToolError
from p88backup.pg.conn import ConnInfo
from p88backup.storage.memory import MemoryStorage
from p88backup.stream import make_codec

SEG = 16 * 1024 * 1024


def s(tli: int, segno: int, partial: bool = False) -> str:
    return segment_name(tli, segno) + (".partial" if partial else "")


# Timeline 2 forked from 1 inside segment 4; timeline 3 forked from 2 inside segment 9.
TL2 = [HistoryEntry(1, parse_lsn("0/40000D0"), "")]
TL3 = [*TL2, HistoryEntry(2, parse_lsn("0/9000200"), "")]


@pytest.mark.parametrize(
    ("names", "expected"),
    [
        pytest.param([], None, id="empty"),
        pytest.param([s(1, 3), s(1, 4, True)], s(1, 4, True), id="highest-segment"),
        pytest.param([s(1, 5, True), s(2, 5, True)], s(2, 5, True), id="tie-higher-timeline"),
        pytest.param([s(1, 5, True), s(1, 5)], s(1, 5), id="tie-complete-over-partial"),
        pytest.param([s(2, 4), s(1, 7, True)], s(1, 7, True), id="segment-number-beats-timeline"),
        pytest.param([s(1, 0, True)], None, id="segment-zero-never-counts"),
    ],
)
def test_newest_file_is_where_pg_receivewal_resumes(names: list[str], expected: str | None) -> None:
    newest = newest_file(classify(n) for n in names)
    assert (newest.name if newest else None) == expected


def plan(names: list[str], timeline: int = 1, history: list[HistoryEntry] | None = None, **kw: Any) -> SpoolPlan:
    """The server is at 0/C000000, no slot position, its timeline already archived, unless told."""
    args: dict[str, Any] = {"server_lsn": parse_lsn("0/C000000"), "slot_lsn": None, "timeline_archived": True}
    args.update(kw)
    return plan_spool(names, timeline=timeline, history=history or [], **args)


@pytest.mark.parametrize(
    ("names", "timeline", "history", "kw", "aside", "seed", "start"),
    [
        # Nothing changed: the spool's newest file says where to resume, no seed.
        pytest.param([s(1, 7, True)], 1, [], {}, [], None, (1, "0/7000000"), id="same-timeline-partial"),
        pytest.param([s(1, 6)], 1, [], {}, [], None, (1, "0/7000000"), id="same-timeline-complete"),
        # The issue: promoted at 0/40000D0 while the spool was at segment 7 of timeline 1.
        pytest.param(
            [s(1, 7, True)],
            2,
            TL2,
            {"timeline_archived": False},
            [SetAside(s(1, 7, True), "off-history")],
            s(2, 4, True),
            (2, "0/4000000"),
            id="promotion-partial-past-fork",
        ),
        # Completed timeline-1 segments past the fork that were not shipped yet are set aside too.
        pytest.param(
            [s(1, 5), s(1, 6, True)],
            2,
            TL2,
            {},
            [SetAside(s(1, 5), "off-history"), SetAside(s(1, 6, True), "off-history")],
            s(2, 4, True),
            (2, "0/4000000"),
            id="promotion-complete-past-fork",
        ),
        # The partial of the segment holding the fork point is on the history: pg_receivewal resumes
        # there on timeline 1 and follows the switch itself.
        pytest.param([s(1, 4, True)], 2, TL2, {}, [], None, (1, "0/4000000"), id="partial-containing-fork"),
        # A complete segment that ends before the fork point is on the history.
        pytest.param([s(1, 3)], 2, TL2, {}, [], None, (1, "0/4000000"), id="complete-before-fork"),
        # After following the switch, the parent's tail partial is superseded: set aside, not deleted.
        pytest.param(
            [s(1, 4, True), s(2, 5, True)],
            2,
            TL2,
            {},
            [SetAside(s(1, 4, True), "superseded")],
            None,
            (2, "0/5000000"),
            id="parent-partial-superseded",
        ),
        # Two promotions since the spool was written: start where the server left timeline 1,
        # on timeline 2 (the segment holding the switch point is the child's copy).
        pytest.param(
            [s(1, 7, True)],
            3,
            TL3,
            {},
            [SetAside(s(1, 7, True), "off-history")],
            s(2, 4, True),
            (2, "0/4000000"),
            id="two-promotions",
        ),
        # A timeline the server's history never names (a sibling branch): from where this timeline began.
        pytest.param(
            [s(4, 10, True)],
            3,
            TL3,
            {},
            [SetAside(s(4, 10, True), "off-history")],
            s(3, 9, True),
            (3, "0/9000000"),
            id="sibling-branch",
        ),
        # An empty spool on a timeline the archive has never seen: from its first segment.
        pytest.param([], 2, TL2, {"timeline_archived": False}, [], s(2, 4, True), (2, "0/4000000"), id="new-timeline"),
        # An empty spool otherwise: where pg_receivewal would start anyway, made explicit.
        pytest.param(
            [], 2, TL2, {"slot_lsn": parse_lsn("0/A000100")}, [], s(2, 10, True), (2, "0/A000000"), id="empty-slot"
        ),
        pytest.param([], 1, [], {}, [], s(1, 12, True), (1, "0/C000000"), id="empty-no-slot-server-position"),
        # Not WAL: ignored (the status file, temp files of pg_receivewal).
        pytest.param(
            ["status.json", "00000002.history.tmp", s(1, 7, True)],
            1,
            [],
            {},
            [],
            None,
            (1, "0/7000000"),
            id="ignores-other-files",
        ),
    ],
)
def test_plan_spool(
    names: list[str],
    timeline: int,
    history: list[HistoryEntry],
    kw: dict[str, object],
    aside: list[SetAside],
    seed: str | None,
    start: tuple[int, str],
) -> None:
    p = plan(names, timeline, history, **kw)
    assert list(p.set_aside) == aside
    assert p.seed == seed
    assert (p.start_timeline, p.start_lsn) == (start[0], parse_lsn(start[1]))


def test_plan_reports_the_fork_point_only_when_a_branch_was_left() -> None:
    assert plan([s(1, 7, True)], 2, TL2).fork_lsn == parse_lsn("0/40000D0")
    assert plan([s(1, 4, True)], 2, TL2).fork_lsn is None


@pytest.mark.parametrize(
    ("names", "shipped_end", "baseline", "expected"),
    [
        pytest.param([], None, None, None, id="nothing-known"),
        pytest.param([], None, "0/7000000", "0/7000000", id="baseline"),
        pytest.param([s(1, 9, True)], "0/8000000", "0/7000000", "0/9000000", id="receiving-partial"),
        pytest.param([], "0/9000000", "0/7000000", "0/9000000", id="shipped-nothing-received-since"),
        # A completed segment still waiting in the spool is not archived.
        pytest.param([s(1, 8), s(1, 9, True)], "0/8000000", "0/7000000", "0/8000000", id="waiting-segment"),
        # A parent timeline's old partial does not hold the position back.
        pytest.param([s(1, 4, True), s(2, 9, True)], None, "0/4000000", "0/9000000", id="old-parent-partial"),
    ],
)
def test_archived_position(
    names: list[str], shipped_end: str | None, baseline: str | None, expected: str | None
) -> None:
    got = archived_position(
        names,
        shipped_end=parse_lsn(shipped_end) if shipped_end else None,
        baseline=parse_lsn(baseline) if baseline else None,
    )
    assert got == (parse_lsn(expected) if expected else None)


@pytest.mark.parametrize(
    ("lag", "expected"),
    [(None, False), (0, True), (SEG - 1, True), (2 * SEG - 1, True), (2 * SEG, False), (10 * SEG, False)],
)
def test_caught_up_means_within_a_segment_in_flight(lag: int | None, expected: bool) -> None:
    assert caught_up(lag, SEG) is expected


@pytest.mark.parametrize(
    ("stderr", "error", "code"),
    [
        pytest.param(
            'pg_receivewal: error: could not send replication command "START_REPLICATION": ERROR:  requested '
            "starting point 0/7000000 on timeline 1 is not in this server's history",
            ArchivingError,
            ExitCode.ARCHIVING,
            id="timeline-history",
        ),
        pytest.param(
            "ERROR:  requested WAL segment 000000020000000000000004 has already been removed",
            ArchivingError,
            ExitCode.ARCHIVING,
            id="wal-removed",
        ),
        pytest.param(
            'pg_receivewal: error: connection to server at "127.0.0.1", port 9 failed: Connection refused',
            DatabaseError,
            ExitCode.DATABASE,
            id="refused",
        ),
        pytest.param(
            "pg_receivewal: error: replication stream was terminated before stop point | error: disconnected",
            DatabaseError,
            ExitCode.DATABASE,
            id="server-stopped",
        ),
        pytest.param(
            "pg_receivewal: error: could not create directory", PgToolError, ExitCode.PG_TOOL, id="tool-failure"
        ),
    ],
)
def test_pg_receivewal_failures_have_their_own_exit_codes(stderr: str, error: type, code: ExitCode) -> None:
    """Issue 11: never a bare P88Error (exit 1, 'unexpected')."""
    exc = receivewal_failure(1, stderr)
    assert type(exc) is error and exc.exit_code == code
    assert stderr in str(exc)


def test_setting_aside_never_replaces_an_earlier_file_and_plants_an_empty_seed(tmp_path: Path) -> None:
    """Set-aside files may be the only copy of their WAL: a second one of the same name gets a suffix."""
    spool = tmp_path / "spool"
    (spool / "abandoned").mkdir(parents=True)
    (spool / "abandoned" / s(1, 7, True)).write_bytes(b"first")
    (spool / s(1, 7, True)).write_bytes(b"second")
    streamer = WalStreamer(
        ConnInfo(), WalArchive(MemoryStorage(uuid.uuid4().hex), make_codec(threads=1)), spool, slot="x"
    )
    streamer._apply(plan([s(1, 7, True)], 2, TL2))
    assert (spool / "abandoned" / s(1, 7, True)).read_bytes() == b"first"
    assert (spool / "abandoned" / (s(1, 7, True) + ".1")).read_bytes() == b"second"
    assert not (spool / s(1, 7, True)).exists()
    assert (spool / s(2, 4, True)).stat().st_size == 0  # pg_receivewal fills an empty file from its start
    assert streamer.status.set_aside == [s(1, 7, True)]
    assert streamer.status.streaming_from == "0/4000000 on timeline 2"
