"""A drill's figures and its verdict, as pure functions over the report model.

RTO: wall time from the start of a restore until the restored server answered
queries with its row counts and SQL checks passed (``pg_amcheck`` runs after
the clock stops and is timed on its own, as are the scratch cluster's setup
and removal). RPO: the source's clock when the restore started minus the
newest commit the drill restored (the dump's snapshot time; for base backup
+ WAL, the last replayed commit). A source that has been idle shows the time
since its last commit: nothing newer exists to lose, but nothing newer proves
the archive is current either.
"""

from __future__ import annotations

from datetime import datetime

from p88backup.catalog.models import DrillReport, DrillRun


def rpo_seconds(source_now: datetime, newest_restorable: datetime | None) -> float | None:
    """Seconds of commits the drill could not restore; None when it restored nothing datable.

    Never negative: a commit a moment newer than the source's clock reading
    (WAL archived while the drill ran) means nothing was lost.
    """
    if newest_restorable is None:
        return None
    return round(max(0.0, (source_now - newest_restorable).total_seconds()), 3)


def rto_seconds(restore_started: float, checks_passed: float | None) -> float | None:
    """Monotonic seconds from the restore's start to the checks passing; None if they did not pass."""
    if checks_passed is None:
        return None
    return round(max(0.0, checks_passed - restore_started), 3)


def run_ok(run: DrillRun) -> bool:
    """A drill passed when its restore worked and no check failed (skipped checks do not fail it)."""
    return run.error is None and not run.failed_checks


def failure_message(report: DrillReport) -> str | None:
    """One line naming every failed drill, its backup and its cause (failed checks by name); None if it passed."""
    parts = []
    for run in report.drills:
        if run.ok:
            continue
        what = f"{run.kind} drill of {'dump' if run.kind == 'dump' else 'base backup'} {run.backup_id or '(none)'}"
        causes = [f"restore failed: {run.error}"] if run.error else []
        causes += [f"check {c.name!r} failed: {c.detail}" for c in run.failed_checks]
        parts.append(f"{what}: {'; '.join(causes)}")
    if not parts:
        return None
    return f"drill {report.id} failed: " + " | ".join(parts)
