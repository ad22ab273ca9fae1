"""``list`` and ``status``: what is stored, and how old the newest of each is."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import click

from p88backup.cli import render
from p88backup.cli.app import App, pass_app


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
@click.option("--kind", type=click.Choice(["dump", "basebackup", "all"]), default="all", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array (stable interface).")
@pass_app
def list_cmd(app: App, kind: str, as_json: bool) -> None:
    """List complete backups, oldest first. Incomplete runs are never listed."""
    from p88backup.catalog.backups import Catalog
    from p88backup.catalog.models import DumpManifest

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


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (stable interface).")
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
def status_cmd(app: App, as_json: bool, component: str | None, spool: Path | None, max_age: float | None) -> None:
    """How recoverable are we right now: newest backup of each kind and its age.

    With --component wal-stream: is the WAL streamer archiving? Healthy means
    running, connected to PostgreSQL and, within --max-age, caught up with
    the server's WAL position; a streamer that is alive but failing is not.
    """
    if component is not None:
        _component_status(app, spool, max_age, as_json)
        return
    from p88backup.catalog.backups import Catalog
    from p88backup.catalog.layout import Kind

    now = datetime.now(UTC)
    catalog = Catalog(app.storage)
    data: dict[str, object] = {"storage": app.storage.url, "checked_at": now.isoformat()}
    kinds: tuple[Kind, ...] = ("dump", "basebackup")
    for kind in kinds:
        ms = catalog.manifests(kind)
        newest = ms[-1] if ms else None
        data[kind + "s"] = {
            "count": len(ms),
            "latest_id": newest.id if newest else None,
            "latest_finished_at": newest.finished_at.isoformat() if newest else None,
            "latest_age_seconds": round((now - newest.finished_at).total_seconds()) if newest else None,
        }
    if as_json:
        render.emit_json(data)
        return
    click.echo(f"storage: {app.storage.url}")
    for section in ("dumps", "basebackups"):
        d = data[section]
        assert isinstance(d, dict)
        if d["count"]:
            click.echo(
                f"{section}: {d['count']}, newest {d['latest_id']} "
                f"({render.human_duration(d['latest_age_seconds'])} ago)"
            )
        else:
            click.echo(f"{section}: none")


def _component_status(app: App, spool: Path | None, max_age: float | None, as_json: bool) -> None:
    """``status --component wal-stream``: read the streamer's status file, judge it, exit 17 if unhealthy."""
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
