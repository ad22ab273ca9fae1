"""WAL commands: wal-stream, wal-verify, restore-point, and the Click face of
``wal-push``/``wal-fetch`` (which normally never reach Click: the entry point
sends them to the fast path; these wrappers list them in ``--help`` and run
the same code if called through Click)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from p88backup.cli.app import App, pass_app
from p88backup.walcli import FETCH_HELP, PUSH_HELP

log = logging.getLogger("p88backup")


def _fast(ctx: click.Context, command: str, args: list[str]) -> None:
    from p88backup.walcli import main as fast_main

    root = ctx.find_root()
    cfg = root.params.get("config_file")
    argv = (["--config", str(cfg)] if cfg else []) + [command, *args]
    sys.exit(fast_main(argv))


@click.command("wal-push", help=PUSH_HELP.split("\n", 2)[2], context_settings={"ignore_unknown_options": True})
@click.argument("path")
@click.pass_context
def wal_push_cmd(ctx: click.Context, path: str) -> None:
    _fast(ctx, "wal-push", [path])


@click.command("wal-fetch", help=FETCH_HELP.split("\n", 2)[2])
@click.argument("name")
@click.argument("dest")
@click.pass_context
def wal_fetch_cmd(ctx: click.Context, name: str, dest: str) -> None:
    _fast(ctx, "wal-fetch", [name, dest])


@click.command("wal-stream")
@click.option(
    "--spool",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Local directory pg_receivewal writes into (default: work_dir/wal-spool). Keep it on a volume.",
)
@click.option("--slot", default=None, help="Replication slot (default: wal.slot_name); created if missing.")
@click.option("--poll", type=float, default=0.5, show_default=True, help="Seconds between spool scans.")
@click.option(
    "--max-backoff",
    type=click.FloatRange(0.1),
    default=60.0,
    show_default=True,
    help="Longest wait, in seconds, between reconnection attempts (they start at 1 s and double).",
)
@pass_app
def wal_stream_cmd(app: App, spool: Path | None, slot: str | None, poll: float, max_backoff: float) -> None:
    """Archive WAL continuously over the replication protocol (for the sidecar).

    Runs pg_receivewal with a replication slot (created reserving WAL) into a
    local spool and pushes each completed WAL file to storage with the same
    guarantees as wal-push, deleting it locally only once stored. Reconnects
    with backoff; stops cleanly on SIGTERM/SIGINT after shipping what is
    complete.

    After a promotion (a restored cluster on a new timeline at the same
    address) it follows the server's timeline history: spool files of the
    abandoned branch are moved to SPOOL/abandoned/ (never deleted), the new
    timeline's history file is archived first and the new timeline is
    streamed from its fork point.

    SPOOL/status.json says whether it is connected and whether the archive
    is caught up with the server; `p88backup status --component wal-stream`
    judges it (for a container healthcheck).
    """
    import signal
    import threading

    from p88backup.core.wal.archive import WalArchive
    from p88backup.core.wal.stream import WalStreamer
    from p88backup.core.wal.streamhealth import default_spool
    from p88backup.locks import job_lock

    s = app.settings
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    with job_lock(s.lock_dir, "wal-stream"):
        streamer = WalStreamer(
            app.conninfo,
            WalArchive(app.storage, app.codec),
            spool or default_spool(s.work_dir),
            slot=slot or s.wal.slot_name,
            pg_bin_dir=s.pg_bin_dir,
            poll=poll,
            max_backoff=max_backoff,
            stop=stop,
        )
        streamer.run()


@click.command("wal-verify")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def wal_verify_cmd(app: App, as_json: bool) -> None:
    """Check the WAL archive: from each base backup to the newest segment, any gap?

    Lists timelines (and where each branched) and exits 6 if any base backup
    cannot be rolled forward to the newest archived WAL. Also reports how
    fresh the archive is: when it last received WAL and, when the database
    is reachable (P88_DATABASE_URL), how far the server is ahead of it; an
    archive that stopped while the server kept writing (status.max_wal_age)
    is reported, not an error here: `p88backup status` fails on it.
    """
    from p88backup import metrics
    from p88backup.catalog.backups import Catalog
    from p88backup.cli import render
    from p88backup.core.health import wal_check
    from p88backup.core.wal.archive import WalArchive
    from p88backup.core.wal.verify import verify_wal
    from p88backup.errors import VerifyError

    s = app.settings
    report = verify_wal(
        Catalog(app.storage), WalArchive(app.storage, app.codec), conninfo=app.conninfo if s.database_url else None
    )
    fresh = report.freshness
    assert fresh is not None
    archiving = wal_check(fresh, s.status.seconds("max_wal_age"))
    metrics.wal_freshness(fresh)
    if as_json:
        render.emit_json(report.as_dict() | {"archiving": archiving.as_dict()})
    else:
        click.echo(
            f"{report.segments} WAL segments, newest {report.newest_segment} (timeline {report.newest_timeline})"
        )
        for t in report.timelines:
            click.echo(f"timeline {t['timeline']} branched from {t['parent']} at {t['switchpoint']}")
        for c in report.chains:
            click.echo(
                f"{'ok ' if c.ok else 'GAP'}  base backup {c.id} from {c.start_wal}"
                + "".join(f"  missing {a}..{b}" for a, b in c.gaps)
                + (f"  {c.error}" if c.error else "")
            )
        click.echo(f"{'fresh' if archiving.ok else 'STALE'}  {archiving.reason}")
    if not archiving.ok:
        log.warning("WAL archive is stale", extra={"p88": {"reason": archiving.reason}})
    if not report.ok:
        a, b = report.gaps[0] if report.gaps else ("?", "?")
        raise VerifyError(f"the WAL archive has gaps: first missing {a}" + (f" to {b}" if b != a else ""))


@click.command("restore-point")
@click.argument("name")
@click.option("--json", "as_json", is_flag=True, help="Print the record as JSON.")
@pass_app
def restore_point_cmd(app: App, name: str, as_json: bool) -> None:
    """Mark a point to restore to later, e.g. before a migration.

    Creates a PostgreSQL restore point, switches WAL so it is archived now,
    and records its LSN so `restore --pitr name:NAME` picks the right base
    backup.
    """
    from p88backup.cli import render
    from p88backup.core.wal.restorepoints import create_restore_point

    record = create_restore_point(app.conninfo, app.storage, name)
    if as_json:
        render.emit_json(record)
    else:
        click.echo(f"restore point {name!r} at {record['lsn']} (restore with: --pitr name:{name})")
