"""The PITR drill: ``restore --pitr latest`` of the latest base backup + WAL into a scratch data
directory, started on a scratch port, promoted, then checked (SQL checks, pg_amcheck).

The restore is :class:`~p88backup.core.pitr.restore.PitrRestorer`, exactly as
``restore --pitr latest --start`` runs it: it plans, proves the WAL complete,
lays out and verifies the files, replays the archive and waits for promotion.
The copy runs with ``archive_mode = off`` (it never archives into production's
archive) and without logical replication workers, so subscriptions in the
copied databases never connect to their publishers. Its pg_hba.conf and roles
are production's, so the drill connects as ``database_url``'s user.
"""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime
from pathlib import Path

from p88backup.catalog.backups import Catalog
from p88backup.catalog.models import BaseBackupManifest, DrillCheckResult, DrillRun
from p88backup.core.drill.checks import checks_after_restore, databases_of
from p88backup.core.drill.context import DrillContext, restore_failure
from p88backup.core.drill.report import rpo_seconds, rto_seconds, run_ok
from p88backup.core.drill.scratch import make_private_dir, remove_tree
from p88backup.core.pitr.plan import Target
from p88backup.core.pitr.restore import PitrOptions, PitrRestorer, PitrResult
from p88backup.errors import P88Error
from p88backup.pg.conn import ConnInfo

log = logging.getLogger(__name__)

# The copy must not act on anyone else: no subscription apply workers (archive_mode is off already).
COPY_SETTINGS = {"max_logical_replication_workers": "0"}


def restored_size(backup: BaseBackupManifest) -> int:
    """Bytes the laid-out data directory takes (the manifest's data size, else the tar's raw size)."""
    return backup.data_size or sum(o.raw_size or o.size for o in backup.files)


def copy_conninfo(source: ConnInfo | None, port: int) -> ConnInfo:
    """Production's user and credentials, pointed at the copy (as the restorer's own wait does)."""
    base = source or ConnInfo({"user": "postgres"})
    params = {k: v for k, v in base.params.items() if k not in ("hostaddr", "service")}
    return ConnInfo({**params, "host": "localhost", "port": str(port)}, base.password, base.secrets)


def drill_pitr(
    ctx: DrillContext,
    newest: BaseBackupManifest,
    *,
    restore_command: str,
    verify: bool = True,
    timeout: float = 3600.0,
) -> DrillRun:
    """``restore --pitr latest`` into a scratch directory and check the promoted copy; gone when this returns."""
    base = ctx.scratch / "pitr"
    target_dir = base / "data"
    t_setup = time.monotonic()
    port = ctx.port()
    make_private_dir(base, ctx.owner)
    setup_s = time.monotonic() - t_setup
    cleanup: list[float] = []
    backup_id, major = newest.id, newest.server_version_num // 10000
    error: str | None = None
    checks: list[DrillCheckResult] = []
    databases: list[str] = []
    restore_s: float | None = None
    checks_s = amcheck_s = 0.0
    passed_at: float | None = None
    newest_commit: datetime | None = None
    basis = ""
    lsn: str | None = None
    timeline: int | None = None
    with ctx.removed_afterwards(base, cleanup):

        def restore(port: int) -> PitrResult:
            options = PitrOptions(
                target=Target("latest"),
                target_dir=target_dir,
                restore_command=restore_command,
                start=True,
                port=port,
                port_chosen=True,
                owner=ctx.owner,
                archive_mode=False,
                verify=verify,
                settings=dict(COPY_SETTINGS),
                timeout=timeout,
                pg_bin_dir=ctx.pg_bin_dir,
                server_env=dict(os.environ),
            )
            return PitrRestorer(ctx.storage, ctx.codec, options, conninfo=ctx.source_ci).run()

        source_now = ctx.source.now()
        log.info("drill: restoring base backup + WAL", extra={"p88": {"newest": newest.id, "port": port}})
        t0 = time.monotonic()
        try:
            try:
                result = restore(port)
            except P88Error as exc:
                if not ctx.port_taken(port, target_dir):
                    raise
                # Another program bound the port between our pick and the server's start. The layout
                # is redone from the start (the restorer owns it), so this attempt's time is not counted.
                taken, port = port, ctx.port()
                log.warning(
                    "drill: the scratch port was taken before the server could listen on it: restoring again",
                    extra={"p88": {"port": taken, "next_port": port, "error": str(exc)}},
                )
                with ctx.interrupts.shield():
                    remove_tree(base, ctx.pg_bin_dir)
                make_private_dir(base, ctx.owner)
                source_now = ctx.source.now()
                t0 = time.monotonic()
                result = restore(port)
            restore_s = time.monotonic() - t0
            backup_id, lsn, timeline = result.backup_id, result.lsn, result.timeline
            major = _major(target_dir, major)
            if result.last_replayed_transaction:
                newest_commit = datetime.fromisoformat(result.last_replayed_transaction)
                basis = "the last commit replayed from the archive (pg_last_xact_replay_timestamp)"
            else:
                used = Catalog(ctx.storage).read("basebackup", result.backup_id)
                assert isinstance(used, BaseBackupManifest)
                newest_commit = used.stop_time
                basis = "the end of the base backup (no commit was replayed after it)"
            ci = copy_conninfo(ctx.source_ci, port)
            databases = databases_of(ci)
            default_db = ctx.source_ci.dbname if ctx.source_ci is not None else "postgres"
            done = checks_after_restore(
                ci, [], ctx.checks, default_db, databases, major, ctx.pg_bin_dir, t0 + restore_s
            )
            checks += done.checks
            passed_at, checks_s, amcheck_s = done.passed_at, done.checks_seconds, done.amcheck_seconds
        except Exception as exc:
            error = restore_failure(exc)
            log.error("drill: point-in-time restore failed", extra={"p88": {"id": backup_id, "error": error}})
    run = DrillRun(
        kind="pitr",
        backup_id=backup_id,
        ok=False,
        error=error,
        server_major=major,
        port=port,
        databases=databases,
        source_now=source_now,
        newest_restorable=newest_commit,
        newest_restorable_basis=basis,
        rto_seconds=rto_seconds(t0, passed_at if error is None else None),
        rpo_seconds=rpo_seconds(source_now, newest_commit) if error is None else None,
        restore_seconds=None if restore_s is None else round(restore_s, 3),
        checks_seconds=round(checks_s, 3),
        amcheck_seconds=round(amcheck_s, 3),
        setup_seconds=round(setup_s, 3),
        cleanup_seconds=round(sum(cleanup), 3),
        lsn=lsn,
        timeline=timeline,
        checks=checks,
    )
    run.ok = run_ok(run)
    return run


def _major(datadir: Path, fallback: int) -> int:
    try:
        return int((datadir / "PG_VERSION").read_text().strip())
    except (OSError, ValueError):
        return fallback
