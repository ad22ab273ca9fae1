"""``drill``: restore the latest backups into scratch clusters, check them, report RTO and RPO."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import click

from p88backup.cli import render
from p88backup.cli.app import App, pass_app
from p88backup.cli.backup import wait_option

if TYPE_CHECKING:
    from p88backup.catalog.models import DrillReport

log = logging.getLogger("p88backup")


@click.command("drill")
@click.option(
    "--dump/--no-dump", "dump", default=None, help="Drill the latest dump [default: when the storage has one]."
)
@click.option(
    "--pitr/--no-pitr",
    "pitr",
    default=None,
    help="Drill the latest base backup + WAL [default: when the storage has one].",
)
@click.option("--owner", metavar="USER", help="As root: the user that owns and runs the scratch servers [postgres].")
@click.option("--no-verify", is_flag=True, help="PITR drill: skip pg_verifybackup of the laid-out base backup.")
@click.option(
    "--timeout",
    type=click.FloatRange(1),
    default=3600,
    show_default=True,
    metavar="SECONDS",
    help="PITR drill: how long recovery may take.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON (as stored).")
@wait_option
@pass_app
def drill_cmd(
    app: App,
    dump: bool | None,
    pitr: bool | None,
    owner: str | None,
    no_verify: bool,
    timeout: float,
    as_json: bool,
    wait: float,
) -> None:
    """Prove the backups restore: restore them, check them, measure RTO and RPO.

    The dump drill restores the latest dump (roles first) into a scratch
    cluster of its server's major, compares every table's row count with the
    count recorded at backup time, and runs the [[drill.checks]] SQL checks
    and pg_amcheck (where amcheck is installed). The PITR drill restores the
    latest base backup + WAL (restore --pitr latest) into a scratch data
    directory, starts it, waits for promotion and runs the same checks.

    Scratch clusters live under work_dir, listen on 127.0.0.1 on a port from
    drill.port_range, and are removed afterwards: on success, on failure, on
    SIGTERM/SIGINT (exit 16). Production is only read: its clock (for RPO)
    and its list of databases. RTO = restore start until the checks passed;
    RPO = production's clock minus the newest restored commit.

    The report is stored in the catalog (p88backup list --kind drill). Exit
    11 when a restore or a check failed, naming it and the backup.

    \b
    Examples:
      p88backup drill
      p88backup drill --no-pitr --json
    """
    if dump is False and pitr is False:
        raise click.UsageError("--no-dump and --no-pitr together leave nothing to drill")
    from p88backup.cli.restore import restore_command
    from p88backup.core.drill.checks import CheckSpec
    from p88backup.core.drill.report import failure_message
    from p88backup.core.drill.run import DrillOptions, DrillRunner
    from p88backup.errors import DrillFailedError
    from p88backup.locks import job_lock

    s = app.settings
    options = DrillOptions(
        work_dir=s.work_dir,
        restore_command=restore_command(app),
        dump=dump,
        pitr=pitr,
        checks=[CheckSpec(c.name, c.sql, c.database) for c in s.drill.checks],
        port_range=s.drill.port_range,
        owner=owner,
        pg_bin_dir=s.pg_bin_dir,
        verify=not no_verify,
        timeout=timeout,
        dump_jobs=s.dump.jobs,
    )
    source = app.conninfo if s.database_url else None
    with job_lock(s.lock_dir, "drill", wait=wait):
        report = DrillRunner(app.storage, app.codec, options, source=source).run()
    if as_json:
        render.emit_json(report.model_dump(mode="json"))
    else:
        show(report)
    problem = failure_message(report)
    if problem:
        raise DrillFailedError(problem, hint=f"p88backup list --kind drill --json shows report {report.id}")


def show(report: DrillReport) -> None:
    """A drill report, for a person."""
    render.table(
        f"drill {report.id}: {'passed' if report.ok else 'FAILED'}",
        ["drill", "backup", "result", "RTO", "RPO", "restore", "checks", "overhead"],
        [
            (
                r.kind,
                r.backup_id,
                "passed" if r.ok else "FAILED",
                render.human_duration(r.rto_seconds),
                render.human_duration(r.rpo_seconds),
                render.human_duration(r.restore_seconds),
                f"{sum(c.status == 'passed' for c in r.checks)}/{len(r.checks)} passed",
                render.human_duration(r.setup_seconds + r.cleanup_seconds + r.amcheck_seconds),
            )
            for r in report.drills
        ],
    )
    for r in report.drills:
        if r.error:
            click.echo(f"{r.kind}: restore failed: {r.error}")
        for c in r.checks:
            if c.status != "passed":
                where = f" in {c.database}" if c.database else ""
                click.echo(f"{r.kind}: {c.status} {c.kind} check {c.name!r}{where}: {c.detail}")
    if report.source.clock != "production":
        click.echo(f"note: RPO measured against this host's clock ({report.source.note})")
