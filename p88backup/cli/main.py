"""The CLI root: global options, lazy subcommands, and the one place that
turns exceptions into exit codes.

Commands are imported only when run (``LazyGroup``), so a command pays only
for the libraries it uses.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from p88backup import __version__
from p88backup.errors import EXIT_CODE_HELP, ExitCode, P88Error
from p88backup.log import report_error

if TYPE_CHECKING:
    from p88backup.cli.app import App

log = logging.getLogger("p88backup")

# name -> "module:attribute", in the order --help lists them.
COMMANDS: dict[str, str] = {
    "init": "p88backup.cli.init_cmd:init_cmd",
    "dump": "p88backup.cli.backup:dump_cmd",
    "list": "p88backup.cli.catalog:list_cmd",
    "status": "p88backup.cli.catalog:status_cmd",
    "verify": "p88backup.cli.backup:verify_cmd",
    "keys": "p88backup.cli.keys:keys_cmd",
    "restore": "p88backup.cli.restore:restore_cmd",
    "expire": "p88backup.cli.expire:expire_cmd",
    "wal-push": "p88backup.cli.wal:wal_push_cmd",
    "wal-fetch": "p88backup.cli.wal:wal_fetch_cmd",
    "wal-stream": "p88backup.cli.wal:wal_stream_cmd",
    "wal-verify": "p88backup.cli.wal:wal_verify_cmd",
    "basebackup": "p88backup.cli.backup:basebackup_cmd",
    "restore-point": "p88backup.cli.wal:restore_point_cmd",
    "schedule": "p88backup.cli.schedule:schedule_cmd",
    "reindex": "p88backup.cli.reindex:reindex_cmd",
    "drill": "p88backup.cli.drill:drill_cmd",
    "config": "p88backup.cli.config_cmd:config_cmd",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module, _, attr = target.partition(":")
        cmd = getattr(importlib.import_module(module), attr)
        assert isinstance(cmd, click.Command)
        return cmd


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="P88_CONFIG",
    help="TOML config file (also P88_CONFIG). Environment variables P88_* override it.",
)
@click.option(
    "--log-format",
    type=click.Choice(["json", "console"]),
    default=None,
    help="Log lines on stderr: json (default when stderr is not a TTY) or console.",
)
@click.option("-v", "--verbose", count=True, help="Debug logging, with tracebacks.")
@click.version_option(__version__, prog_name="p88backup")
@click.pass_context
def cli(ctx: click.Context, config_file: Path | None, log_format: str | None, verbose: int) -> None:
    """p88backup: backups, point-in-time recovery, restore drills and search
    rebuilds for the Project 88 stack.

    \b
    Nightly logical backup     p88backup dump && p88backup verify latest
    What can I restore?        p88backup list / p88backup status
    Restore a dump             p88backup restore --dump latest --target-db p88_copy
    Settings in effect         p88backup config

    Configuration comes from P88_* environment variables and an optional TOML
    file (--config). Exit codes: 0 ok, 1 error, 2 usage, 3+ see
    `p88backup exit-codes`.
    """
    from p88backup import log as logsetup
    from p88backup.cli.app import App

    logsetup.configure(log_format, verbose)
    app = App(config_file=config_file, verbose=verbose)
    if isinstance(ctx.obj, Invocation):  # run() is watching: tell it what runs, for the job metrics
        ctx.obj.app, ctx.obj.command = app, ctx.invoked_subcommand
    ctx.obj = app
    ctx.call_on_close(app.close)


@cli.command("exit-codes")
def exit_codes() -> None:
    """List p88backup's exit codes (for scripts and alerts)."""
    for code in ExitCode:
        click.echo(f"{code.value:4d}  {code.name.lower().replace('_', '-'):24} {EXIT_CODE_HELP[code]}")


COMMANDS["exit-codes"] = "p88backup.cli.main:exit_codes"


# Commands whose runs are jobs: each run sets p88backup_last_success_timestamp_seconds{job=...} & co.
# (the job label is the command's name). Others (list, status, config...) only write what they measured.
JOBS = frozenset({"dump", "basebackup", "verify", "expire", "wal-verify", "drill", "reindex", "restore"})


@dataclass
class Invocation:
    """What run() learns from the CLI root about the command it ran (for the metrics)."""

    app: App | None = None
    command: str | None = None
    usage_error: bool = False
    """Click refused the command line: the job did not run (its exit status 2 says so)."""


def run(argv: list[str] | None = None, prog_name: str = "p88backup") -> int:
    """Run the CLI and return the exit status. The one exception-to-exit mapping.

    Then, when ``metrics_textfile`` is set, record a job's outcome and merge
    what the command measured into that file (see :mod:`p88backup.metrics`).
    """
    invocation = Invocation()
    started = time.monotonic()
    status: int = ExitCode.ERROR  # an unexpected exception propagates: the job failed
    try:
        status = _run(argv, prog_name, invocation)
    finally:
        _write_metrics(invocation, status, time.monotonic() - started)
    return status


def _run(argv: list[str] | None, prog_name: str, invocation: Invocation) -> int:
    try:
        cli.main(args=argv, prog_name=prog_name, standalone_mode=False, obj=invocation)
        return ExitCode.OK
    except P88Error as exc:
        report_error(exc)
        return int(exc.exit_code)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.ClickException as exc:
        invocation.usage_error = isinstance(exc, click.UsageError)
        exc.show()
        return int(exc.exit_code)
    except click.exceptions.Abort as exc:
        if isinstance(exc.__cause__, KeyboardInterrupt):
            # Click turns SIGINT's KeyboardInterrupt into Abort even outside standalone mode.
            click.echo("Interrupted.", err=True)
            return ExitCode.INTERRUPTED
        click.echo("Aborted.", err=True)
        return ExitCode.ERROR
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        return ExitCode.INTERRUPTED
    except BrokenPipeError:
        # stdout closed early (e.g. `| head`): not an error worth a traceback.
        sys.stderr.close()
        return ExitCode.OK
    except Exception as exc:
        if not type(exc).__module__.startswith("psycopg"):
            raise
        # A database error no service translated: still one line, exit 13.
        from p88backup.errors import DatabaseError
        from p88backup.pg.conn import first_line

        report_error(DatabaseError(f"PostgreSQL error: {first_line(exc)}"))
        return ExitCode.DATABASE


def _metrics_textfile(app: App) -> Path | None:
    try:
        return app.settings.metrics_textfile
    except P88Error:
        # Broken settings fail the job (exit 3); the environment may still say where that is recorded.
        raw = os.environ.get("P88_METRICS_TEXTFILE", "").strip()
        return Path(raw) if raw else None


def _write_metrics(invocation: Invocation, status: int, seconds: float) -> None:
    """Record the job and write the textfile; never changes the exit status (a failure is logged)."""
    app, command = invocation.app, invocation.command
    if app is None or command is None or not app.started or invocation.usage_error:
        return  # no command ran: --help (Click answers it before the command starts), a bad command line
    path = _metrics_textfile(app)
    if path is None:
        return
    from p88backup import metrics

    if command in JOBS:
        ok = status == ExitCode.OK
        metrics.job_finished(command, ok=ok, seconds=seconds, stored_bytes=app.stored_bytes if ok else None)
    if not metrics.pending():
        return
    try:
        metrics.write_textfile(path)
    except (OSError, ValueError) as exc:  # TimeoutError is an OSError
        log.error(
            "cannot write the metrics textfile",
            extra={"p88": {"path": str(path), "error": str(exc), "command": command}},
        )


def main() -> None:
    sys.exit(run())
