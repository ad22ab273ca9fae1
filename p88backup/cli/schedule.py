"""``schedule``: the sidecar daemon (:mod:`p88backup.schedule.scheduler`)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from p88backup.cli.app import App, pass_app


@click.command("schedule")
@click.option(
    "--no-wal-stream",
    is_flag=True,
    help="Do not run wal-stream (archive_command = 'p88backup wal-push %p' ships WAL instead); /healthz then "
    "judges archiving by status's WAL age alone.",
)
@click.option(
    "--list",
    "list_only",
    is_flag=True,
    help="Print each job, its schedule and its next run (UTC), and exit.",
)
@pass_app
def schedule_cmd(app: App, no_wal_stream: bool, list_only: bool) -> None:
    """Run the backup jobs at their times, keep WAL archiving, report health (the sidecar).

    Runs each job of [schedule] at its cron times, in UTC (P88_SCHEDULE__DUMP="15 2 * * *";
    "off" disables a job): dump (then verify of that dump), basebackup, expire, wal-verify,
    drill, reindex. One run of a job at a time: a run due while the previous one still goes is
    skipped and logged as an overrun. Each run is the p88backup command itself, in a child
    process: the same exit codes, locks and log lines as from cron, plus one log line at its
    start and one at its end (duration, result). A dump or base backup that was due up to 15
    minutes before the daemon started, and that the catalog shows was not made (a restart
    across its time), runs at once ("job catch-up").

    wal-stream runs all along, restarted with backoff whenever it exits; neither PostgreSQL
    nor storage being down stops the daemon.

    On schedule.listen (default 0.0.0.0:9188): GET /healthz answers 200 while WAL reaches the
    archive (wal-stream connected and caught up) and `p88backup status` finds nothing past its
    [status] limits, else 503 with the reasons (JSON); GET /metrics is the Prometheus registry.

    SIGTERM or SIGINT: nothing new starts, wal-stream stores what is complete, running jobs
    are aborted (a dump or base backup removes what it stored, so nothing is half-listed),
    and the daemon exits 0 within schedule.stop_grace_seconds (default 90).
    """
    from datetime import UTC, datetime

    from p88backup.schedule.scheduler import DaemonConfig, next_runs

    s = app.settings
    schedules = {
        key: getattr(s.schedule, key) for key in ("dump", "basebackup", "expire", "wal_verify", "drill", "reindex")
    }
    if list_only:
        for key, expression, when in next_runs(schedules, datetime.now(UTC)):
            click.echo(f"{key:11} {expression:20} {when.isoformat() if when else '-'}")
        return

    import signal
    import threading

    from p88backup import metrics
    from p88backup.core.status import limits
    from p88backup.core.wal.streamhealth import default_spool
    from p88backup.locks import job_lock
    from p88backup.schedule.catchup import CatchUp, newest_in_catalog
    from p88backup.schedule.scheduler import MISFIRE_GRACE, Daemon, StatusCheck

    config = DaemonConfig(
        schedules=schedules,
        listen=s.schedule.listen,
        stop_grace=s.schedule.stop_grace_seconds,
        base_argv=_p88backup_argv(app),
        wal_stream_spool=None if no_wal_stream else default_spool(s.work_dir),
        limits=limits(s.status),
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with job_lock(s.lock_dir, "schedule"):
        daemon = Daemon(
            config,
            StatusCheck(s, codec=lambda: app.codec, conninfo=lambda: app.conninfo),
            catch_up=CatchUp(newest_in_catalog(lambda: app.storage), grace=MISFIRE_GRACE),
        )
        daemon.run(stop)
    # The registry served /metrics. Each job wrote its own run to metrics_textfile (when set), as
    # from cron: nothing is left for the CLI to write at exit (it would count those runs twice).
    metrics.reset()


def _p88backup_argv(app: App) -> list[str]:
    """The command line that runs p88backup with this process's global options."""
    root = click.get_current_context().find_root()
    log_format = root.params.get("log_format") or ("console" if sys.stderr.isatty() else "json")
    argv = [sys.executable, "-m", "p88backup", "--log-format", log_format]
    if app.config_file is not None:
        argv += ["--config", str(Path(app.config_file).resolve())]
    return argv + ["-v"] * app.verbose
