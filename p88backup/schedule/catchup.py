"""A dump or base backup whose time came while the daemon was down (a restart, a deploy): run it now.

APScheduler keeps its jobs in memory. When the daemon starts it computes each
job's first run from *now*, so a run due a moment before the start is never
made: restart the sidecar at 02:16 and the 02:15 dump waits until tomorrow,
silently. Memory cannot tell whether that run happened before the restart;
the catalog can: a dump or base backup run creates its backup with the id of
its start time.

So at start, for ``dump`` and ``basebackup``: if the job was due within
``misfire_grace_time`` (15 min, the lateness APScheduler itself accepts for a
run it knows about) before the start, and no backup of that kind started at or
after that due time, the job runs at once, logged ``job catch-up``. A backup
that started at the due time or later (the run happened, or an operator ran
one) means there is nothing to catch up. A failed run leaves no backup: it is
made again, which is what a failed nightly dump needs anyway.

The other jobs are not caught up: ``expire`` and ``wal_verify`` leave nothing
in the catalog to tell a run by, and their next run does the same work;
``drill`` and ``reindex`` are long and rare enough that an unplanned run at
start could surprise. For them a run due shortly before a start is skipped
until their next time, as before; the ``job scheduled`` line logged at start
gives each job's next run.

The catalog is read on a thread of its own after the scheduler has started:
storage that is slow or down delays nothing (it is logged, and no run is
caught up).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from p88backup.schedule.cron import Cron

if TYPE_CHECKING:
    from p88backup.catalog.layout import Kind
    from p88backup.storage import Storage

log = logging.getLogger(__name__)

# Schedule key -> the catalog kind whose newest backup says whether the run was made.
CATCH_UP: dict[str, Kind] = {"dump": "dump", "basebackup": "basebackup"}


def last_due(cron: Cron, started: datetime, within: float) -> datetime | None:
    """The newest time at or before ``started``, at most ``within`` seconds before it, at which ``cron`` fires.

    APScheduler's first run of a job is the first fire time *after* the start
    (it rounds the start up to the next whole second), so every fire time
    found here was skipped.
    """
    when = started.astimezone(UTC).replace(microsecond=0)
    earliest = started - timedelta(seconds=within)
    while when >= earliest:
        if cron.matches(when):
            return when
        # A five-field schedule fires on minutes: no need to look at every second of one.
        when -= timedelta(seconds=1) if cron.seconds != (0,) else _to_minute(when)
    return None


def _to_minute(when: datetime) -> timedelta:
    """The step back to the previous whole minute."""
    return timedelta(seconds=when.second or 60)


def missed_run(due: datetime | None, newest_started: datetime | None) -> bool:
    """Was the run due at ``due`` not made? True when no backup started at or after it."""
    return due is not None and (newest_started is None or newest_started < due)


def newest_in_catalog(storage: Callable[[], Storage]) -> Callable[[Kind], datetime | None]:
    """When the newest backup of a kind started (its id is that time), read from the catalog."""

    def newest(kind: Kind) -> datetime | None:
        from p88backup.catalog.backups import Catalog
        from p88backup.catalog.layout import id_time

        ids = Catalog(storage()).ids(kind)
        return id_time(ids[-1]) if ids else None

    return newest


class CatchUp:
    """Finds the runs missed across a restart and has the scheduler run them now."""

    def __init__(
        self,
        newest_started: Callable[[Kind], datetime | None],
        *,
        grace: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.newest_started = newest_started
        self.grace = grace
        self.clock = clock
        self.thread: threading.Thread | None = None

    def missed(self, jobs: Sequence[tuple[str, Cron | None]], started: datetime) -> list[tuple[str, datetime]]:
        """(job, due time) of each run to catch up; the catalog is read only for jobs due shortly before."""
        out: list[tuple[str, datetime]] = []
        for key, cron in jobs:
            if key not in CATCH_UP or cron is None:
                continue
            due = last_due(cron, started, self.grace)
            if due is None:
                continue
            try:
                newest = self.newest_started(CATCH_UP[key])
            except Exception as exc:  # storage down or slow: the daemon goes on, this run is not caught up
                log.warning(
                    "cannot tell whether a run due before the start was made: not caught up",
                    extra={"p88": {"schedule": key, "due": due.isoformat(), "error": str(exc)}},
                )
                continue
            if missed_run(due, newest):
                log.info(
                    "job catch-up: its run due before the start was not made, running it now",
                    extra={
                        "p88": {
                            "schedule": key,
                            "due": due.isoformat(),
                            "newest": newest.isoformat() if newest else None,
                        }
                    },
                )
                out.append((key, due))
        return out

    def start(self, scheduler: Any, jobs: Sequence[tuple[str, Cron | None]], started: datetime) -> None:
        """Check in the background; each missed run is brought forward to now (one run of a job at a
        time still holds: it is the scheduled job itself that runs, not a second one)."""

        def work() -> None:
            for key, _due in self.missed(jobs, started):
                try:
                    scheduler.modify_job(key, next_run_time=self.clock())
                except Exception as exc:  # stopping meanwhile (the job or the scheduler is gone)
                    log.info("job catch-up not run", extra={"p88": {"schedule": key, "error": str(exc)}})

        self.thread = threading.Thread(target=work, name="catch-up", daemon=True)
        self.thread.start()
