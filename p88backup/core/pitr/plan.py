"""Point-in-time recovery planning: pure functions, tested by tables.

* :func:`parse_target` turns ``--pitr`` text into a :class:`Target`;
* :func:`plan_recovery` decides everything before a restore touches a
  directory: the timeline to follow, the base backup, and whether the
  archived WAL reaches the target (:func:`choose_base_backup`,
  :func:`check_wal`);
* :func:`recovery_settings` renders the ``recovery_target_*`` settings, and
  :data:`RECOVERY_PARAMETERS` names every setting a restore owns.

A base backup can reach a target only if the backup is *consistent* before
the target: its end (stop LSN / stop time, both read from the server after
the backup ended) must not be after it; for an xid target, the transaction
must still have been running, or not yet started, when the backup ended
(the snapshot recorded then says). And it must lie on the history of the
timeline being recovered: a backup taken on timeline 1 after timeline 2
branched off cannot be used to recover along 2.

WAL continuity is checked only as far as the target needs: a gap after a
time or LSN target does not block it, but ``latest`` needs every segment up
to the newest one on the timeline's path. A timeline that has WAL in the
archive but cannot be followed (its ``.history`` is missing) makes
``latest`` refuse instead of silently following an older timeline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal, Protocol

from p88backup.core.wal import names as walnames
from p88backup.core.wal.timelines import backup_on_history, live_timeline
from p88backup.errors import PitrTargetError
from p88backup.times import TimeFormatError, parse_time

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
        return Target("time", time=parse_time(t))
    except TimeFormatError as exc:
        if "no time zone" in str(exc):
            raise PitrTargetError(
                f"recovery target time {text!r} has no time zone",
                hint="add one, e.g. 2026-11-27T03:15:00+00:00 or ...Z: a 3 a.m. restore must not guess the zone",
            ) from None
        raise PitrTargetError(
            f"cannot read recovery target {text!r}",
            hint="use an ISO-8601 time with zone (2026-11-27T03:15:00+00:00), latest, immediate, "
            "lsn:X/Y, xid:N or name:LABEL",
        ) from None


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
    @property
    def end_snapshot(self) -> str | None: ...
    @property
    def start_wal(self) -> str: ...
    @property
    def stop_wal(self) -> str: ...


def on_history(backup: BackupLike, histories: Mapping[int, list[walnames.HistoryEntry]], target_tli: int) -> bool:
    """Is the backup's whole WAL range on the history of ``target_tli``?"""
    return backup_on_history(backup.timeline, backup.stop_lsn, histories, target_tli)


def finished_by(snapshot: str, xid: int) -> bool:
    """Had transaction ``xid`` finished (committed or aborted) in ``snapshot``?

    ``snapshot`` is ``pg_current_snapshot()`` text, ``xmin:xmax:xip,...``
    (64-bit transaction ids): ids below xmin are finished, ids from xmax on
    had not started, and those in between are finished unless listed.
    """
    try:
        xmin_s, xmax_s, xip_s = snapshot.split(":")
        xmin, xmax = int(xmin_s), int(xmax_s)
        running = {int(x) for x in xip_s.split(",") if x}
    except ValueError:
        raise PitrTargetError(f"unreadable transaction snapshot {snapshot!r} in a base backup manifest") from None
    if xid < xmin:
        return True
    if xid >= xmax:
        return False
    return xid not in running


@dataclass(frozen=True)
class Choice:
    backup: BackupLike
    warnings: tuple[str, ...] = ()


def choose_base_backup(
    backups: Sequence[BackupLike],
    target: Target,
    *,
    histories: Mapping[int, list[walnames.HistoryEntry]],
    target_tli: int,
    restore_point_lsn: int | None = None,
) -> Choice:
    """The newest base backup from which ``target`` is reachable (raises PitrTargetError if none).

    Targets whose position is not known in advance take a backup that surely
    precedes them: an xid the newest backup whose end snapshot shows it
    unfinished; a restore point p88backup did not record, the oldest backup.
    """
    usable = [b for b in backups if on_history(b, histories, target_tli)]
    if not backups:
        raise PitrTargetError("there are no base backups", hint="take one with: p88backup basebackup")
    if not usable:
        raise PitrTargetError(
            f"no base backup lies on timeline {target_tli}'s history",
            hint="pick the timeline with --timeline N, or take a new base backup",
        )

    def newest(bs: list[BackupLike]) -> BackupLike:
        return max(bs, key=lambda b: (walnames.parse_lsn(b.stop_lsn), b.id))

    oldest = min(usable, key=lambda b: (walnames.parse_lsn(b.stop_lsn), b.id))
    limit_lsn = target.lsn if target.kind == "lsn" else restore_point_lsn
    if limit_lsn is not None:
        ok = [b for b in usable if walnames.parse_lsn(b.stop_lsn) <= limit_lsn]
        what = f"LSN {walnames.format_lsn(limit_lsn)}"
    elif target.kind == "time" and target.time is not None:
        ok = [b for b in usable if b.stop_time <= target.time]
        what = target.time.isoformat()
    elif target.kind == "xid" and target.xid is not None:
        xid = target.xid
        known = [b for b in usable if b.end_snapshot]
        ok = [b for b in known if not finished_by(b.end_snapshot or "", xid)]
        if ok:
            return Choice(newest(ok))
        unknown = [b for b in usable if not b.end_snapshot]
        if unknown:  # manifests from before snapshots were recorded
            pick = min(unknown, key=lambda b: (walnames.parse_lsn(b.stop_lsn), b.id))
            return Choice(
                pick,
                (
                    f"base backup {pick.id} does not record which transactions had finished; if xid {xid} "
                    "committed before it ended, recovery will stop with an error: pass --base-backup ID "
                    "to pick an older one",
                ),
            )
        raise PitrTargetError(
            f"transaction {xid} had already finished when the oldest usable base backup {oldest.id} ended "
            f"({oldest.stop_time.isoformat()})",
            hint="a base backup can only recover to points after it ended; pick a later target",
        )
    elif target.kind == "name":
        # A restore point p88backup did not record: its position is unknown, so start from the
        # oldest backup, from which any restore point after it is reachable.
        return Choice(
            oldest,
            (
                f"restore point {target.name!r} was not recorded by p88backup restore-point: restoring from "
                f"the oldest base backup {oldest.id} so that it is reachable (--base-backup ID picks another)",
            ),
        )
    else:  # latest, immediate: the newest backup
        return Choice(newest(usable))
    if not ok:
        raise PitrTargetError(
            f"target {what} is before the oldest usable base backup {oldest.id} "
            f"(consistent from {oldest.stop_time.isoformat()}, LSN {oldest.stop_lsn})",
            hint="a base backup can only recover to points after it ended; pick a later target",
        )
    return Choice(newest(ok))


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


# Every setting that steers recovery (PostgreSQL 13-18). A restore owns all of them in the data
# directory it writes: inherited ones are removed, and none survives a promoted, stopped restore.
# (archive_mode, port and the like are the cluster's own configuration: a restore overrides them
# only inside its own block, see core/pitr/recoveryconf.py.)
RECOVERY_PARAMETERS = (
    "restore_command",
    "archive_cleanup_command",
    "recovery_end_command",
    "recovery_target",
    "recovery_target_lsn",
    "recovery_target_name",
    "recovery_target_time",
    "recovery_target_xid",
    "recovery_target_inclusive",
    "recovery_target_timeline",
    "recovery_target_action",
    "recovery_min_apply_delay",
    "primary_conninfo",
    "primary_slot_name",
    "promote_trigger_file",
)


@dataclass(frozen=True)
class WalCheck:
    """What the archive holds for a plan: segments listed, the newest one replay needs, warnings."""

    segments: int
    replay_to: str | None
    warnings: tuple[str, ...] = ()


def _is_segment(name: str, segment_size: int) -> bool:
    return len(name) == 24 and walnames.is_wal_name(name, segment_size)


def _gap_message(first: str, last: str, backup_id: str) -> str:
    span = first + (f" to {last}" if last != first else "")
    return f"WAL is missing from the archive: {span} (needed after base backup {backup_id})"


def check_wal(
    backup: BackupLike,
    target: Target,
    wal: Mapping[str, datetime | None],
    histories: Mapping[int, list[walnames.HistoryEntry]],
    timeline: int,
    *,
    restore_point_lsn: int | None = None,
    segment_size: int = walnames.DEFAULT_SEGMENT_SIZE,
) -> WalCheck:
    """Does the archive hold the WAL from ``backup`` to ``target`` along ``timeline``?

    ``wal`` maps every archived WAL file name to its storage time. Only what
    the target needs must be continuous: the backup's own range always;
    ``immediate`` nothing more; an LSN (or recorded restore point) up to its
    segment; a time up to the newest segment stored before it; ``latest``
    everything up to the newest segment on the path. xid targets and
    unrecorded restore points have no known position: a gap is a warning.
    """
    segments = [n for n in wal if _is_segment(n, segment_size)]
    start_wal, stop_wal = backup.start_wal, backup.stop_wal
    relevant = {t: h for t, h in histories.items() if t <= timeline}
    try:
        gaps = walnames.find_gaps(segments, start_wal, None, relevant or None, segment_size)
        own = walnames.find_gaps(segments, start_wal, stop_wal, relevant or None, segment_size)
    except walnames.WalNameError as exc:
        raise PitrTargetError(f"cannot follow timeline {timeline} from base backup {backup.id}: {exc}") from None
    if own:
        raise PitrTargetError(
            f"base backup {backup.id} is incomplete: " + _gap_message(*own[0], backup.id),
            hint="pick another base backup (--base-backup ID) or take a new one",
        )

    def stored_before(first_missing: str) -> datetime | None:
        """Storage time of the newest segment stored before the gap starting at ``first_missing``."""
        limit = walnames.parse_segment_name(first_missing, segment_size)[1]
        times = [
            m for n in segments if (m := wal[n]) is not None and walnames.parse_segment_name(n, segment_size)[1] < limit
        ]
        return max(times, default=None)

    limit_lsn = target.lsn if target.kind == "lsn" else restore_point_lsn
    warnings: list[str] = []
    replay_to: str | None = None
    if target.kind == "immediate":
        replay_to = stop_wal
    elif limit_lsn is not None:
        history = relevant.get(timeline, [])
        end_tli = walnames.timeline_of_segment_at(history, timeline, limit_lsn, segment_size)
        end = walnames.segment_for_lsn(end_tli, limit_lsn, segment_size)
        if end not in wal:
            raise PitrTargetError(
                f"target {target.describe()} is beyond the newest archived WAL (segment {end} is not archived)",
                hint="the newest restorable point is --pitr latest",
            )
        try:
            needed = walnames.find_gaps(segments, start_wal, end, relevant or None, segment_size)
        except walnames.WalNameError as exc:
            raise PitrTargetError(f"cannot follow timeline {timeline} to {end}: {exc}") from None
        if needed:
            raise PitrTargetError(
                _gap_message(*needed[0], backup.id) + f"; target {target.describe()} lies after it",
                hint="run p88backup wal-verify; pick a target before the gap",
            )
        replay_to = end
    elif target.kind == "time" and target.time is not None:
        if gaps:
            reachable = stored_before(gaps[0][0])
            if reachable is None or target.time > reachable:
                until = f"; the newest reachable point is about {reachable.isoformat()}" if reachable else ""
                raise PitrTargetError(
                    _gap_message(*gaps[0], backup.id) + f": target {target.time.isoformat()} cannot be reached" + until,
                    hint="run p88backup wal-verify; pick a target before the gap",
                )
        else:
            times = [m for n in segments if (m := wal[n]) is not None]
            newest = max(times, default=None)
            if newest is not None and target.time > newest:
                raise PitrTargetError(
                    f"target {target.time.isoformat()} is after the newest archived WAL "
                    f"(stored {newest.isoformat()}); changes after that are not in the archive",
                    hint="restore to --pitr latest for the newest restorable point",
                )
    elif target.kind == "latest":
        if gaps:
            reachable = stored_before(gaps[0][0])
            until = f" (stored up to about {reachable.isoformat()})" if reachable else ""
            raise PitrTargetError(
                _gap_message(*gaps[0], backup.id) + f": latest cannot be reached; WAL before the gap{until} "
                "is restorable with a time or LSN target",
                hint="run p88backup wal-verify; pick a target before the gap",
            )
        replay_to = _newest_on_path(segments, start_wal, relevant, timeline, segment_size)
        # A later timeline's history says how far this one ran: its WAL up to there must all be here
        # (a tail that was expired or lost is invisible to the gap check, which ends at the newest file).
        ran_to = max((e.switchpoint for h in histories.values() for e in h if e.parent_timeline == timeline), default=0)
        if ran_to and replay_to is not None:
            ran_to_segment = walnames.segment_for_lsn(timeline, ran_to - 1, segment_size)
            if (
                walnames.parse_segment_name(replay_to, segment_size)[1]
                < walnames.parse_segment_name(ran_to_segment, segment_size)[1]
            ):
                raise PitrTargetError(
                    f"timeline {timeline} ran to {walnames.format_lsn(ran_to)} (a later timeline branched off there), "
                    f"but its archived WAL ends at {replay_to}: WAL up to {ran_to_segment} is missing, so latest "
                    "cannot be reached along it",
                    hint="run p88backup wal-verify; a time or LSN target before the missing WAL is restorable",
                )
    elif gaps:  # xid, unrecorded name: position unknown
        warnings.append(
            _gap_message(*gaps[0], backup.id) + f": if target {target.describe()} lies after it, recovery will "
            "stop there with an error"
        )
    return WalCheck(len(segments), replay_to, tuple(warnings))


def _newest_on_path(
    segments: Sequence[str],
    start_wal: str,
    histories: Mapping[int, list[walnames.HistoryEntry]],
    timeline: int,
    segment_size: int,
) -> str | None:
    """The newest archived segment that recovery along ``timeline`` from ``start_wal`` replays."""
    start = walnames.parse_segment_name(start_wal, segment_size)[1]
    history = histories.get(timeline, [])
    best: tuple[int, str] | None = None
    for name in segments:
        tli, segno = walnames.parse_segment_name(name, segment_size)
        if segno < start or tli > timeline:
            continue
        if walnames.timeline_of_segment_at(history, timeline, segno * segment_size, segment_size) != tli:
            continue
        if best is None or segno > best[0]:
            best = (segno, name)
    return best[1] if best else None


@dataclass(frozen=True)
class RecoveryPlan:
    backup_id: str
    timeline: int  # the timeline recovery follows (what 'latest' finds, or the one asked for)
    segments: int  # WAL segments in the archive
    replay_to: str | None  # newest segment the target needs (latest: the newest on the path)
    warnings: tuple[str, ...] = field(default=())


def plan_recovery(
    backups: Sequence[BackupLike],
    target: Target,
    wal: Mapping[str, datetime | None],
    histories: Mapping[int, list[walnames.HistoryEntry]],
    *,
    timeline: int | None = None,
    base_backup: str | None = None,
    restore_point_lsn: int | None = None,
    segment_size: int = walnames.DEFAULT_SEGMENT_SIZE,
) -> RecoveryPlan:
    """Timeline, base backup and WAL check for a restore, or PitrTargetError saying why not.

    ``wal`` maps archived WAL file names to their storage times;
    ``histories`` holds the parsed ``.history`` files.
    """
    if timeline is not None:
        tli = timeline
        if tli != 1 and tli not in histories:
            raise PitrTargetError(
                f"timeline {tli} has no history file in the archive ({tli:08X}.history): it cannot be followed"
            )
    else:
        tli = live_timeline(histories, [b.timeline for b in backups])
        seen = {int(n[:8], 16) for n in wal if _is_segment(n, segment_size)} | set(histories)
        beyond = sorted(t for t in seen if t > tli)
        if beyond:
            missing = f"{tli + 1:08X}.history"
            raise PitrTargetError(
                f"the archive holds WAL of timeline {beyond[-1]}, but 'latest' can only follow timelines up to "
                f"{tli}: {missing} is missing, so where timeline {tli + 1} branched off is unknown",
                hint=f"push the history file from that cluster's pg_wal (p88backup wal-push pg_wal/{missing}), "
                f"or restore along an older timeline on purpose with --timeline {tli}",
            )
    if base_backup is not None:
        found = [b for b in backups if b.id == base_backup]
        if not found:
            raise PitrTargetError(f"no base backup {base_backup}")
        if not on_history(found[0], histories, tli):
            raise PitrTargetError(f"base backup {base_backup} does not lie on timeline {tli}'s history")
        choice = Choice(found[0])
    else:
        choice = choose_base_backup(
            backups, target, histories=histories, target_tli=tli, restore_point_lsn=restore_point_lsn
        )
    check = check_wal(
        choice.backup, target, wal, histories, tli, restore_point_lsn=restore_point_lsn, segment_size=segment_size
    )
    return RecoveryPlan(choice.backup.id, tli, check.segments, check.replay_to, choice.warnings + check.warnings)
