"""``basebackup``: pg_basebackup (tar, no WAL) streamed into storage.

::

    pg_basebackup -D - -Ft -X none | tar walker (backup_label, backup_manifest)
                                   | zstd [| age] | sha256 -> basebackups/<id>/base.tar.zst

WAL is not in the tar: recovery reads it from the archive (``wal-push`` or
``wal-stream``). So a base backup is marked complete - its manifest written -
only once every WAL segment from its start to its end is in the archive
(DESIGN §3.1). The backup's own ``backup_manifest`` is also stored on its
own, for ``verify`` and for checking a restored data directory.

Every wait is bounded (DESIGN §3.13): before the backup a forced segment
switch proves WAL reaches the archive, and while pg_basebackup runs the
server's own wait for WAL archiving is watched and cut off after
``wal_timeout`` (:mod:`p88backup.core.pitr.archivecheck`).

The stop time and the transaction snapshot recorded in the manifest are
read from the server *after* the backup ended, so they are never earlier
than its consistency point: the PITR planner uses them to pick a base
backup that a time or xid target can be reached from.
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

from p88backup.catalog import layout
from p88backup.catalog.backups import Catalog, PendingBackup
from p88backup.catalog.models import BaseBackupManifest, manifest_fields
from p88backup.core.pitr.archivecheck import ArchiverState, BackupWatch, check_archiving
from p88backup.core.pitr.backup_manifest import parse_backup_label, parse_backup_manifest
from p88backup.core.pitr.tarwalk import CaptureMembers, TarWalker
from p88backup.core.wal import names as walnames
from p88backup.core.wal.archive import WalArchive
from p88backup.errors import ArchivingError, PgToolError
from p88backup.pg.conn import ConnInfo, ServerInfo, server_info
from p88backup.pg.proc import ToolOutput, ToolProcess
from p88backup.pg.tools import client_for
from p88backup.storage import Storage
from p88backup.stream import Codec

log = logging.getLogger(__name__)
_ARCHIVE_HINT = "check archive_command (p88backup wal-push %p) or that p88backup wal-stream is running"


@dataclass
class BaseBackupOptions:
    wal_timeout: float = 600.0
    pg_bin_dir: Path | None = None
    checkpoint: str = "fast"
    archive_check: bool = True  # prove WAL reaches the archive before the backup starts


def needed_segments(
    start_segment: str, end_timeline: int, end_lsn: int, segment_size: int = walnames.DEFAULT_SEGMENT_SIZE
) -> list[str]:
    """Every WAL segment from the backup's start through the one holding its end."""
    start_tli, start_segno = walnames.parse_segment_name(start_segment, segment_size)
    # end_lsn is exclusive: the record ending there lies in the segment holding end_lsn - 1.
    last = walnames.segment_for_lsn(end_timeline, max(end_lsn - 1, 0), segment_size)
    if start_tli == end_timeline:
        return list(walnames.segment_range(start_segment, last, segment_size))
    return [start_segment, last]  # a timeline switch during the backup (taken on a standby)


class BaseBackupRunner:
    def __init__(
        self,
        ci: ConnInfo,
        storage: Storage,
        codec: Codec,
        options: BaseBackupOptions,
        *,
        progress: Callable[[int], None] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ci, self.storage, self.codec, self.opt = ci, storage, codec, options
        self.progress, self.clock, self.sleep = progress, clock, sleep
        self.catalog = Catalog(storage)
        self.archive = WalArchive(storage, codec)
        self._pending: PendingBackup  # set by run()
        self._segment_size = walnames.DEFAULT_SEGMENT_SIZE

    def run(self) -> BaseBackupManifest:
        started = self.clock()
        with self.ci.connect() as conn:
            info = server_info(conn)
            wal_level = conn.execute("SHOW wal_level").fetchone()[0]
            # In bytes since PostgreSQL 11; fixed at initdb (1 MB to 1 GB).
            self._segment_size = int(
                conn.execute("SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'").fetchone()[0]
            )
        if wal_level == "minimal":
            raise PgToolError("wal_level is minimal: base backups and PITR need wal_level = replica (or logical)")
        tool = client_for("pg_basebackup", info.major, self.opt.pg_bin_dir)
        if self.opt.archive_check:
            check_archiving(self.ci, self.archive, self.opt.wal_timeout, sleep=self.sleep)
        bid = layout.backup_id(started, self.catalog.taken_ids("basebackup"))
        log.info("base backup started", extra={"p88": {"id": bid, "server": info.version, "storage": self.storage.url}})
        self._pending = self.catalog.pending("basebackup", bid)
        with self._pending:
            return self._run(bid, tool.path, tool.version, info, started)

    def _run(
        self, bid: str, pg_basebackup: Path, tool_version: str, info: ServerInfo, started: datetime
    ) -> BaseBackupManifest:
        capture = CaptureMembers({"backup_label", "backup_manifest"})
        walker = TarWalker(capture)
        # Its own application_name, so that the archive watch finds this backup's server process.
        app = f"p88backup basebackup {bid}"
        ci = replace(self.ci, params={**self.ci.params, "application_name": app})
        argv = [
            str(pg_basebackup),
            "--no-password",
            f"--dbname={ci.dsn()}",
            "--pgdata=-",
            "--format=tar",
            "--wal-method=none",
            f"--checkpoint={self.opt.checkpoint}",
            f"--label=p88backup {bid}",
        ]
        key = layout.base_tar_key(bid, self.codec.suffix)
        with (
            ToolProcess(argv, env=self.ci.env(), what="pg_basebackup") as proc,
            BackupWatch(self.ci, app, self.opt.wal_timeout, proc.kill) as watch,
        ):
            out = ToolOutput(proc, progress=self.progress, tee=walker.feed, on_end=walker.finish)
            try:
                base = self._pending.store(key, out, self.codec)
            except PgToolError:
                if watch.failure:  # we stopped pg_basebackup: say why
                    raise ArchivingError(watch.failure, hint=_ARCHIVE_HINT) from None
                raise
        if "backup_label" not in capture.found or "backup_manifest" not in capture.found:
            raise PgToolError("pg_basebackup output lacks backup_label or backup_manifest (PostgreSQL 13+ needed)")
        label = parse_backup_label(bytes(capture.found["backup_label"]))
        pgman = parse_backup_manifest(bytes(capture.found["backup_manifest"]))
        if any(f.path.startswith("pg_tblspc/") for f in pgman.files.values()):
            raise PgToolError("the cluster has tablespaces; p88backup base backups support the main one only")
        man_key = layout.backup_manifest_key(bid, self.codec.suffix)
        man_obj = self._pending.store(man_key, io.BytesIO(bytes(capture.found["backup_manifest"])), self.codec)
        with self.ci.connect() as conn:
            # After the end, never before it: see the module docstring.
            stop_time, end_snapshot = conn.execute("SELECT clock_timestamp(), pg_current_snapshot()::text").fetchone()
        end_tli, end_lsn = pgman.end_timeline, pgman.end_lsn
        segments = needed_segments(label.start_segment, end_tli, end_lsn, self._segment_size)
        self._wait_for_wal(segments)
        manifest = BaseBackupManifest(
            **manifest_fields(bid, started, self.clock(), info, tool_version, self.codec),
            timeline=label.timeline,
            start_lsn=walnames.format_lsn(label.start_lsn),
            stop_lsn=walnames.format_lsn(end_lsn),
            start_wal=label.start_segment,
            stop_wal=segments[-1],
            start_time=label.start_time,
            stop_time=stop_time,
            data_size=pgman.data_size,
            files=[base],
            backup_manifest=man_obj,
            end_snapshot=end_snapshot,
            wal_segment_size=self._segment_size,
        )
        self._pending.commit(manifest)
        log.info(
            "base backup finished",
            extra={
                "p88": {
                    "id": bid,
                    "start_lsn": manifest.start_lsn,
                    "stop_lsn": manifest.stop_lsn,
                    "timeline": label.timeline,
                    "data_bytes": pgman.data_size,
                    "stored_bytes": base.size,
                    "wal_segments": len(segments),
                }
            },
        )
        return manifest

    def _wait_for_wal(self, segments: list[str]) -> None:
        deadline = time.monotonic() + self.opt.wal_timeout
        missing = list(segments)
        logged = False
        while True:
            missing = [s for s in missing if self.archive.find(s) is None]
            if not missing:
                return
            if time.monotonic() >= deadline:
                why = ""
                try:
                    with self.ci.connect() as conn:
                        why = "; " + ArchiverState.read(conn).describe()
                except Exception as exc:  # the message below is what matters
                    log.debug("cannot read pg_stat_archiver", extra={"p88": {"error": str(exc)}})
                raise ArchivingError(
                    f"the WAL this backup needs ({missing[0]}"
                    + (f" and {len(missing) - 1} more" if len(missing) > 1 else "")
                    + f") did not reach the archive within {self.opt.wal_timeout:.0f}s; the backup is not usable"
                    + why,
                    hint=_ARCHIVE_HINT,
                )
            if not logged:
                log.info("waiting for WAL to be archived", extra={"p88": {"segments": missing}})
                logged = True
            self.sleep(1.0)
