"""The ``p88backup schedule`` daemon: the jobs at their times, ``wal-stream`` always, health on one port.

What it does, for the sidecar (DESIGN §1):

- runs each ``[schedule]`` job at its cron times, in UTC (APScheduler 3,
  :func:`p88backup.schedule.cron.trigger`): one run of a job at a time
  (``max_instances=1``, and each command's own job lock); runs that were due
  while the daemon could not start them are coalesced into one, run late by up
  to ``MISFIRE_GRACE`` seconds; a run due while the previous one is still going
  is skipped and logged as an overrun, never stacked;
- keeps ``wal-stream`` running (:mod:`~p88backup.schedule.supervisor`);
- answers ``/healthz`` and ``/metrics`` (:mod:`~p88backup.schedule.httpd`,
  :mod:`~p88backup.schedule.health`);
- on SIGTERM/SIGINT (:meth:`Daemon.shutdown`): starts nothing more, asks
  ``wal-stream`` to store what is complete and stop, aborts running jobs, and
  is gone within ``stop_grace_seconds``; exit 0.

**Why each job run is a child process** (``p88backup dump`` & co.), not a
call into the core services on one of the daemon's threads:

- *Stopping cleanly.* A thread cannot be interrupted; a process can. A child
  gets SIGINT, which is Python's KeyboardInterrupt in the child: every
  ``with`` block unwinds, so a dump's :class:`~p88backup.catalog.backups.PendingBackup`
  removes the objects it stored, an S3 multipart upload is aborted, the
  PostgreSQL tools are stopped, and the run exits 16. If it is still there at
  the deadline, SIGKILL; what it left is an incomplete run without a manifest
  (never listed, removed by ``expire`` after ``orphan_grace_hours``).
- *The same job as cron's.* Exit codes, job locks, log lines, the metrics
  textfile: each run is exactly the command an operator runs by hand, so
  the sidecar and the cron hosts behave alike.
- *Isolation.* A dump's memory, a drill's scratch cluster, a crash in a
  library: the daemon outlives all of them and reports the exit status.

The cost is a Python start (about half a second) per run, for jobs that run
hourly at most. The health check does run in-process (it only reads).
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p88backup.schedule.children import Children, send, wait_all
from p88backup.schedule.cron import Cron, parse_schedule, trigger
from p88backup.schedule.health import HealthMonitor, StatusResult
from p88backup.schedule.httpd import HealthServer
from p88backup.schedule.jobs import JOBS, JobRunner, Outcome, follow_up
from p88backup.schedule.supervisor import WalStreamSupervisor

if TYPE_CHECKING:
    from apscheduler.schedulers.background import BackgroundScheduler

    from p88backup.core.health import Limits
    from p88backup.core.status import RepeatedStatus, StatusReport
    from p88backup.pg.conn import ConnInfo
    from p88backup.schedule.catchup import CatchUp
    from p88backup.settings import Settings
    from p88backup.storage import Storage
    from p88backup.stream import Codec

log = logging.getLogger(__name__)

MISFIRE_GRACE = 900  # seconds a run may start late (daemon busy, clock step) and still run
STATUS_RETRY_DEADLINE = 20.0  # seconds the status check retries storage: it must not hang a probe's verdict
KILL_MARGIN = 5.0  # seconds before the end of the grace period that stragglers get SIGKILL


@dataclass
class DaemonConfig:
    schedules: dict[str, str]
    """Schedule key (``dump``, ``wal_verify``...) -> cron expression or ``off``."""
    listen: str
    stop_grace: float
    base_argv: list[str]
    """How to run p88backup: ``[python, -m, p88backup, --log-format, json, ...]``."""
    wal_stream_spool: Path | None
    """wal-stream's spool (its status file is half of /healthz), or None: no wal-stream."""
    health_interval: float = 60.0
    limits: Limits | None = None
    """The ``[status]`` limits /healthz judges by, to warn at start about what they leave unchecked
    (None: not known here, no warning)."""


def plan(schedules: dict[str, str]) -> list[tuple[str, Cron | None]]:
    """Each job and its schedule (None: off), in the order of :data:`JOBS`."""
    return [(key, parse_schedule(schedules.get(key, "off"))) for key in JOBS]


def next_runs(schedules: dict[str, str], now: datetime) -> list[tuple[str, str, datetime | None]]:
    """(job, expression, next run in UTC or None when off): what ``schedule --list`` shows."""
    out: list[tuple[str, str, datetime | None]] = []
    for key, cron in plan(schedules):
        if cron is None:
            out.append((key, "off", None))
        else:
            out.append((key, cron.expression, trigger(cron).get_next_fire_time(None, now)))
    return out


class StatusCheck:
    """The ``status`` verdict, in-process, for /healthz and /metrics.

    Made again and again on one storage, so it reads only what may have changed
    since the last check (:class:`~p88backup.core.status.RepeatedStatus`). Every
    check records its findings in the metrics registry; a check that cannot be
    made records that (:func:`p88backup.metrics.status_check_failed`), so the
    figures of the last good check do not stay on /metrics as if they were current.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        codec: Callable[[], Codec],
        conninfo: Callable[[], ConnInfo],
        storage: Callable[[], Storage] | None = None,
        full_every: float | None = None,
    ) -> None:
        self.settings = settings
        self._make_storage = storage or self._open_storage
        self._make_codec = codec
        self._conninfo = conninfo
        self._full_every = full_every
        self._storage: Storage | None = None
        self._status: RepeatedStatus | None = None

    def _open_storage(self) -> Storage:
        from p88backup.storage import open_storage

        s = self.settings
        return open_storage(s.storage_url, retry_deadline=min(s.retry_deadline_seconds, STATUS_RETRY_DEADLINE))

    def _collect(self) -> StatusReport:
        from p88backup.core.status import RepeatedStatus, limits

        s = self.settings
        if self._storage is None:
            self._storage = self._make_storage()
        if self._status is None:
            self._status = RepeatedStatus(self._storage, self._make_codec(), full_every=self._full_every)
        return self._status(
            now=datetime.now(UTC),
            limits=limits(s.status),
            conninfo=self._conninfo() if s.database_url else None,
        )

    def __call__(self) -> StatusResult:
        from p88backup import metrics

        try:
            report = self._collect()
        except Exception:
            metrics.status_check_failed()
            raise  # the health monitor says why, on /healthz and in the log
        metrics.status_report(report)
        return StatusResult(
            time.time(),
            report.healthy,
            failures=tuple(f"{c.name}: {c.reason}" for c in report.verdict.failures),
            checks=tuple(c.as_dict() for c in report.verdict.checks),
        )


# Scheduled job -> the [status] limit that says whether its backups are recent enough.
FRESHNESS_LIMITS = {"dump": "max_dump_age", "basebackup": "max_basebackup_age", "drill": "max_drill_age"}


def unchecked_freshness(
    jobs: Sequence[tuple[str, Cron | None]], limits: Limits, *, wal_stream: bool
) -> list[tuple[str, str]]:
    """(what, limit) for each scheduled job whose result /healthz never judges, its ``[status]``
    limit being unset; and WAL when nothing watches archiving (no wal-stream, no ``max_wal_age``)."""
    out = [
        (key, FRESHNESS_LIMITS[key])
        for key, cron in jobs
        if cron is not None and key in FRESHNESS_LIMITS and getattr(limits, FRESHNESS_LIMITS[key]) is None
    ]
    if not wal_stream and limits.max_wal_age is None:
        out.append(("wal", "max_wal_age"))
    return out


def job_commands(jobs: Sequence[tuple[str, Cron | None]]) -> list[str]:
    """The commands (the ``job`` label of the metrics) that the scheduled ``jobs`` run, follow-ups too."""
    out: list[str] = []
    for key, cron in jobs:
        if cron is None:
            continue
        command = JOBS[key][0]
        follow = follow_up(key, Outcome(command, 0, 0.0))  # what a successful run is followed by
        for name in (command, *((follow[0],) if follow else ())):
            if name not in out:
                out.append(name)
    return out


class Daemon:
    def __init__(
        self,
        config: DaemonConfig,
        check_status: Callable[[], StatusResult],
        *,
        children: Children | None = None,
        catch_up: CatchUp | None = None,
    ) -> None:
        self.config = config
        self.catch_up = catch_up
        self.children = children or Children()
        self.health = HealthMonitor(check_status, spool=config.wal_stream_spool, interval=config.health_interval)
        self.runner = JobRunner(self.children, config.base_argv, on_finished=lambda _key: self.health.poke())
        self.server = HealthServer(config.listen, self.health.assessment)
        self.supervisor: WalStreamSupervisor | None = None
        if config.wal_stream_spool is not None:
            self.supervisor = WalStreamSupervisor(
                self.children, [*config.base_argv, "wal-stream", "--spool", str(config.wal_stream_spool)]
            )
        self._scheduler: BackgroundScheduler | None = None

    # -- running ----------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """Start everything, wait for ``stop`` (set by the signal handlers), then :meth:`shutdown`."""
        jobs = plan(self.config.schedules)  # the settings checked them; a mistake here fails before anything runs
        self._announce(jobs)
        self.server.start()  # the one start-up failure that is fatal: nobody could see our health
        try:
            self.health.start()
            if self.supervisor is not None:
                self.supervisor.start()
            started = datetime.now(UTC)  # APScheduler's first runs come after this; what was due before is lost
            self._scheduler = self._start_scheduler(jobs)
            if self.catch_up is not None:
                self.catch_up.start(self._scheduler, jobs, started)  # unless the catalog says it was not made
            # Signal handlers run in the main thread between waits: wake up now and then.
            while not stop.wait(1.0):
                pass
        finally:
            self.shutdown()

    def _announce(self, jobs: Sequence[tuple[str, Cron | None]]) -> None:
        """Before anything runs: the metrics every scrape should find, and what /healthz will not see."""
        from p88backup import metrics

        # Each scheduled job's failure counter at 0, so that its first failure is an increase.
        metrics.jobs_known(job_commands(jobs))

        # p88backup_healthy (and wal-stream's check) are /healthz's verdict at the time of the scrape.
        def stream_ok() -> bool:
            verdict = self.health.stream_verdict()
            return verdict is not None and verdict[0]

        stream = {"wal_stream": stream_ok} if self.config.wal_stream_spool is not None else {}
        metrics.verdict_from(lambda: self.health.assessment().healthy, stream)
        if self.config.limits is None:
            return
        for what, limit in unchecked_freshness(
            jobs, self.config.limits, wal_stream=self.config.wal_stream_spool is not None
        ):
            log.warning(
                "freshness not checked: /healthz and status never fail on how old this is",
                extra={"p88": {"job": what, "unset": f"status.{limit}", "env": f"P88_STATUS__{limit.upper()}"}},
            )

    def _start_scheduler(self, jobs: Sequence[tuple[str, Cron | None]]) -> BackgroundScheduler:
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES, EVENT_JOB_MISSED
        from apscheduler.executors.pool import ThreadPoolExecutor
        from apscheduler.schedulers.background import BackgroundScheduler

        _route_apscheduler_logs()
        scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(len(JOBS))},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": MISFIRE_GRACE},
            timezone=UTC,
        )
        for key, cron in jobs:
            if cron is None:
                log.info("job off", extra={"p88": {"schedule": key, "job": JOBS[key][0]}})
                continue
            scheduler.add_job(self.runner.run, trigger(cron), args=[key], id=key, name=key)
        scheduler.add_listener(self._on_event, EVENT_JOB_MAX_INSTANCES | EVENT_JOB_MISSED)
        scheduler.start()
        for job in scheduler.get_jobs():
            log.info(
                "job scheduled",
                extra={
                    "p88": {
                        "schedule": job.id,
                        "job": JOBS[job.id][0],
                        "cron": self.config.schedules[job.id],
                        "next_run": job.next_run_time.isoformat() if job.next_run_time else None,
                    }
                },
            )
        return scheduler

    def _on_event(self, event: Any) -> None:
        from apscheduler.events import EVENT_JOB_MAX_INSTANCES

        key = event.job_id
        due = [t.isoformat() for t in getattr(event, "scheduled_run_times", [])]
        fields: dict[str, Any] = {"schedule": key, "job": JOBS.get(key, (key,))[0], "due": due}
        if event.code == EVENT_JOB_MAX_INSTANCES:
            since = self.runner.running_since(key)
            if since is not None:
                fields["running_seconds"] = round(time.monotonic() - since, 1)
            log.warning("job overran: the previous run is still going, this run is skipped", extra={"p88": fields})
        else:
            log.warning("job missed: due too long ago to run now", extra={"p88": fields})

    # -- stopping ---------------------------------------------------------------------

    def shutdown(self) -> None:
        """Stop within the grace period: no new runs, wal-stream finishes, running jobs are aborted."""
        started = time.monotonic()
        grace = self.config.stop_grace
        deadline = started + grace
        kill_at = deadline - min(KILL_MARGIN, grace / 4)
        log.info("stopping", extra={"p88": {"grace_seconds": grace, "running": self.runner.running()}})
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
        running = self.children.close()
        for proc, role in running:
            if role != "wal-stream":
                log.warning("aborting a running job", extra={"p88": {"job": role, "pid": proc.pid}})
                send(proc, signal.SIGINT)  # KeyboardInterrupt in the child: its cleanup runs
        procs = [proc for proc, _ in running]
        if self.supervisor is not None:
            stream = self.supervisor.stop()
            if stream is not None and stream not in procs:
                procs.append(stream)
        left = wait_all(procs, kill_at)
        for proc in left:
            role = next((r for p, r in running if p is proc), "wal-stream")
            log.error("did not stop in time, killed", extra={"p88": {"job": role, "pid": proc.pid}})
            send(proc, signal.SIGKILL)
        wait_all(left, deadline)
        if self.supervisor is not None:
            self.supervisor.join(max(0.0, deadline - time.monotonic()))
        self.health.stop()
        self.server.stop()
        log.info("stopped", extra={"p88": {"seconds": round(time.monotonic() - started, 2)}})


def _route_apscheduler_logs() -> None:
    """APScheduler's own errors as our log lines (JSON in containers); its per-run INFO lines are
    noise next to ours, and its overrun warning is replaced by ours (with how long the run has been going)."""
    ours = logging.getLogger("p88backup")
    aps = logging.getLogger("apscheduler")
    aps.handlers = list(ours.handlers)
    aps.setLevel(logging.ERROR)
    aps.propagate = False
