"""``restore``: a dump into a database (``--dump``), or a base backup + WAL to a
point in time (``--pitr``).

One command for both (the contract scripts and the runbook use), parsed once
and handed to one small function per mode. Every option belongs to one mode;
typing an option of the other mode is a usage error that says where it
belongs, never silently ignored.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import click
from click.core import ParameterSource

from p88backup.cli import render
from p88backup.cli.app import App, pass_app

if TYPE_CHECKING:
    from p88backup.core.logical.restore import RestoreResult
    from p88backup.core.pitr.restore import PitrResult

log = logging.getLogger("p88backup")
F = TypeVar("F", bound=Callable[..., Any])


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


Mode = Literal["dump", "pitr"]


class ModeOption(click.Option):
    """An option of one restore mode; ``instead`` names the other mode's option for the same job."""

    def __init__(self, *args: Any, mode: Mode, instead: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.mode: Mode = mode
        self.instead = instead


class RestoreCommand(click.Command):
    """``restore`` with its options listed by mode in ``--help`` (Click has no option groups)."""

    SECTIONS: tuple[tuple[str, Mode | None], ...] = (
        ("Restore a dump (--dump ID|latest --target-db NAME)", "dump"),
        ("Point-in-time recovery (--pitr TARGET --target-dir DIR)", "pitr"),
        ("Options", None),
    )

    def format_options(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        for title, mode in self.SECTIONS:
            rows = [
                rec
                for p in self.get_params(ctx)
                if getattr(p, "mode", None) == mode and (rec := p.get_help_record(ctx)) is not None
            ]
            with formatter.section(title):
                formatter.write_dl(rows)


def dump_option(*decls: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*decls, cls=ModeOption, mode="dump", **kwargs)


def pitr_option(*decls: str, **kwargs: Any) -> Callable[[F], F]:
    return click.option(*decls, cls=ModeOption, mode="pitr", **kwargs)


def reject_other_mode(ctx: click.Context, mode: Mode) -> None:
    """A usage error for every option given on the command line that belongs to the other mode.

    Click fills in defaults for every option; only what the user typed counts.
    """
    wrong = []
    for p in ctx.command.params:
        if not isinstance(p, ModeOption) or p.mode == mode or p.name is None:
            continue
        if ctx.get_parameter_source(p.name) in (None, ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP):
            continue
        what = re.sub(r"\s*\([^()]*\)$", "", (p.help or "").rstrip("."))  # the help, without its aside
        what = what[:1].lower() + what[1:]
        use = f"restore --{mode} uses {p.instead}" if p.instead else f"restore --{mode} does not take it"
        wrong.append(f"{p.opts[0]} belongs to restore --{p.mode} ({what}); {use}")
    if wrong:
        raise click.UsageError("\n".join(wrong))


@click.command(
    "restore",
    cls=RestoreCommand,
    options_metavar="(--dump ID|latest --target-db NAME | --pitr TARGET --target-dir DIR) [OPTIONS]",
)
@dump_option("--dump", "dump_ref", metavar="ID|latest", help="Restore this logical backup (or the latest).")
@dump_option(
    "--target-db",
    metavar="NAME",
    instead="--target-dir",
    help="Database to create from the dump (on P88_DATABASE_URL's server).",
)
@dump_option("--database", "source_db", metavar="NAME", help="Which database of a multi-database dump.")
@dump_option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Parallel pg_restore jobs; the archive is decoded into work_dir first.",
)
@dump_option(
    "--clean", is_flag=True, instead="--force", help="Drop and recreate --target-db if it exists (default: refuse)."
)
@dump_option("--no-globals", is_flag=True, help="Do not create missing roles and tablespaces from the backup.")
@dump_option("--no-check", is_flag=True, help="Skip comparing row counts with those recorded at backup time.")
@pitr_option(
    "--pitr",
    "pitr_target",
    metavar="TARGET",
    help="Recover to TARGET: an ISO-8601 time with zone, latest, immediate, lsn:X/Y, xid:N or name:LABEL.",
)
@pitr_option(
    "--target-dir",
    type=click.Path(file_okay=False, path_type=Path),
    instead="--target-db",
    help="Empty directory for the restored data directory.",
)
@pitr_option("--start", is_flag=True, help="Start the server, wait for the target and promotion.")
@pitr_option(
    "--stop",
    is_flag=True,
    help="With --start: then shut it down cleanly, ready for the real server to take the directory.",
)
@pitr_option("--port", type=click.IntRange(1, 65535), help="Port for the restored server.")
@pitr_option("--force", is_flag=True, instead="--clean", help="Replace the contents of a non-empty --target-dir.")
@pitr_option("--timeline", type=click.IntRange(1), help="Follow this timeline (default: latest).")
@pitr_option("--base-backup", metavar="ID", help="Use this base backup instead of choosing one.")
@pitr_option("--owner", metavar="USER", help="As root: the user that owns and runs the restored server.")
@pitr_option(
    "--archive-mode",
    type=click.Choice(["off", "on"]),
    default="off",
    show_default=True,
    help="archive_mode of the restored server; 'on' once it is the new primary.",
)
@pitr_option(
    "--set",
    "set_",
    multiple=True,
    metavar="KEY=VALUE",
    help="Extra setting for the restored server (repeatable).",
)
@pitr_option("--no-verify", is_flag=True, help="Skip pg_verifybackup of the restored files.")
@pitr_option("--timeout", type=float, default=3600, show_default=True, help="With --start: seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def restore_cmd(app: App, /, dump_ref: str | None, pitr_target: str | None, as_json: bool, **options: Any) -> None:
    """Restore a backup: a dump into a new database (--dump), or a base backup
    and WAL to a point in time (--pitr). Each takes only its own options.

    \b
    From a nightly dump into a new database:
      p88backup restore --dump latest --target-db p88_restored
      p88backup restore --dump 20261127T021500Z --target-db p88 --clean

    Missing roles are created from the dump's globals; existing roles are
    left unchanged, and statements that would change them (such as a new
    role granted to an existing one) are reported, not applied. With one job
    the restore runs in a single transaction: it either completes or leaves
    nothing. Afterwards the row count of every table is compared with the
    count recorded at backup time.

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
    ctx = click.get_current_context()
    if dump_ref is not None and pitr_target is not None:
        raise click.UsageError("--dump and --pitr are two different restores: pick one")
    if dump_ref is None and pitr_target is None:
        raise click.UsageError("say what to restore: --dump ID|latest or --pitr TARGET")
    mode: Mode = "dump" if dump_ref is not None else "pitr"
    reject_other_mode(ctx, mode)
    modes = {p.name: p.mode for p in ctx.command.params if isinstance(p, ModeOption)}
    mine = {name: value for name, value in options.items() if modes[name] == mode}
    if dump_ref is not None:
        _restore_dump(app, dump_ref, as_json=as_json, **mine)
    else:
        assert pitr_target is not None
        _restore_pitr(app, pitr_target, as_json=as_json, **mine)


def _restore_dump(
    app: App,
    ref: str,
    *,
    target_db: str | None,
    source_db: str | None,
    jobs: int,
    clean: bool,
    no_globals: bool,
    no_check: bool,
    as_json: bool,
) -> None:
    from p88backup.catalog.backups import Catalog
    from p88backup.catalog.models import DumpManifest
    from p88backup.core.logical.restore import DumpRestorer, RestoreOptions

    if not target_db:
        raise click.UsageError("restore --dump needs --target-db NAME")
    s = app.settings
    manifest = Catalog(app.storage).resolve("dump", ref)
    assert isinstance(manifest, DumpManifest)
    options = RestoreOptions(
        target_db=target_db,
        source_db=source_db,
        jobs=jobs,
        clean=clean,
        globals=not no_globals,
        check_counts=not no_check,
        work_dir=s.work_dir,
        pg_bin_dir=s.pg_bin_dir,
    )
    result = DumpRestorer(app.conninfo, app.storage, app.codec, options).run(manifest)
    data = {
        "kind": "dump",
        "id": result.backup_id,
        "source_db": result.source_db,
        "target_db": result.target_db,
        "seconds": result.seconds,
        "roles_created": result.roles_created,
        "roles_left_unchanged": result.roles_kept,
        "globals_skipped": [{"statement": g.statement, "reason": g.reason} for g in result.globals_skipped],
        "tables_checked": result.tables_checked,
    }
    log.info("restore finished", extra={"p88": data})
    if as_json:
        render.emit_json(data)
    else:
        show_dump(result)


def show_dump(result: RestoreResult) -> None:
    """What restore --dump did, for a person."""
    click.echo(
        f"restored dump {result.backup_id} ({result.source_db}) into {result.target_db} "
        f"in {render.human_duration(result.seconds)}; row counts checked on {result.tables_checked} tables"
    )
    for g in result.globals_skipped:
        click.echo(f"warning: not applied, {g.reason}: {g.statement}  (apply it by hand if it is wanted)")


def free_port() -> int:
    """A free local port, so a trial restore never collides with production."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _restore_pitr(
    app: App,
    target: str,
    *,
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
    as_json: bool,
) -> None:
    from dataclasses import asdict

    from p88backup.core.pitr.plan import parse_target
    from p88backup.core.pitr.restore import PitrOptions, PitrRestorer
    from p88backup.errors import ConfigError

    if not target_dir:
        raise click.UsageError("restore --pitr needs --target-dir DIR")
    if stop and not start:
        raise click.UsageError("--stop goes with --start")
    port_chosen = start and port is None
    options = PitrOptions(
        target=parse_target(target),
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
    else:
        show_pitr(result, archive_mode=options.archive_mode)


def show_pitr(result: PitrResult, *, archive_mode: bool) -> None:
    """What restore --pitr did, for a person."""
    click.echo(
        f"restored base backup {result.backup_id} into {result.target_dir} "
        f"for target {result.target} ({render.human_duration(result.layout_seconds)} to lay out)"
    )
    for warning in result.warnings:
        click.echo(f"warning: {warning}")
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
    if not archive_mode:
        click.echo(
            "note: archive_mode is off on the restored server; when it becomes the new primary, set "
            "archive_mode = on and take a new base backup"
        )
