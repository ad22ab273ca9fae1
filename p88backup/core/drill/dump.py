"""The dump drill: the latest dump restored into a fresh scratch cluster of its server's major,
then checked (row counts recorded at backup time, SQL checks, pg_amcheck).

The restore is :class:`~p88backup.core.logical.restore.DumpRestorer`, the one
``restore --dump`` uses, pointed at the scratch cluster: globals first, then
each database under its own name (the copy is alone on its server, so the
SQL checks name databases as production does).
"""

from __future__ import annotations

import logging
import time
from datetime import datetime

from p88backup.catalog.models import DrillCheckResult, DrillRun, DumpManifest
from p88backup.core.drill.checks import checks_after_restore, row_count_check
from p88backup.core.drill.context import DrillContext, restore_failure
from p88backup.core.drill.report import rpo_seconds, rto_seconds, run_ok
from p88backup.core.drill.scratch import ScratchCluster, make_private_dir
from p88backup.core.logical.restore import DumpRestorer, RestoreOptions

log = logging.getLogger(__name__)


def restored_size(manifest: DumpManifest) -> int:
    """Bytes the restored databases will take: their size on the source when recorded, else the
    archives' raw size; a directory-format dump is also staged (decoded) before pg_restore reads it."""
    total = 0
    for db in manifest.databases:
        raw = sum(o.raw_size or o.size for o in db.objects)
        total += max(db.size, raw)
        if db.format == "directory":
            total += raw
    return total


def diagnose(ctx: DrillContext, manifest: DumpManifest) -> str:
    """After a failed restore: the dump's stored objects that fail ``verify`` (size, SHA-256, decoding), as
    text to append to the cause, so the report names the damaged object and not only the symptom."""
    from p88backup.core.logical.verify import Verifier
    from p88backup.errors import P88Error

    try:
        report = Verifier(ctx.storage, ctx.codec, ctx.pg_bin_dir, full=True).verify(manifest)
    except P88Error as exc:
        log.warning("drill: could not verify the dump after its restore failed", extra={"p88": {"error": str(exc)}})
        return ""
    if report.ok:
        return " (every stored object of the dump verifies: size, SHA-256, decoding)"
    return "; verify: " + "; ".join(f.problem or f.key for f in report.failures)


def drill_dump(ctx: DrillContext, manifest: DumpManifest, *, jobs: int = 1) -> DrillRun:
    """Restore ``manifest`` into a scratch cluster and check it; the cluster is gone when this returns.

    A cluster that cannot be made or started (initdb fails, the port was taken
    again after a retry) fails this drill like a failed restore: recorded with
    its cause, the other drill still runs.
    """
    major = manifest.server_version_num // 10000
    base = ctx.scratch / "dump"
    t_setup = time.monotonic()
    port = ctx.port()
    make_private_dir(base, ctx.owner)
    cleanup: list[float] = []
    error: str | None = None
    checks: list[DrillCheckResult] = []
    restored: list[str] = []
    restore_s: float | None = None
    setup_s = checks_s = amcheck_s = 0.0
    passed_at: float | None = None
    source_now: datetime | None = None
    t0 = time.monotonic()
    with ctx.removed_afterwards(base, cleanup):
        try:
            cluster = ScratchCluster(base, major=major, port=port, owner=ctx.owner, pg_bin_dir=ctx.pg_bin_dir)
            cluster.create()
            ctx.start_scratch(cluster)
            port = cluster.port
            setup_s = time.monotonic() - t_setup
        except Exception as exc:
            setup_s = time.monotonic() - t_setup
            error = restore_failure(exc)
            log.error(
                "drill: the scratch cluster could not be made", extra={"p88": {"id": manifest.id, "error": error}}
            )
        else:
            ci = cluster.conninfo()
            source_now = ctx.source.now()
            log.info("drill: restoring dump", extra={"p88": {"id": manifest.id, "port": port, "major": major}})
            t0 = time.monotonic()
            try:
                for i, db in enumerate(manifest.databases):
                    options = RestoreOptions(
                        target_db=db.name,
                        source_db=db.name,
                        jobs=jobs if db.format == "directory" else 1,
                        globals=i == 0,  # roles once, before the first database that needs them
                        check_counts=False,  # counted below, as a named check of the report
                        work_dir=base,
                        pg_bin_dir=ctx.pg_bin_dir,
                    )
                    DumpRestorer(ci, ctx.storage, ctx.codec, options).run(manifest)
                    restored.append(db.name)
                restore_s = time.monotonic() - t0
                wanted = ctx.source_ci.dbname if ctx.source_ci is not None else None
                default_db = wanted if wanted in restored else restored[0]
                counts = [row_count_check(ci, db) for db in manifest.databases]
                done = checks_after_restore(
                    ci, counts, ctx.checks, default_db, restored, major, ctx.pg_bin_dir, t0 + restore_s
                )
                checks += done.checks
                passed_at, checks_s, amcheck_s = done.passed_at, done.checks_seconds, done.amcheck_seconds
            except Exception as exc:
                error = restore_failure(exc)
                if restore_s is None:  # the restore itself failed: say which stored object is at fault, if one is
                    error += diagnose(ctx, manifest)
                log.error("drill: dump restore failed", extra={"p88": {"id": manifest.id, "error": error}})
    if source_now is None:  # no restore started: the clock reading of the failure
        source_now = ctx.source.now()
    run = DrillRun(
        kind="dump",
        backup_id=manifest.id,
        ok=False,
        error=error,
        server_major=major,
        port=port,
        databases=restored,
        source_now=source_now,
        newest_restorable=manifest.snapshot_time,
        newest_restorable_basis="the dump's snapshot (pg_dump's consistent view of the source)",
        rto_seconds=rto_seconds(t0, passed_at if error is None else None),
        rpo_seconds=rpo_seconds(source_now, manifest.snapshot_time) if error is None else None,
        restore_seconds=None if restore_s is None else round(restore_s, 3),
        checks_seconds=round(checks_s, 3),
        amcheck_seconds=round(amcheck_s, 3),
        setup_seconds=round(setup_s, 3),
        cleanup_seconds=round(sum(cleanup), 3),
        checks=checks,
    )
    run.ok = run_ok(run)
    return run
