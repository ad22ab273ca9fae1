"""``restore --dump``: a stored dump into a new database (and its roles).

Refuses an existing database unless ``clean`` (then drops and recreates it,
DESIGN §3.4). With one job the archive streams from storage into
``pg_restore --single-transaction``: a corrupt object (checked at end of
stream) or any SQL error aborts the transaction, and the database we created
is dropped again, so a failed restore leaves nothing half-done. With several
jobs (or a directory-format dump) the archive is first decoded into the work
directory, because ``pg_restore --jobs`` needs a seekable file.

Roles and tablespaces (the "globals") are created when missing; existing ones
are left as they are, so restoring a copy next to production never resets a
live role's password nor changes what a live role may do: only statements
about roles and tablespaces this restore created are applied
(:mod:`p88backup.core.logical.globals_filter`); the others that concern a new
role, such as a new role granted to an existing one, are reported as skipped.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p88backup.catalog.models import DatabaseDump, DumpManifest, StoredObject
from p88backup.catalog.objects import check_stat, open_decoded
from p88backup.core.logical.dump import count_rows
from p88backup.core.logical.globals_filter import Skipped, filter_globals
from p88backup.core.logical.verify import restore_tool_major
from p88backup.errors import DatabaseError, PgToolError, RefusedError, VerifyError
from p88backup.pg.conn import ConnInfo, first_line
from p88backup.pg.proc import ToolProcess, run_tool
from p88backup.pg.tools import client_for
from p88backup.storage import Storage
from p88backup.stream import Codec, copy_stream, read_all

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024


@dataclass
class RestoreOptions:
    target_db: str
    source_db: str | None = None
    jobs: int = 1
    clean: bool = False
    globals: bool = True
    check_counts: bool = True
    work_dir: Path = Path("/tmp/p88backup")
    pg_bin_dir: Path | None = None


@dataclass
class RestoreResult:
    backup_id: str
    source_db: str
    target_db: str
    seconds: float
    roles_created: list[str] = field(default_factory=list)
    roles_kept: list[str] = field(default_factory=list)
    globals_skipped: list[Skipped] = field(default_factory=list)  # for the operator to apply by hand, or not
    tables_checked: int = 0


def quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


class DumpRestorer:
    def __init__(self, ci: ConnInfo, storage: Storage, codec: Codec, options: RestoreOptions) -> None:
        self.ci, self.storage, self.codec, self.opt = ci, storage, codec, options
        self._created = False

    def _admin(self) -> Any:
        """A connection for CREATE/DROP DATABASE (not to the target itself)."""
        for db in ("postgres", "template1"):
            if db == self.opt.target_db:
                continue
            try:
                return self.ci.with_db(db).connect()
            except DatabaseError as exc:
                last = exc
        raise last

    def run(self, manifest: DumpManifest) -> RestoreResult:
        t0 = time.monotonic()
        try:
            db = manifest.database(self.opt.source_db)
        except LookupError as exc:
            raise RefusedError(str(exc), hint="pass --database NAME to pick one") from None
        encrypted = manifest.encoding.encryption == "age"
        if encrypted:
            self.codec.identities()  # fail before touching the server if the key is missing
        target_ci = self.ci.with_db(self.opt.target_db)
        with self._admin() as admin:
            version_num = int(admin.execute("SHOW server_version_num").fetchone()[0])
            self._prepare_target(admin, db)
        major = max(restore_tool_major(manifest), version_num // 10000)
        result = RestoreResult(manifest.id, db.name, self.opt.target_db, 0.0)
        try:
            if self.opt.globals and manifest.globals is not None:
                self._restore_globals(manifest.globals, encrypted, major, result)
            self._set_owner(db)
            pg_restore = client_for("pg_restore", major, self.opt.pg_bin_dir)
            if db.format == "custom" and self.opt.jobs == 1:
                self._stream_restore(pg_restore.path, db.objects[0], encrypted, target_ci)
            else:
                self._staged_restore(pg_restore.path, manifest.id, db, encrypted, target_ci)
            if self.opt.check_counts and db.row_counts_kind == "exact" and db.row_counts:
                result.tables_checked = self._check_counts(target_ci, db)
        except BaseException:
            self._drop_target()
            raise
        result.seconds = round(time.monotonic() - t0, 2)
        return result

    # -- target database ------------------------------------------------------

    def _prepare_target(self, admin: Any, db: DatabaseDump) -> None:
        name = self.opt.target_db
        exists = admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        if exists and not self.opt.clean:
            raise RefusedError(
                f"database {name!r} already exists on {self.ci.describe()}",
                hint="pick another --target-db, or pass --clean to drop and recreate it",
            )
        if exists:
            log.warning("dropping existing database (--clean)", extra={"p88": {"database": name}})
            admin.execute(f"DROP DATABASE {quote_ident(name)} WITH (FORCE)")
        opts = ["TEMPLATE template0"]
        if db.encoding:
            opts.append(f"ENCODING '{db.encoding}'")
        if db.collate:
            opts.append(f"LC_COLLATE '{db.collate}'")
        if db.ctype:
            opts.append(f"LC_CTYPE '{db.ctype}'")
        try:
            admin.execute(f"CREATE DATABASE {quote_ident(name)} {' '.join(opts)}")
        except Exception as exc:
            raise DatabaseError(f"cannot create database {name!r}: {first_line(exc)}") from None
        self._created = True

    def _set_owner(self, db: DatabaseDump) -> None:
        if not db.owner:
            return
        with self._admin() as admin:
            if admin.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (db.owner,)).fetchone():
                admin.execute(f"ALTER DATABASE {quote_ident(self.opt.target_db)} OWNER TO {quote_ident(db.owner)}")

    def _drop_target(self) -> None:
        if not self._created:
            return
        try:
            with self._admin() as admin:
                admin.execute(f"DROP DATABASE IF EXISTS {quote_ident(self.opt.target_db)} WITH (FORCE)")
            log.info("dropped the partly restored database", extra={"p88": {"database": self.opt.target_db}})
        except Exception as exc:
            log.warning(
                "could not drop the partly restored database",
                extra={"p88": {"database": self.opt.target_db, "error": first_line(exc)}},
            )

    # -- globals --------------------------------------------------------------

    def _restore_globals(self, obj: StoredObject, encrypted: bool, major: int, result: RestoreResult) -> None:
        check_stat(self.storage, obj)
        decoded, raw = open_decoded(self.storage, obj, self.codec, encrypted=encrypted)
        try:
            sql = read_all(decoded).decode()
        finally:
            raw.close()
        with self._admin() as admin:
            role_rows = admin.execute("SELECT rolname, rolsuper FROM pg_roles").fetchall()
            spaces = {r[0] for r in admin.execute("SELECT spcname FROM pg_tablespace").fetchall()}
        roles = {r[0] for r in role_rows}
        plan = filter_globals(sql, roles, spaces, superusers={r[0] for r in role_rows if r[1]})
        psql = client_for("psql", major, self.opt.pg_bin_dir)
        admin_db = "postgres" if self.opt.target_db != "postgres" else "template1"
        run_tool(
            [
                str(psql.path),
                "-X",
                "-q",
                "--no-password",
                "-v",
                "ON_ERROR_STOP=1",
                f"--dbname={self.ci.with_db(admin_db).dsn()}",
            ],
            input=plan.sql.encode(),
            env=self.ci.env(),
            message="restoring roles",
            hint="pass --no-globals to restore the database without roles",
        )
        result.roles_created, result.roles_kept = plan.roles_created, plan.roles_kept
        result.globals_skipped = plan.skipped
        log.info(
            "globals restored",
            extra={"p88": {"roles_created": plan.roles_created, "roles_left_unchanged": plan.roles_kept}},
        )
        for skipped in plan.skipped:
            log.warning(
                "globals statement not applied",
                extra={"p88": {"statement": skipped.statement, "reason": skipped.reason}},
            )

    # -- data -----------------------------------------------------------------

    def _pg_restore_base(self, pg_restore: Path, target: ConnInfo) -> list[str]:
        return [str(pg_restore), "--no-password", f"--dbname={target.dsn()}"]

    def _stream_restore(self, pg_restore: Path, obj: StoredObject, encrypted: bool, target: ConnInfo) -> None:
        check_stat(self.storage, obj)
        decoded, raw = open_decoded(self.storage, obj, self.codec, encrypted=encrypted)
        argv = self._pg_restore_base(pg_restore, target) + ["--single-transaction", "--exit-on-error"]
        try:
            with ToolProcess(
                argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, env=target.env(), what="pg_restore"
            ) as tool:
                try:
                    while chunk := decoded.read(CHUNK):
                        tool.stdin.write(chunk)
                except BrokenPipeError:
                    tool.finish()  # it quit early: its error says why
                    raise PgToolError("pg_restore stopped reading the archive") from None
                # The archive checked out (size, SHA-256, zstd/age): let it commit.
                tool.stdin.close()
                tool.finish()
        finally:
            raw.close()

    def _staged_restore(self, pg_restore: Path, bid: str, db: DatabaseDump, encrypted: bool, target: ConnInfo) -> None:
        stage = self.opt.work_dir / f"restore-{bid}-{self.opt.target_db}"
        if stage.exists():
            shutil.rmtree(stage)
        stage.mkdir(parents=True)
        try:
            if db.format == "custom":
                archive = stage / "archive.pgdump"
                self._materialize(db.objects[0], encrypted, archive)
            else:
                archive = stage / "dir"
                archive.mkdir()
                for obj in db.objects:
                    name = obj.key.rsplit("/", 1)[-1]
                    name = name.removesuffix(".age").removesuffix(".zst")
                    self._materialize(obj, encrypted, archive / name)
            argv = self._pg_restore_base(pg_restore, target) + [
                f"--jobs={self.opt.jobs}",
                "--exit-on-error",
                str(archive),
            ]
            with ToolProcess(argv, stdout=subprocess.DEVNULL, env=target.env(), what="pg_restore") as tool:
                tool.finish()
        finally:
            shutil.rmtree(stage, ignore_errors=True)

    def _materialize(self, obj: StoredObject, encrypted: bool, path: Path) -> None:
        check_stat(self.storage, obj)
        decoded, raw = open_decoded(self.storage, obj, self.codec, encrypted=encrypted)
        try:
            with path.open("wb") as out:
                copy_stream(decoded, out)
        finally:
            raw.close()

    def _check_counts(self, target: ConnInfo, db: DatabaseDump) -> int:
        with target.connect() as conn:
            got = count_rows(conn, "exact")
        wrong = {t: (n, got.get(t)) for t, n in db.row_counts.items() if got.get(t) != n}
        if wrong:
            sample = ", ".join(f"{t}: {want} expected, {have} restored" for t, (want, have) in list(wrong.items())[:5])
            raise VerifyError(f"row counts differ after restore in {len(wrong)} tables: {sample}")
        return len(db.row_counts)
