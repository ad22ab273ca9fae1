"""``list`` and ``status``: what is stored, and whether it still protects anything."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from p88backup.cli import render
from p88backup.cli.app import App, pass_app

FC = TypeVar("FC", bound=Callable[..., Any])


def backup_row(m: object) -> dict[str, object]:
    """The stable ``list --json`` shape of one backup."""
    from p88backup.catalog.models import BaseBackupManifest, DumpManifest

    assert isinstance(m, DumpManifest | BaseBackupManifest)
    row: dict[str, object] = {
        "kind": m.kind,
        "id": m.id,
        "started_at": m.started_at.isoformat(),
        "finished_at": m.finished_at.isoformat(),
        "duration_seconds": round((m.finished_at - m.started_at).total_seconds(), 2),
        "stored_bytes": m.stored_bytes,
        "raw_bytes": sum(o.raw_size or 0 for o in m.objects),
        "encrypted": m.encoding.encryption is not None,
        "server_version": m.server_version,
    }
    if isinstance(m, DumpManifest):
        row["databases"] = [d.name for d in m.databases]
        row["snapshot_time"] = m.snapshot_time.isoformat()
    else:
        row.update(
            timeline=m.timeline,
            start_lsn=m.start_lsn,
            stop_lsn=m.stop_lsn,
            start_wal=m.start_wal,
            stop_time=m.stop_time.isoformat(),
        )
    return row


@click.command("list")
@click.option(
    "--kind",
    type=click.Choice(["dump", "basebackup", "all", "drill"]),
    default="all",
    show_default=True,
    help="all = every backup (dumps and base backups); drill = the stored restore drill reports.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (stable interface).")
@pass_app
def list_cmd(app: App, kind: str, as_json: bool) -> None:
    """List complete backups, oldest first. Incomplete runs are never listed.

    With --kind drill: the restore drill reports, oldest first (--json: each
    report as stored, with its RTO, RPO and checks per drill).
    """
    from p88backup.catalog.backups import Catalog
    from p88backup.catalog.models import DumpManifest

    if kind == "drill":
        _list_drills(app, as_json)
        return
    catalog = Catalog(app.storage)
    kinds = ["dump", "basebackup"] if kind == "all" else [kind]
    manifests = [m for k in kinds for m in catalog.manifests(k)]  # type: ignore[arg-type]
    if as_json:
        render.emit_json([backup_row(m) for m in manifests])
        return
    if not manifests:
        click.echo(f"no backups in {app.storage.url}")
        return
    render.table(
        f"backups in {app.storage.url}",
        ["kind", "id", "finished (UTC)", "took", "what", "stored", "encrypted"],
        [
            (
                m.kind,
                m.id,
                m.finished_at.strftime("%Y-%m-%d %H:%M:%S"),
                render.human_duration((m.finished_at - m.started_at).total_seconds()),
                ", ".join(d.name for d in m.databases)
                if isinstance(m, DumpManifest)
                else f"timeline {m.timeline} from {m.start_lsn}",
                render.human_bytes(m.stored_bytes),
                "yes" if m.encoding.encryption else "no",
            )
            for m in manifests
        ],
    )


def _list_drills(app: App, as_json: bool) -> None:
    """``list --kind drill``: a drill row is the stored report itself (its own fields, not a backup's)."""
    from p88backup.catalog.backups import Catalog
    from p88backup.catalog.models import DrillReport

    reports = Catalog(app.storage).drills()
    if as_json:
        render.emit_json([r.model_dump(mode="json") for r in reports])
        return
    if not reports:
        click.echo(f"no drill reports in {app.storage.url}")
        return

    def figures(r: DrillReport, kind: str) -> str:
        run = next((d for d in r.drills if d.kind == kind), None)
        if run is None:
            return "-"
        if not run.ok:
            return "FAILED"
        return f"{render.human_duration(run.rto_seconds)} / {render.human_duration(run.rpo_seconds)}"

    render.table(
        f"drill reports in {app.storage.url}",
        ["id", "finished (UTC)", "result", "dump RTO / RPO", "pitr RTO / RPO", "backups"],
        [
            (
                r.id,
                r.finished_at.strftime("%Y-%m-%d %H:%M:%S"),
                "passed" if r.ok else "FAILED",
                figures(r, "dump"),
                figures(r, "pitr"),
                ", ".join(f"{d.kind} {d.backup_id}" for d in r.drills),
            )
            for r in reports
        ],
    )


def _duration_option(name: str, what: str) -> Callable[[FC], FC]:
    return click.option(
        f"--max-{name.replace('_', '-')}-age",
        f"max_{name}_age",
        metavar="DURATION",
        default=None,
        callback=_parse_duration,
        help=f"Unhealthy when {what} is older than this (15m, 26h, 8d, 1d12h) [default: status.max_{name}_age].",
    )


def _parse_duration(ctx: click.Context, param: click.Parameter, value: str | None) -> float | None:
    from p88backup.times import TimeFormatError, parse_duration

    if value is None:
        return None
    try:
        return parse_duration(value).total_seconds()
    except TimeFormatError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (stable interface).")
@_duration_option("dump", "the newest dump")
@_duration_option("basebackup", "the newest base backup")
@_duration_option("wal", "the newest archived WAL while the server has written more")
@_duration_option("drill", "the newest drill report")
@click.option(
    "--component",
    type=click.Choice(["wal-stream"]),
    help="Judge one running component instead (for a container healthcheck): exit 0 if healthy, "
    "17 with one line saying why if not.",
)
@click.option(
    "--spool",
    type=click.Path(file_okay=False, path_type=Path),
    help="(--component wal-stream) the streamer's spool (default: work_dir/wal-spool).",
)
@click.option(
    "--max-age",
    type=click.FloatRange(1),
    default=None,
    help="(--component wal-stream) seconds without progress (archive caught up with the server) "
    "that count as unhealthy [default: 120].",
)
@pass_app
def status_cmd(
    app: App,
    as_json: bool,
    max_dump_age: float | None,
    max_basebackup_age: float | None,
    max_wal_age: float | None,
    max_drill_age: float | None,
    component: str | None,
    spool: Path | None,
    max_age: float | None,
) -> None:
    """Are we still protected? The newest dump, base backup, archived WAL and drill, judged.

    Exits 18 (unhealthy), naming each failed check and by how much, when the
    newest dump, base backup or drill report is older than its threshold
    (--max-*-age, else [status] in the config; unset: not checked), the last
    drill failed, or archiving has stopped: no WAL archived within
    --max-wal-age while the server wrote at least one more segment. A quiet
    server that wrote nothing is healthy; telling the two apart needs the
    server's WAL position (P88_DATABASE_URL), without which the WAL age alone
    decides, and the output says so.

    With --component wal-stream: is the WAL streamer archiving? Healthy means
    running, connected to PostgreSQL and, within --max-age, caught up with
    the server's WAL position; a streamer that is alive but failing is not.
    """
    if component is not None:
        _component_status(app, spool, max_age, as_json)
        return
    from p88backup import metrics
    from p88backup.catalog.backups import Catalog
    from p88backup.core.status import collect, limits
    from p88backup.core.wal.archive import WalArchive
    from p88backup.errors import UnhealthyError

    s = app.settings
    thresholds = limits(
        s.status,
        max_dump_age=max_dump_age,
        max_basebackup_age=max_basebackup_age,
        max_wal_age=max_wal_age,
        max_drill_age=max_drill_age,
    )
    try:
        report = collect(
            Catalog(app.storage),
            WalArchive(app.storage, app.codec),
            now=datetime.now(UTC),
            limits=thresholds,
            conninfo=app.conninfo if s.database_url else None,
        )
    except Exception:
        # On a cron host the textfile is where alerts look: a check that could not be made says
        # so there, instead of leaving the last good figures in place.
        metrics.status_check_failed()
        metrics.verdict(False)
        raise
    metrics.status_report(report)
    metrics.verdict(report.healthy)
    if as_json:
        render.emit_json(report.as_dict())
    else:
        _print_status(report.as_dict())
    failures = report.verdict.failures
    if failures:
        raise UnhealthyError(
            f"unhealthy: {len(failures)} of {len(report.verdict.checks)} checks failed: "
            + "; ".join(f"{c.name}: {c.reason}" for c in failures)
        )


def _print_status(data: dict[str, Any]) -> None:
    click.echo(f"storage: {data['storage']}")
    for section in ("dumps", "basebackups", "drills"):
        d = data[section]
        if d["count"]:
            passed = "" if section != "drills" else (", passed" if d["latest_ok"] else ", FAILED")
            click.echo(
                f"{section}: {d['count']}, newest {d['latest_id']} "
                f"({render.human_duration(d['latest_age_seconds'])} ago{passed})"
            )
        else:
            click.echo(f"{section}: none")
    wal = data["wal"]
    if wal["files"]:
        line = (
            f"wal: {wal['files']} files, last archived "
            f"{render.human_duration(wal['newest_age_seconds'] or 0)} ago, newest segment {wal['newest_segment']}"
        )
        if wal["server_lsn"] is not None:
            line += (
                f"; server at {wal['server_lsn']}, {wal['lag_segments']} finished segment(s) "
                f"({render.human_bytes(wal['lag_bytes'])}) not archived"
            )
        else:
            line += f"; server position unknown ({wal['server_error']})"
        click.echo(line)
    else:
        click.echo("wal: none archived")
    for c in data["checks"]:
        click.echo(f"{'ok  ' if c['ok'] else 'FAIL'}  {c['name']:15} {c['reason']}")
    click.echo("healthy" if data["healthy"] else "UNHEALTHY")


def _component_status(app: App, spool: Path | None, max_age: float | None, as_json: bool) -> None:
    """``status --component wal-stream``: read the streamer's status file, judge it, exit 17 if unhealthy.

    17 (WAL not reaching the archive) is exactly what this one verdict finds, and what every
    other command that finds it exits with; 18 is for the catalog-wide thresholds. A
    healthcheck reads only zero or non-zero."""
    import time

    from p88backup.core.wal.streamhealth import DEFAULT_MAX_AGE, default_spool, judge, read_status
    from p88backup.errors import ArchivingError

    where = spool or default_spool(app.settings.work_dir)
    doc = read_status(where)
    verdict = judge(doc, now=time.time(), max_age=DEFAULT_MAX_AGE if max_age is None else max_age)
    if as_json:
        render.emit_json(
            {
                "component": "wal-stream",
                "spool": str(where),
                "healthy": verdict.healthy,
                "reason": verdict.reason,
                "status": doc,
            }
        )
    else:
        click.echo(f"wal-stream: {'healthy' if verdict.healthy else 'UNHEALTHY'}: {verdict.reason}")
    if not verdict.healthy:
        raise ArchivingError(f"wal-stream is unhealthy: {verdict.reason}")
