"""Logical backups: pg_dump (+ pg_dumpall --globals-only) streamed into storage.

For each database::

    pg_dump -Fc -Z0 --snapshot=S | sha256/size | zstd [| age] | sha256/size -> storage

The snapshot is exported by our own repeatable-read transaction, so the row
counts recorded in the manifest (for drills and restore checks) are counted
in exactly the data the dump holds. The put reads pg_dump's exit status at
end of stream: a failed or killed pg_dump aborts the put, so no object of a
failed dump is ever stored (DESIGN §3.1, §3.3, §3.5). The manifest is written
last.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from p88backup.catalog import layout
from p88backup.catalog.backups import Catalog, PendingBackup
from p88backup.catalog.models import DatabaseDump, DumpManifest, StoredObject, manifest_fields
from p88backup.errors import DatabaseError, PgToolError
from p88backup.pg.conn import ConnInfo, ServerInfo, first_line, server_info
from p88backup.pg.proc import ToolOutput, ToolProcess
from p88backup.pg.tools import Tool, client_for
from p88backup.storage import Readable, Storage
from p88backup.stream import Codec

log = logging.getLogger(__name__)

Progress = Callable[[int], None]
CUSTOM_MAGIC = b"PGDMP"
GLOBALS_MAGIC = b"--\n-- PostgreSQL database cluster dump"


@dataclass
class DumpOptions:
    databases: list[str] = field(default_factory=list)
    format: Literal["custom", "directory"] = "custom"
    jobs: int = 1
    globals: bool = True
    row_counts: Literal["exact", "estimate", "off"] = "exact"
    work_dir: Path = Path("/tmp/p88backup")
    pg_bin_dir: Path | None = None


_TABLES_SQL = """
SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname), c.reltuples::bigint
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
ORDER BY 1
"""


def count_rows(conn: Any, kind: str) -> dict[str, int]:
    """Rows per table (leaf and inheritance parents counted ``ONLY``)."""
    if kind == "off":
        return {}
    tables = conn.execute(_TABLES_SQL).fetchall()
    if kind == "estimate":
        return {name: max(int(est), 0) for name, est in tables}
    counts: dict[str, int] = {}
    for name, _ in tables:
        counts[name] = int(conn.execute(f"SELECT count(*) FROM ONLY {name}").fetchone()[0])
    return counts


@contextmanager
def exported_snapshot(ci: ConnInfo) -> Iterator[tuple[Any, str, datetime]]:
    """A repeatable-read, read-only transaction and its exported snapshot.

    The transaction stays open for the whole block: pg_dump imports the
    snapshot, and our row counts read the same data.
    """
    conn = ci.connect(autocommit=False)
    try:
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        snap, now = conn.execute("SELECT pg_export_snapshot(), now()").fetchone()
        yield conn, snap, now
    finally:
        try:
            conn.rollback()
        except Exception:  # the server may be gone; the error that matters is already raised
            pass
        finally:
            conn.close()


class Dumper:
    """Runs one ``p88backup dump``: every database, the globals, the manifest."""

    def __init__(
        self,
        ci: ConnInfo,
        storage: Storage,
        codec: Codec,
        options: DumpOptions,
        *,
        progress: Progress | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.ci, self.storage, self.codec, self.opt = ci, storage, codec, options
        self.progress, self.clock = progress, clock
        self.catalog = Catalog(storage)
        self._pending: PendingBackup  # set by run()
        self._warm: threading.Thread | None = None

    def run(self) -> DumpManifest:
        started = self.clock()
        with self.ci.connect() as conn:
            info = server_info(conn)
            names = self.opt.databases or [self.ci.dbname]
            self._check_databases(conn, names)
        pg_dump = client_for("pg_dump", info.major, self.opt.pg_bin_dir)
        bid = layout.backup_id(started, self.catalog.taken_ids("dump"))
        log.info(
            "dump started",
            extra={
                "p88": {
                    "id": bid,
                    "databases": names,
                    "server": info.version,
                    "pg_dump": str(pg_dump.path),
                    "storage": self.storage.url,
                }
            },
        )
        self._pending = self.catalog.pending("dump", bid)
        with self._pending:
            dbs, snapshot_time = [], None
            for name in names:
                db, snap_time = self._dump_database(pg_dump, bid, name)
                dbs.append(db)
                snapshot_time = snapshot_time or snap_time
            glob = self._dump_globals(info, bid) if self.opt.globals else None
            if self._warm is not None:
                self._warm.join()
            manifest = DumpManifest(
                **manifest_fields(bid, started, self.clock(), info, pg_dump.version, self.codec),
                snapshot_time=snapshot_time or started,
                databases=dbs,
                globals=glob,
            )
            self._pending.commit(manifest)
        return manifest

    def _check_databases(self, conn: Any, names: list[str]) -> None:
        existing = {r[0] for r in conn.execute("SELECT datname FROM pg_database").fetchall()}
        missing = [n for n in names if n not in existing]
        if missing:
            raise DatabaseError(f"no such database on {self.ci.describe()}: {', '.join(missing)}")

    def _store(self, key: str, src: Readable) -> StoredObject:
        if self._warm is None:
            # Build the manifest validators while the data streams (C code, GIL mostly free).
            from p88backup.catalog.models import warm_up

            self._warm = threading.Thread(target=warm_up, name="warm-up", daemon=True)
            self._warm.start()
        return self._pending.store(key, src, self.codec)

    def _dump_database(self, pg_dump: Tool, bid: str, name: str) -> tuple[DatabaseDump, datetime]:
        ci = self.ci.with_db(name)
        t0 = time.monotonic()
        with exported_snapshot(ci) as (conn, snap, snap_time):
            counts: dict[str, int] = {}
            facts: list[Any] = []
            errors: list[BaseException] = []

            def counter() -> None:
                try:
                    facts.extend(
                        conn.execute(
                            "SELECT pg_database_size(d.oid), pg_get_userbyid(d.datdba),"
                            " pg_encoding_to_char(d.encoding), d.datcollate, d.datctype"
                            " FROM pg_database d WHERE d.datname = current_database()"
                        ).fetchone()
                    )
                    # One backend, no parallel workers: counting shares the CPUs with the dump.
                    conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
                    counts.update(count_rows(conn, self.opt.row_counts))
                except BaseException as exc:  # reported after the dump
                    errors.append(exc)

            # Facts and counts come from the same snapshot as the dump, beside it; pg_dump
            # starts at once rather than after these queries.
            th = threading.Thread(target=counter, name="row-counts", daemon=True)
            th.start()
            try:
                if self.opt.format == "custom":
                    objects = [self._dump_custom(pg_dump, ci, snap, bid, name)]
                else:
                    objects = self._dump_directory(pg_dump, ci, snap, bid, name)
            except BaseException:
                # Failed or interrupted (SIGINT): the counting query may be waiting on a lock for as
                # long as pg_dump was; cancel it, or the join below waits with it and the run's cleanup
                # (PendingBackup) never comes.
                try:
                    conn.cancel_safe(timeout=10)
                except Exception as exc:
                    log.debug("cannot cancel the row count", extra={"p88": {"error": str(exc)}})
                raise
            finally:
                th.join()
            if errors:
                raise DatabaseError(f"counting rows in {name} failed: {first_line(errors[0])}")
        size, owner, encoding, collate, ctype = facts
        raw = sum(o.raw_size or 0 for o in objects)
        stored = sum(o.size for o in objects)
        log.info(
            "database dumped",
            extra={
                "p88": {
                    "database": name,
                    "raw_bytes": raw,
                    "stored_bytes": stored,
                    "tables": len(counts),
                    "seconds": round(time.monotonic() - t0, 2),
                }
            },
        )
        return DatabaseDump(
            name=name,
            format=self.opt.format,
            objects=objects,
            size=int(size),
            owner=owner,
            encoding=encoding,
            collate=collate,
            ctype=ctype,
            row_counts=counts,
            row_counts_kind=self.opt.row_counts,
        ), snap_time

    def _pg_dump_argv(self, pg_dump: Tool, ci: ConnInfo, snap: str) -> list[str]:
        return [str(pg_dump.path), "--no-password", "--compress=0", f"--snapshot={snap}", f"--dbname={ci.dsn()}"]

    def _dump_custom(self, pg_dump: Tool, ci: ConnInfo, snap: str, bid: str, name: str) -> StoredObject:
        argv = self._pg_dump_argv(pg_dump, ci, snap) + ["--format=custom"]
        with ToolProcess(argv, env=ci.env(), what="pg_dump") as tool:
            out = ToolOutput(tool, magic=CUSTOM_MAGIC, progress=self.progress)
            return self._store(layout.dump_key(bid, name, self.codec.suffix), out)

    def _dump_directory(self, pg_dump: Tool, ci: ConnInfo, snap: str, bid: str, name: str) -> list[StoredObject]:
        staging = self.opt.work_dir / f"dump-{bid}-{layout.db_slug(name)}"
        staging.parent.mkdir(parents=True, exist_ok=True)
        argv = self._pg_dump_argv(pg_dump, ci, snap) + [
            "--format=directory",
            f"--jobs={self.opt.jobs}",
            f"--file={staging}",
        ]
        try:
            # It writes files, not stdout: give it none. An inherited stdout (the scheduler's pipe, when we
            # run as its job) would stay open as long as pg_dump lives, even after we were killed.
            with ToolProcess(argv, env=ci.env(), what="pg_dump", stdout=subprocess.DEVNULL) as tool:
                tool.finish()
            files = sorted(p for p in staging.iterdir() if p.is_file())
            if not any(p.name == "toc.dat" for p in files):
                raise PgToolError("pg_dump wrote no toc.dat: the directory dump is incomplete")

            def upload(path: Path) -> StoredObject:
                with path.open("rb") as fh:
                    obj = self._store(layout.dump_dir_key(bid, name, path.name, self.codec.suffix), fh)
                if self.progress:
                    self.progress(obj.raw_size or 0)
                path.unlink()
                return obj

            with ThreadPoolExecutor(max(1, self.opt.jobs)) as pool:
                return list(pool.map(upload, files))
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _dump_globals(self, info: ServerInfo, bid: str) -> StoredObject:
        pg_dumpall = client_for("pg_dumpall", info.major, self.opt.pg_bin_dir)
        argv = [str(pg_dumpall.path), "--no-password", "--globals-only", f"--dbname={self.ci.dsn()}"]
        if not info.superuser:
            # Without superuser, pg_authid (password hashes) is unreadable.
            argv.append("--no-role-passwords")
            log.warning("not a superuser: role passwords are not included in the globals dump")
        with ToolProcess(argv, env=self.ci.env(), what="pg_dumpall") as tool:
            return self._store(layout.globals_key(bid, self.codec.suffix), ToolOutput(tool, magic=GLOBALS_MAGIC))
