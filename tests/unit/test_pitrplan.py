"""PITR planning: target parsing and base-backup choice, by tables."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone

import pytest

from p88backup.core.pitr.plan import Target, choose_base_backup, parse_target, recovery_settings
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


BACKUPS = [
    B("b1", 1, "0/2000028", "0/2000100", T0),
    B("b2", 1, "0/8000028", "0/8000100", T0 + timedelta(hours=24)),
    B("b3", 2, "0/E000028", "0/E000100", T0 + timedelta(hours=48)),
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
        (Target("name", name="x"), 2, parse_lsn("0/5000000"), "b1"),
        (Target("xid", xid=1000), 2, None, "b3"),
    ],
)
def test_choose_base_backup(target: Target, tli: int, rp_lsn: int | None, chosen: str) -> None:
    assert choose_base_backup(BACKUPS, target, histories=HIST, target_tli=tli, restore_point_lsn=rp_lsn).id == chosen


def test_backup_on_an_abandoned_branch_is_not_used() -> None:
    # timeline 2 branched at 0/5000000: b2 (taken on 1 at 0/8000028, after the branch) is not on 2's history
    hist = {2: [HistoryEntry(1, parse_lsn("0/5000000"), "restore")]}
    pick = choose_base_backup(BACKUPS[:2], Target("latest"), histories=hist, target_tli=2)
    assert pick.id == "b1"


@pytest.mark.parametrize(
    ("backups", "target", "message"),
    [
        ([], Target("latest"), "there are no base backups"),
        (BACKUPS, Target("time", time=T0 - timedelta(minutes=1)), "before the oldest usable base backup b1"),
        (BACKUPS, Target("lsn", lsn=parse_lsn("0/1000000")), "before the oldest usable base backup"),
    ],
)
def test_choose_refuses(backups: list[B], target: Target, message: str) -> None:
    with pytest.raises(PitrTargetError, match=message):
        choose_base_backup(backups, target, histories=HIST, target_tli=2)


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
