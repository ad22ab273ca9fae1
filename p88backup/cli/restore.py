"""``restore``: a dump into a database (``--dump``), or a base backup + WAL to a
point in time (``--pitr``)."""

from __future__ import annotations

import logging
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click

from p88backup.cli import render
from p88backup.cli.app import App, pass_app

if TYPE_CHECKING:
    from p88backup.core.pitr.restore import PitrOptions

log = logging.getLogger("p88backup")


def restore_command(app: App) -> str:
    """The restore_command for the restored server: this p88backup, this storage."""
    exe = shutil.which("p88backup")
    argv0 = Path(sys.argv[0])
    if argv0.name == "p88backup" and argv0.exists():
        exe = str(argv0.resolve())
    cmd = [exe] if exe else [sys.executable, "-m", "p88backup"]
    env = [f"P88_STORAGE_URL={app.settings.storage_url}"]
    if app.settings.age_identity_file:
        env.append(f"P88_AGE_IDENTITY_FILE={app.settings.age_identity_file.resolve()}")
    if app.config_file:
        cmd += ["--config", str(app.config_file.resolve())]
    return " ".join(shlex.quote(p) for p in ["env", *env, *cmd, "wal-fetch"]) + " %f %p"


def parse_set(values: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for v in values:
        key, sep, value = v.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected KEY=VALUE, got {v!r}", param_hint="--set")
        out[key.strip()] = value
    return out


@click.command("restore")
@click.option("--dump", "dump_ref", metavar="ID|latest", help="Restore this logical backup.")
@click.option(
    "--pitr",
    "pitr_target",
    metavar="TARGET",
    help="Point-in-time recovery to TARGET: an ISO-8601 time with zone, latest, immediate, "
    "lsn:X/Y, xid:N or name:LABEL.",
)
@click.option(
    "--target-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="(--pitr) empty directory for the restored data directory.",
)
@click.option("--start", is_flag=True, help="(--pitr) start the server, wait for the target and promotion.")
@click.option(
    "--stop",
    is_flag=True,
    help="(--pitr --start) then shut it down cleanly, ready for the real server to take the directory.",
)
@click.option("--port", type=click.IntRange(1, 65535), help="(--pitr) port for the restored server.")
@click.option("--force", is_flag=True, help="(--pitr) replace the contents of a non-empty --target-dir.")
@click.option("--timeline", type=click.IntRange(1), help="(--pitr) follow this timeline (default: latest).")
@click.option("--base-backup", metavar="ID", help="(--pitr) use this base backup instead of choosing one.")
@click.option("--owner", metavar="USER", help="(--pitr, as root) user that owns and runs the restored server.")
@click.option(
    "--archive-mode",
    type=click.Choice(["off", "on"]),
    default="off",
    show_default=True,
    help="(--pitr) archive_mode of the restored server; 'on' once it is the new primary.",
)
@click.option(
    "--set",
    "set_",
    multiple=True,
    metavar="KEY=VALUE",
    help="(--pitr) extra setting for the restored server (repeatable).",
)
@click.option("--no-verify", is_flag=True, help="(--pitr) skip pg_verifybackup of the restored files.")
@click.option("--timeout", type=float, default=3600, show_default=True, help="(--pitr --start) seconds to wait.")
@click.option("--target-db", metavar="NAME", help="Database to create from the dump (on P88_DATABASE_URL's server).")
@click.option("--database", "source_db", metavar="NAME", help="Which database of a multi-database dump.")
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="pg_restore --jobs (stages the decoded archive in work_dir first).",
)
@click.option("--clean", is_flag=True, help="Drop and recreate --target-db if it exists (default: refuse).")
@click.option("--no-globals", is_flag=True, help="Do not create missing roles/tablespaces from the backup.")
@click.option("--no-check", is_flag=True, help="Skip comparing row counts with those recorded at backup time.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def restore_cmd(
    app: App,
    dump_ref: str | None,
    pitr_target: str | None,
    target_dir: Path | None,
    start: bool,
    stop: bool,
    port: int | None,
    force: bool,
    timeline: int | None,
    base_backup: str | None,
    owner: str | None,
    archive_mode: str,
    set_: tuple[str, ...],
    no_verify: bool,
    timeout: float,
    target_db: str | None,
    source_db: str | None,
    jobs: int,
    clean: bool,
    no_globals: bool,
    no_check: bool,
    as_json: bool,
) -> None:
    """Restore a backup.

    \b
    From a nightly dump into a new database:
      p88backup restore --dump latest --target-db p88_restored
      p88backup restore --dump 20261127T021500Z --target-db p88 --clean

    Missing roles are created from the dump's globals; existing roles are
    left unchanged. With one job the restore runs in a single transaction:
    it either completes or leaves nothing. Afterwards the row count of every
    table is compared with the count recorded at backup time.

    \b
    To a point in time, from a base backup and the WAL archive:
      p88backup restore --pitr 2026-11-27T03:15:00+00:00 --target-dir /srv/pg-restore --start --port 5433
      p88backup restore --pitr latest --target-dir /var/lib/postgresql/data
      p88backup restore --pitr name:before-migration-42 --target-dir /srv/pg-restore

    It picks the newest base backup before the target, checks the WAL from
    there is complete, lays out and verifies the files, and writes recovery
    settings (restore_command = p88backup wal-fetch, recovery_target_action =
    promote). With --start it starts the server, waits until the target is
    reached and the server promoted, and prints what was restored.
    """
    if pitr_target is not None:
        if dump_ref:
            raise click.UsageError("--dump and --pitr are two different restores: pick one")
        if not target_dir:
            raise click.UsageError("--pitr needs --target-dir DIR")
        if stop and not start:
            raise click.UsageError("--stop goes with --start")
        from p88backup.core.pitr.plan import parse_target
        from p88backup.core.pitr.restore import PitrOptions

        port_chosen = start and port is None
        pitr_options = PitrOptions(
            target=parse_target(pitr_target),
            target_dir=target_dir.resolve(),
            restore_command=restore_command(app),
            start=start,
            stop=stop,
            port=free_port() if port_chosen else port,
            port_chosen=port_chosen,
            force=force,
            timeline=timeline,
            base_backup=base_backup,
            owner=owner,
            archive_mode=archive_mode == "on",
            verify=not no_verify,
            settings=parse_set(set_),
            timeout=timeout,
            pg_bin_dir=app.settings.pg_bin_dir,
            server_env=dict(os.environ),
        )
        _restore_pitr(app, pitr_options, as_json)
        return
    from p88backup.catalog.backups import Catalog
    from p88backup.catalog.models import DumpManifest
    from p88backup.core.logical.restore import DumpRestorer, RestoreOptions

    if not dump_ref:
        raise click.UsageError("say what to restore: --dump ID|latest or --pitr TARGET")
    if not target_db:
        raise click.UsageError("--dump needs --target-db NAME")
    s = app.settings
    manifest = Catalog(app.storage).resolve("dump", dump_ref)
    assert isinstance(manifest, DumpManifest)
    dump_options = RestoreOptions(
        target_db=target_db,
        source_db=source_db,
        jobs=jobs,
        clean=clean,
        globals=not no_globals,
        check_counts=not no_check,
        work_dir=s.work_dir,
        pg_bin_dir=s.pg_bin_dir,
    )
    result = DumpRestorer(app.conninfo, app.storage, app.codec, dump_options).run(manifest)
    data = {
        "kind": "dump",
        "id": result.backup_id,
        "source_db": result.source_db,
        "target_db": result.target_db,
        "seconds": result.seconds,
        "roles_created": result.roles_created,
        "roles_left_unchanged": result.roles_kept,
        "tables_checked": result.tables_checked,
    }
    log.info("restore finished", extra={"p88": data})
    if as_json:
        render.emit_json(data)
    else:
        click.echo(
            f"restored dump {result.backup_id} ({result.source_db}) into {result.target_db} "
            f"in {render.human_duration(result.seconds)}; row counts checked on {result.tables_checked} tables"
        )


def free_port() -> int:
    """A free local port, so a trial restore never collides with production."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _restore_pitr(app: App, options: PitrOptions, as_json: bool) -> None:
    from dataclasses import asdict

    from p88backup.core.pitr.restore import PitrRestorer
    from p88backup.errors import ConfigError

    conninfo = None  # only --start connects (to the restored server), with the configured credentials
    if options.start:
        try:
            conninfo = app.conninfo
        except ConfigError:
            pass  # no database configured: connect as postgres
    result = PitrRestorer(app.storage, app.codec, options, conninfo=conninfo).run()
    data = asdict(result)
    log.info("pitr restore finished", extra={"p88": data})
    if as_json:
        render.emit_json(data)
        return
    click.echo(
        f"restored base backup {result.backup_id} into {result.target_dir} "
        f"for target {result.target} ({render.human_duration(result.layout_seconds)} to lay out)"
    )
    if result.promoted:
        click.echo(
            f"server promoted on port {result.port}: timeline {result.timeline}, LSN {result.lsn}, "
            f"last replayed transaction {result.last_replayed_transaction}"
        )
        if result.stop_reason:
            click.echo(f"recovery: {result.stop_reason}")
        if result.stopped:
            click.echo("stopped cleanly: the data directory is ready for the real server")
    else:
        click.echo(
            f"start it with: pg_ctl -D {result.target_dir} start   (recovery settings are in "
            "postgresql.auto.conf; it promotes when the target is reached)"
        )
    if not options.archive_mode:
        click.echo(
            "note: archive_mode is off on the restored server; when it becomes the new primary, set "
            "archive_mode = on and take a new base backup"
        )
