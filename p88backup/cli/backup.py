"""``dump`` and ``verify``."""

from __future__ import annotations

import logging
import time

import click

from p88backup.cli import render
from p88backup.cli.app import App, pass_app
from p88backup.cli.progress import byte_progress

log = logging.getLogger("p88backup")

wait_option = click.option(
    "--wait",
    type=float,
    default=0.0,
    show_default=True,
    metavar="SECONDS",
    help="If the same job is already running, wait this long for it instead of failing (exit 4).",
)


@click.command("dump")
@click.option(
    "--database",
    "databases",
    multiple=True,
    metavar="NAME",
    help="Database to dump (repeatable). Default: dump.databases, else the one in P88_DATABASE_URL.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["custom", "directory"]),
    default=None,
    help="pg_dump format. directory + --jobs dumps big databases in parallel (staged in work_dir).",
)
@click.option("--jobs", type=click.IntRange(1, 64), default=None, help="Parallel jobs (directory format).")
@click.option("--no-globals", is_flag=True, help="Skip pg_dumpall --globals-only (roles, tablespaces).")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@wait_option
@pass_app
def dump_cmd(
    app: App,
    databases: tuple[str, ...],
    fmt: str | None,
    jobs: int | None,
    no_globals: bool,
    as_json: bool,
    wait: float,
) -> None:
    """Take a logical backup: pg_dump of each database plus the globals.

    The dump streams from pg_dump through zstd (and age, when recipients are
    configured) straight into storage, with SHA-256 computed on the way. It
    is listed only once every object is stored and the manifest is written.

    \b
    Examples:
      p88backup dump
      p88backup dump --database p88 --database p88_audit
      p88backup dump --format directory --jobs 4
    """
    from p88backup.core.logical.dump import Dumper, DumpOptions
    from p88backup.locks import job_lock

    s = app.settings
    options = DumpOptions(
        databases=list(databases) or s.dump.databases,
        format=fmt or s.dump.format,  # type: ignore[arg-type]
        jobs=jobs or s.dump.jobs,
        globals=s.dump.globals and not no_globals,
        row_counts=s.dump.row_counts,
        work_dir=s.work_dir,
        pg_bin_dir=s.pg_bin_dir,
    )
    t0 = time.monotonic()
    with job_lock(s.lock_dir, "dump", wait=wait), byte_progress("pg_dump") as progress:
        manifest = Dumper(app.conninfo, app.storage, app.codec, options, progress=progress).run()
    app.stored_bytes = manifest.stored_bytes
    summary = dump_summary(manifest)
    summary["seconds"] = round(time.monotonic() - t0, 2)
    log.info("dump finished", extra={"p88": summary})
    if as_json:
        render.emit_json(summary)
    else:
        raw = sum(o.raw_size or 0 for o in manifest.objects)
        click.echo(
            f"dump {manifest.id}: {', '.join(d.name for d in manifest.databases)} "
            f"({render.human_bytes(raw)} -> {render.human_bytes(manifest.stored_bytes)}, "
            f"{render.human_duration(time.monotonic() - t0)})"
        )


def dump_summary(m: object) -> dict[str, object]:
    from p88backup.catalog.models import DumpManifest

    assert isinstance(m, DumpManifest)
    return {
        "kind": "dump",
        "id": m.id,
        "started_at": m.started_at.isoformat(),
        "finished_at": m.finished_at.isoformat(),
        "databases": [d.name for d in m.databases],
        "raw_bytes": sum(o.raw_size or 0 for o in m.objects),
        "stored_bytes": m.stored_bytes,
        "encrypted": m.encoding.encryption is not None,
        "server_version": m.server_version,
        "globals": m.globals is not None,
    }


@click.command("verify")
@click.argument("backup", default="latest")
@click.option("--kind", type=click.Choice(["dump", "basebackup"]), default="dump", show_default=True)
@click.option(
    "--full",
    is_flag=True,
    help="Require the full check: an encrypted backup on a host without the age identity exits 12"
    " instead of getting the check of its stored bytes.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def verify_cmd(app: App, backup: str, kind: str, full: bool, as_json: bool) -> None:
    """Re-read a stored backup and check it (BACKUP: an id or 'latest').

    Checks every object's size and SHA-256, decodes it fully (zstd checksums,
    age authentication) and has pg_restore read dump archives. Exits 6
    naming each bad object.

    An encrypted backup on a host without the age identity (the database
    server, where the key is not kept) gets the check of its stored bytes:
    size, SHA-256 and the age file structure (header, a stanza per
    recipient, a payload length age can produce). The output says that
    decryption and pg_restore did not run; they run where the key is
    (`verify --full` on the drill host).

    \b
    Examples:
      p88backup verify latest
      p88backup verify --full --kind basebackup 20261124T024500Z
    """
    from p88backup.catalog.backups import Catalog
    from p88backup.core.logical.verify import Verifier
    from p88backup.errors import VerifyError

    manifest = Catalog(app.storage).resolve(kind, backup)  # type: ignore[arg-type]
    report = Verifier(app.storage, app.codec, app.settings.pg_bin_dir, full=full).verify(manifest)
    data = {
        "kind": report.kind,
        "id": report.id,
        "ok": report.ok,
        "check": report.level,
        "not_checked": report.not_checked,
        "objects": [{"key": c.key, "ok": c.ok, "problem": c.problem} for c in report.checks],
    }
    if as_json:
        render.emit_json(data)
    else:
        for c in report.checks:
            click.echo(f"{'ok ' if c.ok else 'BAD'}  {c.key}" + (f"  {c.problem}" if c.problem else ""))
        if report.not_checked:
            click.echo(f"note: size, SHA-256 and age structure checked; {report.not_checked}")
    if not report.ok:
        bad = report.failures
        raise VerifyError(f"{kind} {report.id}: {len(bad)} of {len(report.checks)} objects failed: {bad[0].problem}")
    log.info(
        "verify passed",
        extra={"p88": {"kind": kind, "id": report.id, "objects": len(report.checks), "check": report.level}},
    )


@click.command("basebackup")
@click.option(
    "--wal-timeout",
    type=float,
    default=600,
    show_default=True,
    metavar="SECONDS",
    help="How long to wait for WAL to reach the archive (the check before, the backup's own WAL after).",
)
@click.option(
    "--no-archive-check",
    is_flag=True,
    help="Skip proving, before the backup, that WAL reaches the archive (a forced segment switch).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the manifest summary as JSON.")
@wait_option
@pass_app
def basebackup_cmd(app: App, wal_timeout: float, no_archive_check: bool, as_json: bool, wait: float) -> None:
    """Take a base backup for point-in-time recovery.

    pg_basebackup (tar, without WAL) streams through zstd (and age) into
    storage. The backup is listed only once all the WAL it needs has been
    archived (by archive_command = 'p88backup wal-push %p' or by
    p88backup wal-stream), so every listed base backup is restorable.

    Every wait is bounded by --wal-timeout: first a forced WAL switch must
    reach the archive (archiving works at all), then the server's wait for
    the backup's own WAL. When WAL is not being archived it exits 17 and
    says what the server's archiver reports.
    """
    from p88backup.cli.catalog import backup_row
    from p88backup.core.pitr.basebackup import BaseBackupOptions, BaseBackupRunner
    from p88backup.locks import job_lock

    s = app.settings
    t0 = time.monotonic()
    options = BaseBackupOptions(wal_timeout=wal_timeout, pg_bin_dir=s.pg_bin_dir, archive_check=not no_archive_check)
    with job_lock(s.lock_dir, "basebackup", wait=wait), byte_progress("pg_basebackup") as progress:
        manifest = BaseBackupRunner(app.conninfo, app.storage, app.codec, options, progress=progress).run()
    app.stored_bytes = manifest.stored_bytes
    seconds = round(time.monotonic() - t0, 2)
    summary = backup_row(manifest) | {"seconds": seconds}
    if as_json:
        render.emit_json(summary)
    else:
        click.echo(
            f"base backup {manifest.id}: timeline {manifest.timeline}, {manifest.start_lsn} .. "
            f"{manifest.stop_lsn} ({render.human_bytes(manifest.data_size)} -> "
            f"{render.human_bytes(manifest.stored_bytes)}, {render.human_duration(seconds)})"
        )
