"""Point-in-time recovery planning: pure functions, tested by tables.

* :func:`parse_target` turns ``--pitr`` text into a :class:`Target`;
* :func:`choose_base_backup` picks the newest base backup from which the
  target is reachable on the target timeline;
* :func:`recovery_settings` renders the ``recovery_target_*`` settings.

A base backup can reach a target only if the backup is *consistent* before
the target: its end (stop LSN / stop time) must not be after it. And it must
lie on the history of the timeline being recovered: a backup taken on
timeline 1 after timeline 2 branched off cannot be used to recover along 2.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal, Protocol

from p88backup.core.wal import names as walnames
from p88backup.errors import PitrTargetError

TargetKind = Literal["time", "lsn", "xid", "name", "latest", "immediate"]


@dataclass(frozen=True)
class Target:
    kind: TargetKind
    time: datetime | None = None
    lsn: int | None = None
    xid: int | None = None
    name: str | None = None

    def describe(self) -> str:
        if self.kind == "time" and self.time is not None:
            return self.time.isoformat()
        if self.kind == "lsn" and self.lsn is not None:
            return f"lsn:{walnames.format_lsn(self.lsn)}"
        if self.kind == "xid":
            return f"xid:{self.xid}"
        if self.kind == "name":
            return f"name:{self.name}"
        return self.kind


def parse_target(text: str) -> Target:
    """``2026-11-27T03:15:00+01:00``, ``latest``, ``immediate``, ``lsn:0/3000060``, ``xid:1234``, ``name:LABEL``."""
    t = text.strip()
    if t in ("latest", "immediate"):
        return Target(t)  # type: ignore[arg-type]
    prefix, sep, rest = t.partition(":")
    if sep and prefix == "lsn":
        try:
            return Target("lsn", lsn=walnames.parse_lsn(rest))
        except walnames.WalNameError:
            raise PitrTargetError(f"invalid LSN {rest!r}: expected like lsn:0/3000060") from None
    if sep and prefix == "xid":
        if not rest.isdigit() or not 3 <= int(rest) < 2**64:
            raise PitrTargetError(f"invalid transaction id {rest!r}: expected like xid:123456")
        return Target("xid", xid=int(rest))
    if sep and prefix == "name":
        if not rest or len(rest) > 63:
            raise PitrTargetError("restore point names are 1 to 63 characters")
        return Target("name", name=rest)
    try:
        when = datetime.fromisoformat(t.replace("Z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise PitrTargetError(
            f"cannot read recovery target {text!r}",
            hint="use an ISO-8601 time with zone (2026-11-27T03:15:00+00:00), latest, immediate, "
            "lsn:X/Y, xid:N or name:LABEL",
        ) from None
    if when.tzinfo is None:
        raise PitrTargetError(
            f"recovery target time {text!r} has no time zone",
            hint="add one, e.g. 2026-11-27T03:15:00+00:00 or ...Z: a 3 a.m. restore must not guess the zone",
        )
    return Target("time", time=when)


class BackupLike(Protocol):
    @property
    def id(self) -> str: ...
    @property
    def timeline(self) -> int: ...
    @property
    def start_lsn(self) -> str: ...
    @property
    def stop_lsn(self) -> str: ...
    @property
    def stop_time(self) -> datetime: ...


def on_history(backup: BackupLike, histories: Mapping[int, list[walnames.HistoryEntry]], target_tli: int) -> bool:
    """Is the backup's whole WAL range on the history of ``target_tli``?"""
    if backup.timeline == target_tli:
        return True
    history = histories.get(target_tli)
    if history is None:
        return False
    try:
        return walnames.timeline_of_lsn(history, target_tli, walnames.parse_lsn(backup.stop_lsn)) == backup.timeline
    except (ValueError, walnames.WalNameError):
        return False


def choose_base_backup(
    backups: Sequence[BackupLike],
    target: Target,
    *,
    histories: Mapping[int, list[walnames.HistoryEntry]],
    target_tli: int,
    restore_point_lsn: int | None = None,
) -> BackupLike:
    """The newest usable base backup for ``target`` (raises PitrTargetError if none)."""
    usable = [b for b in backups if on_history(b, histories, target_tli)]
    if not backups:
        raise PitrTargetError("there are no base backups", hint="take one with: p88backup basebackup")
    if not usable:
        raise PitrTargetError(
            f"no base backup lies on timeline {target_tli}'s history",
            hint="pick the timeline with --timeline N, or take a new base backup",
        )
    limit_lsn = target.lsn if target.kind == "lsn" else restore_point_lsn
    if limit_lsn is not None:
        ok = [b for b in usable if walnames.parse_lsn(b.stop_lsn) <= limit_lsn]
        what = f"LSN {walnames.format_lsn(limit_lsn)}"
    elif target.kind == "time" and target.time is not None:
        ok = [b for b in usable if b.stop_time <= target.time]
        what = target.time.isoformat()
    else:  # latest, immediate, xid, unrecorded names: the newest backup
        ok = list(usable)
        what = ""
    if not ok:
        oldest = min(usable, key=lambda b: walnames.parse_lsn(b.stop_lsn))
        raise PitrTargetError(
            f"target {what} is before the oldest usable base backup {oldest.id} "
            f"(consistent from {oldest.stop_time.isoformat()}, LSN {oldest.stop_lsn})",
            hint="a base backup can only recover to points after it ended; pick a later target",
        )
    return max(ok, key=lambda b: (walnames.parse_lsn(b.stop_lsn), b.id))


def recovery_settings(target: Target, timeline: int | None) -> dict[str, str]:
    """postgresql.conf lines (unquoted values) for the target; promote at the end."""
    out: dict[str, str] = {
        "recovery_target_action": "promote",
        "recovery_target_timeline": str(timeline) if timeline else "latest",
    }
    if target.kind == "time" and target.time is not None:
        out["recovery_target_time"] = target.time.isoformat()
    elif target.kind == "lsn" and target.lsn is not None:
        out["recovery_target_lsn"] = walnames.format_lsn(target.lsn)
    elif target.kind == "xid":
        out["recovery_target_xid"] = str(target.xid)
    elif target.kind == "name" and target.name is not None:
        out["recovery_target_name"] = target.name
    elif target.kind == "immediate":
        out["recovery_target"] = "immediate"
    return out
