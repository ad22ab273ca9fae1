"""PITR planning: target parsing and base-backup choice, by tables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest

from p88backup.core.pitr.plan import (
    Target,
    check_wal,
    choose_base_backup,
    finished_by,
    on_history,
    parse_target,
    plan_recovery,
    recovery_settings,
)
from p88backup.core.wal.names import HistoryEntry, parse_lsn
from p88backup.errors import PitrTargetError

T0 = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("latest", Target("latest")),
        ("immediate", Target("immediate")),
        ("lsn:0/3000060", Target("lsn", lsn=0x3000060)),
        ("lsn:16/b374d848", Target("lsn", lsn=(0x16 << 32) | 0xB374D848)),
        ("xid:123456", Target("xid", xid=123456)),
        ("name:before-migration-42", Target("name", name="before-migration-42")),
        ("2026-11-27T03:15:00Z", Target("time", time=datetime(2026, 11, 27, 3, 15, tzinfo=UTC))),
        (
            "2026-11-27T04:15:00+01:00",
            Target("time", time=datetime(2026, 11, 27, 4, 15, tzinfo=timezone(timedelta(hours=1)))),
        ),
        ("2026-11-27 03:15:00.5+00:00", Target("time", time=datetime(2026, 11, 27, 3, 15, 0, 500000, tzinfo=UTC))),
    ],
)
def test_parse_target(text: str, expected: Target) -> None:
    assert parse_target(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-11-27T03:15:00", "has no time zone"),
        ("yesterday", "cannot read recovery target"),
        ("lsn:zz", "invalid LSN"),
        ("xid:abc", "invalid transaction id"),
        ("xid:1", "invalid transaction id"),
        ("name:", "1 to 63 characters"),
    ],
)
def test_parse_target_rejects(text: str, message: str) -> None:
    with pytest.raises(PitrTargetError, match=message):
        parse_target(text)


@dataclass(frozen=True)
class B:
    id: str
    timeline: int
    start_lsn: str
    stop_lsn: str
    stop_time: datetime
    end_snapshot: str | None = None
    start_wal: str = ""
    stop_wal: str = ""


BACKUPS = [
    B("b1", 1, "0/2000028", "0/2000100", T0, "100:110:"),
    B("b2", 1, "0/8000028", "0/8000100", T0 + timedelta(hours=24), "500:505:501"),
    B("b3", 2, "0/E000028", "0/E000100", T0 + timedelta(hours=48), "900:900:"),
]
# timeline 2 branched from 1 at 0/A000000 (after b2, so b1 and b2 are on its history)
HIST = {2: [HistoryEntry(1, parse_lsn("0/A000000"), "restore")]}


@pytest.mark.parametrize(
    ("target", "tli", "rp_lsn", "chosen"),
    [
        (Target("latest"), 2, None, "b3"),
        (Target("latest"), 1, None, "b2"),  # following timeline 1, b3 (on 2) is unusable
        (Target("immediate"), 2, None, "b3"),
        (Target("time", time=T0 + timedelta(hours=30)), 2, None, "b2"),
        (Target("time", time=T0 + timedelta(hours=24)), 2, None, "b2"),  # ended exactly at the target: usable
        (Target("time", time=T0 + timedelta(hours=1)), 2, None, "b1"),
        (Target("lsn", lsn=parse_lsn("0/9000000")), 2, None, "b2"),
        (Target("lsn", lsn=parse_lsn("0/8000100")), 2, None, "b2"),
        (Target("name", name="x"), 2, parse_lsn("0/5000000"), "b1"),  # recorded restore point
        (Target("name", name="x"), 2, None, "b1"),  # not recorded: the oldest, from which it is reachable
        # xid: the newest backup whose end snapshot shows the transaction unfinished
        (Target("xid", xid=1000), 2, None, "b3"),  # not started when b3 ended
        (Target("xid", xid=600), 2, None, "b2"),  # finished before b3 ended, not started when b2 ended
        (Target("xid", xid=501), 2, None, "b2"),  # still running when b2 ended (in its xip list)
        (Target("xid", xid=502), 2, None, "b1"),  # finished before b2 ended
    ],
)
def test_choose_base_backup(target: Target, tli: int, rp_lsn: int | None, chosen: str) -> None:
    pick = choose_base_backup(BACKUPS, target, histories=HIST, target_tli=tli, restore_point_lsn=rp_lsn)
    assert pick.backup.id == chosen


def test_unrecorded_restore_point_warns_which_backup_it_uses() -> None:
    pick = choose_base_backup(BACKUPS, Target("name", name="x"), histories=HIST, target_tli=2)
    assert pick.warnings and "not recorded" in pick.warnings[0] and "b1" in pick.warnings[0]


def test_xid_with_manifests_that_recorded_no_snapshot_takes_the_oldest_and_says_so() -> None:
    old = [B(b.id, b.timeline, b.start_lsn, b.stop_lsn, b.stop_time) for b in BACKUPS]
    pick = choose_base_backup(old, Target("xid", xid=600), histories=HIST, target_tli=2)
    assert pick.backup.id == "b1" and "does not record" in pick.warnings[0]


@pytest.mark.parametrize(
    ("snapshot", "xid", "finished"),
    [
        ("100:110:", 99, True),
        ("100:110:", 100, True),
        ("100:110:104,107", 104, False),
        ("100:110:104,107", 105, True),
        ("100:110:", 110, False),
        ("100:100:", 5000, False),
    ],
)
def test_finished_by(snapshot: str, xid: int, finished: bool) -> None:
    assert finished_by(snapshot, xid) is finished


def test_backup_on_an_abandoned_branch_is_not_used() -> None:
    # timeline 2 branched at 0/5000000: b2 (taken on 1 at 0/8000028, after the branch) is not on 2's history
    hist = {2: [HistoryEntry(1, parse_lsn("0/5000000"), "restore")]}
    pick = choose_base_backup(BACKUPS[:2], Target("latest"), histories=hist, target_tli=2)
    assert pick.backup.id == "b1"


@pytest.mark.parametrize(
    ("backups", "target", "message"),
    [
        ([], Target("latest"), "there are no base backups"),
        (BACKUPS, Target("time", time=T0 - timedelta(minutes=1)), "before the oldest usable base backup b1"),
        (BACKUPS, Target("lsn", lsn=parse_lsn("0/1000000")), "before the oldest usable base backup"),
        (BACKUPS, Target("xid", xid=50), "had already finished when the oldest usable base backup b1 ended"),
    ],
)
def test_choose_refuses(backups: list[B], target: Target, message: str) -> None:
    with pytest.raises(PitrTargetError, match=message):
        choose_base_backup(backups, target, histories=HIST, target_tli=2)


# -- WAL needed for a target (check_wal / plan_recovery) ---------------------------------------

SEG = 16 * 1024 * 1024


def seg(n: int, tli: int = 1) -> str:
    return f"{tli:08X}{0:08X}{n:08X}"


def archive(first: int, last: int, *, missing: tuple[int, ...] = (), tli: int = 1) -> dict[str, datetime | None]:
    """Segments first..last, each stored ten minutes after the one before."""
    return {seg(n, tli): T0 + timedelta(minutes=10 * n) for n in range(first, last + 1) if n not in missing}


# b1 needs segments 2..2; the archive runs to segment 10 (stored at T0 + 100 min)
PB = B("b1", 1, "0/2000028", "0/2000100", T0, None, seg(2), seg(2))


@pytest.mark.parametrize(
    ("target", "missing", "replay_to", "warning"),
    [
        (Target("latest"), (), seg(10), None),
        (Target("immediate"), (6,), seg(2), None),  # a gap after the backup does not block the backup itself
        (Target("lsn", lsn=4 * SEG + 100), (6,), seg(4), None),  # before the gap
        (Target("time", time=T0 + timedelta(minutes=45)), (6,), None, None),  # segment 5 was stored at +50
        (Target("name", name="x"), (6,), None, "if target name:x lies after it"),  # position unknown
        (Target("xid", xid=1234), (6,), None, "if target xid:1234 lies after it"),
    ],
)
def test_check_wal_needs_only_what_the_target_needs(
    target: Target, missing: tuple[int, ...], replay_to: str | None, warning: str | None
) -> None:
    got = check_wal(PB, target, archive(2, 10, missing=missing), {}, 1)
    assert got.replay_to == replay_to
    assert (warning is None and not got.warnings) or (warning is not None and warning in got.warnings[0])


@pytest.mark.parametrize(
    ("target", "missing", "message"),
    [
        (Target("latest"), (6,), f"missing from the archive: {seg(6)}.*latest cannot be reached"),
        (Target("latest"), (6, 7), f"{seg(6)} to {seg(7)}"),
        (Target("lsn", lsn=7 * SEG), (6,), f"{seg(6)}.*lies after it"),
        (Target("lsn", lsn=12 * SEG), (), "beyond the newest archived WAL"),
        (Target("time", time=T0 + timedelta(minutes=55)), (6,), "cannot be reached; the newest reachable point"),
        (Target("time", time=T0 + timedelta(hours=3)), (), "after the newest archived WAL"),
        (Target("immediate"), (2,), "base backup b1 is incomplete"),
    ],
)
def test_check_wal_refuses_what_the_archive_cannot_reach(
    target: Target, missing: tuple[int, ...], message: str
) -> None:
    with pytest.raises(PitrTargetError, match=message):
        check_wal(PB, target, archive(2, 10, missing=missing), {}, 1)


def test_latest_refuses_a_timeline_it_cannot_follow() -> None:
    # Timeline 2 has WAL in the archive but its history file never got there (a restore that
    # promoted with archiving off, then ran as production): 'latest' must not follow timeline 1.
    wal = archive(2, 10) | archive(9, 12, tli=2)
    with pytest.raises(PitrTargetError, match="00000002.history is missing"):
        plan_recovery([PB], Target("latest"), wal, {})
    # Asked for on purpose, timeline 1 is restorable.
    assert plan_recovery([PB], Target("latest"), wal, {}, timeline=1).replay_to == seg(10)


def test_latest_follows_the_newest_timeline_and_its_newest_segment() -> None:
    hist = {2: [HistoryEntry(1, 9 * SEG + 0x100, "restore")]}
    wal = archive(2, 9) | archive(9, 12, tli=2) | {"00000002.history": T0}
    plan = plan_recovery([PB], Target("latest"), wal, hist)
    assert plan.timeline == 2 and plan.replay_to == seg(12, 2) and plan.backup_id == "b1"


def test_recovery_settings() -> None:
    t = datetime(2026, 11, 27, 3, 15, tzinfo=UTC)
    assert recovery_settings(Target("time", time=t), None) == {
        "recovery_target_action": "promote",
        "recovery_target_timeline": "latest",
        "recovery_target_time": "2026-11-27T03:15:00+00:00",
    }
    assert recovery_settings(Target("immediate"), 3)["recovery_target"] == "immediate"
    assert recovery_settings(Target("immediate"), 3)["recovery_target_timeline"] == "3"
    assert "recovery_target_lsn" in recovery_settings(Target("lsn", lsn=5), None)
    latest = recovery_settings(Target("latest"), None)
    assert not any(
        k.startswith("recovery_target_") and k not in ("recovery_target_action", "recovery_target_timeline")
        for k in latest
    )


def test_plan_follows_a_history_whose_switchpoints_go_backwards() -> None:
    # Timeline 2 left timeline 1 at 0/5000100; a later recovery along 2 stopped at a restore point
    # at 0/4000100 (before timeline 2 began) and promoted timeline 3 (issue 10 item 11).
    from p88backup.core.wal.names import parse_history

    hist = {
        2: parse_history("1\t0/5000100\tno recovery target specified\n"),
        3: parse_history("1\t0/5000100\tno recovery target specified\n\n2\t0/4000100\tat restore point\n"),
    }
    early = B("early", 1, "0/2000028", "0/2000100", T0, None, seg(2), seg(2))
    late = B("late", 1, "0/4000200", "0/4800000", T0 + timedelta(hours=1), None, seg(4), seg(4))
    wal = archive(2, 3) | archive(4, 7, tli=3) | archive(4, 6, tli=2) | {"00000002.history": T0, "00000003.history": T0}
    plan = plan_recovery([early, late], Target("latest"), wal, hist)
    # 'late' ended on timeline 1 after timeline 3 had left it: not on 3's history.
    assert plan.timeline == 3 and plan.backup_id == "early" and plan.replay_to == seg(7, 3)
    assert not on_history(late, hist, 3) and on_history(early, hist, 3)


def test_latest_along_a_timeline_whose_tail_is_missing_is_refused() -> None:
    # Timeline 2 branched from 1 at segment 9: timeline 1 ran at least that far. Following timeline 1
    # (`--timeline 1`, back before a restore) with its WAL after segment 6 gone must not end quietly
    # at segment 6: the gap check alone cannot see a missing tail.
    hist = {2: [HistoryEntry(1, 9 * SEG + 0x100, "restore")]}
    wal = archive(2, 6) | archive(9, 12, tli=2) | {"00000002.history": T0}
    with pytest.raises(PitrTargetError, match="timeline 1 ran to 0/9000100.*ends at 000000010000000000000006"):
        plan_recovery([PB], Target("latest"), wal, hist, timeline=1)
    whole = archive(2, 10) | archive(9, 12, tli=2) | {"00000002.history": T0}
    assert plan_recovery([PB], Target("latest"), whole, hist, timeline=1).replay_to == seg(10)


def test_the_planner_reads_names_at_the_backups_segment_size() -> None:
    # 1 MiB segments: ...0100 and later are valid names (they were dropped as 16 MiB names).
    size = 1024 * 1024
    names = {f"00000001{n >> 12:08X}{n & 0xFFF:08X}": T0 for n in range(0xFF0, 0x1011)}
    b = B(
        "b",
        1,
        walnames_lsn(0xFF0 * size + 40),
        walnames_lsn(0xFF1 * size),
        T0,
        None,
        "000000010000000000000FF0",
        "000000010000000000000FF1",
    )
    plan = plan_recovery([b], Target("latest"), names, {}, segment_size=size)
    assert plan.replay_to == "000000010000000100000010"


def walnames_lsn(lsn: int) -> str:
    from p88backup.core.wal.names import format_lsn

    return format_lsn(lsn)
