"""Is p88backup still protecting anything? The verdict of ``status``, as pure functions.

DESIGN §3.13: health means progress, not liveness. ``status`` gathers facts
(the newest dump, base backup and drill report, the WAL archive's freshness
and the server's lag) and :func:`judge` turns them, with the ``[status]``
thresholds and the time, into one :class:`Check` per rule. Each check says
what it measured, against which limit, and in one line why it passed or
failed ("newest dump 20261127T021500Z is 2d3h old: 1d1h over the 26h
limit"). No I/O and no clock here: both come in as arguments, so a table of
cases covers every rule (tests/unit/test_health.py).

The rules:

- ``dump_age``, ``basebackup_age``, ``drill_age``: the newest one is no older
  than ``max_*_age``; none at all fails. Without a limit, not checked.
- ``wal_age``: archiving has not stopped. The archive received a file within
  ``max_wal_age``; or, older, the server is known to be quiet (it has not
  finished a segment the archive lacks). Without the server's position only
  the age counts, and the reason says so.
- ``drill_passed``: the newest drill report passed (always checked).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from p88backup.core.wal.freshness import WalFreshness
from p88backup.core.wal.names import format_lsn
from p88backup.times import format_duration

CHECKS = ("dump_age", "basebackup_age", "wal_age", "drill_age", "drill_passed")
"""Every check :func:`judge` makes, in its order (the ``check`` label of ``p88backup_check_ok``)."""


@dataclass(frozen=True)
class Limits:
    """``[status]`` thresholds in seconds; None: not checked."""

    max_dump_age: float | None = None
    max_basebackup_age: float | None = None
    max_wal_age: float | None = None
    max_drill_age: float | None = None


@dataclass(frozen=True)
class Newest:
    """The newest complete backup or drill report of a kind."""

    id: str
    finished_at: datetime
    ok: bool = True
    """Drill reports: did it pass. Backups are listed only when complete, so always True."""
    detail: str = ""
    """Drill reports that failed: what failed, for the reason line."""


@dataclass(frozen=True)
class Facts:
    dump: Newest | None
    basebackup: Newest | None
    drill: Newest | None
    wal: WalFreshness


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    value: float | None
    """What was measured: an age in seconds (None when there is nothing to measure)."""
    limit: float | None
    """The threshold in seconds, or None when the check has none."""
    reason: str

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "ok": self.ok,
            "value": None if self.value is None else round(self.value),
            "limit": None if self.limit is None else round(self.limit),
            "reason": self.reason,
        }


@dataclass(frozen=True)
class Verdict:
    checks: tuple[Check, ...]

    @property
    def healthy(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]


def human(seconds: float) -> str:
    """A duration for a reason line, as precise as it is worth: ``14m59s``, ``3h12m``, ``2d3h``."""
    step = 3600 if seconds >= 86400 else 60 if seconds >= 3600 else 1
    return format_duration(round(seconds / step) * step)


def _over(age: float, limit: float) -> str:
    return f"{human(age - limit)} over the {human(limit)} limit"


def age_check(name: str, what: str, newest: Newest | None, limit: float | None, now: datetime) -> Check:
    """The newest ``what`` (e.g. "dump") is no older than ``limit`` seconds."""
    if newest is None:
        if limit is None:
            return Check(name, True, None, None, f"no {what} (no limit set)")
        return Check(name, False, None, limit, f"no {what} at all (limit {human(limit)})")
    age = max(0.0, (now - newest.finished_at).total_seconds())
    said = f"newest {what} {newest.id} is {human(age)} old"
    if limit is None:
        return Check(name, True, age, None, f"{said} (no limit set)")
    if age > limit:
        return Check(name, False, age, limit, f"{said}: {_over(age, limit)}")
    return Check(name, True, age, limit, f"{said} (limit {human(limit)})")


def _position(wal: WalFreshness) -> str:
    """Where the server is against the archive, for a reason line."""
    if wal.server is None or wal.lag_bytes is None:
        return f"server position unknown ({wal.server_error}): judged by age alone"
    ahead = f"server at {format_lsn(wal.server.lsn)}, archive to {format_lsn(wal.archived_lsn or 0)}"
    if not wal.lag_segments:
        return f"{ahead}: no finished segment is missing"
    return f"{ahead}: {wal.lag_segments} finished segment(s), {wal.lag_bytes} bytes, not archived"


def wal_check(wal: WalFreshness, limit: float | None) -> Check:
    """Archiving has not stopped (see the module docstring for the rule)."""
    name = "wal_age"
    age = wal.age_seconds
    if age is None:
        if limit is None:
            return Check(name, True, None, None, "no WAL archived (no limit set)")
        return Check(name, False, None, limit, f"no WAL archived at all (limit {human(limit)})")
    said = f"newest WAL archived {human(age)} ago; {_position(wal)}"
    if limit is None:
        return Check(name, True, age, None, f"{said} (no limit set)")
    if age <= limit:
        return Check(name, True, age, limit, f"{said} (limit {human(limit)})")
    if wal.lag_segments is None:
        return Check(name, False, age, limit, f"archiving may have stopped: {said}; {_over(age, limit)}")
    if wal.lag_segments >= 1:
        return Check(
            name,
            False,
            age,
            limit,
            f"archiving has stopped while the server kept writing: {said}; {_over(age, limit)}",
        )
    return Check(name, True, age, limit, f"the server is quiet: {said} (limit {human(limit)})")


def drill_passed_check(drill: Newest | None) -> Check:
    if drill is None:
        return Check("drill_passed", True, None, None, "no drill report")
    if not drill.ok:
        detail = f": {drill.detail}" if drill.detail else ""
        return Check("drill_passed", False, None, None, f"the newest drill {drill.id} failed{detail}")
    return Check("drill_passed", True, None, None, f"the newest drill {drill.id} passed")


def judge(facts: Facts, limits: Limits, now: datetime) -> Verdict:
    """Every check, in a fixed order (the ``checks`` of ``status --json``)."""
    return Verdict(
        (
            age_check("dump_age", "dump", facts.dump, limits.max_dump_age, now),
            age_check("basebackup_age", "base backup", facts.basebackup, limits.max_basebackup_age, now),
            wal_check(facts.wal, limits.max_wal_age),
            age_check("drill_age", "drill", facts.drill, limits.max_drill_age, now),
            drill_passed_check(facts.drill),
        )
    )
