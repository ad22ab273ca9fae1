"""Shared test helpers: run the CLI as a real process, compare databases, fail or skip on a
missing service, fake manifests and WAL segment headers for unit tests."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import uuid
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest

from tests.harness import procs
from tests.harness.postgres import PgCluster, checksums_check, tools_search_path
from tests.harness.s3 import S3Server

REPO = Path(__file__).resolve().parents[2]
SEG = 16 * 1024 * 1024
S = TypeVar("S", bound="Storage")

if TYPE_CHECKING:
    from p88backup.storage import Storage


def unavailable(what: str, exc: BaseException | str) -> None:
    """Fail under CI, skip elsewhere: a missing service is never silently OK in CI."""
    message = f"{what} unavailable: {exc}"
    if procs.ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def other_user() -> str:
    """The service user (postgres) as a second user of one deployment; the tests run as root."""
    user = procs.service_user()
    if user is None:
        unavailable("a second user (run the tests as root)", "not root")
    assert user is not None
    return user


def new_bucket(server: S3Server) -> str:
    return server.create_bucket(f"p88-{uuid.uuid4().hex[:12]}")


def wal_header(segno: int, size: int = SEG, info: int = 0x0002, timeline: int = 1) -> bytes:
    """The long page header that starts a WAL segment (XLogLongPageHeaderData: magic, info, tli,
    pageaddr, rem_len, pad, sysid, seg_size, blcksz)."""
    return struct.pack("<HHIQI4xQII", 0xD110, info, timeline, segno * size, 0, 7433, size, 8192)


def cli_env(tmp: Path, **extra: str) -> dict[str, str]:
    """A clean P88_* environment for one test (no settings leak in from the caller).

    ``P88_PG_BIN_DIR`` names every installed major's bin directory (Debian's 15, the wheel's 16 and
    18): p88backup picks the programs that fit each server itself, as on a multi-version host.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P88_", "AWS_"))}
    env.update(
        P88_LOCK_DIR=str(tmp / "locks"),
        P88_WORK_DIR=str(tmp / "work"),
        P88_RETRY_DEADLINE_SECONDS="5",
        P88_PG_BIN_DIR=tools_search_path(),
        PYTHONUNBUFFERED="1",
    )
    if "P88_CACHE" in os.environ:
        env["P88_CACHE"] = os.environ["P88_CACHE"]
    env.update(extra)
    return env


def run_cli(
    args: list[str],
    env: dict[str, str],
    *,
    timeout: float = 600,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "p88backup", "--log-format", "json", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        input=input,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}"
    return result


def init_storage(env: dict[str, str]) -> None:
    """``p88backup init`` for the storage an environment points at, as an operator sets one up:
    every command refuses a storage without its marker (DESIGN §3.12)."""
    ok(run_cli(["init"], env, timeout=60))


def initialised(storage: S) -> S:
    """An open Storage after ``init`` (in-process, for unit tests); returns it."""
    from p88backup.storage.marker import initialise

    initialise(storage)
    return storage


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    return json.loads(ok(result).stdout)


def log_lines(stderr: str) -> list[dict[str, Any]]:
    out = []
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("{"):
            out.append(json.loads(line))
    return out


def schema_dump(pg: PgCluster, db: str) -> str:
    """pg_dump --schema-only, minus lines that differ on every run."""
    r = subprocess.run(
        [str(pg.bindir / "pg_dump"), "--schema-only", "-d", pg.url(db)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    keep = [ln for ln in r.stdout.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict", "-- Dumped"))]
    return "\n".join(keep)


def globals_dump(pg: PgCluster) -> str:
    r = subprocess.run(
        [str(pg.bindir / "pg_dumpall"), "--globals-only", "--no-role-passwords", "-d", pg.url()],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return "\n".join(ln for ln in r.stdout.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict", "--")))


def table_checksums(pg: PgCluster, db: str) -> dict[str, str]:
    """md5 over every table's rows (sorted text form), plus large objects."""
    tables = pg.sql(
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE c.relkind IN ('r', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
        " AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
        db,
    )
    sums = {}
    for (name,) in tables:
        sums[name] = pg.scalar(
            f"SELECT count(*) || ':' || md5(coalesce(string_agg(x::text, E'\\n' ORDER BY x::text), ''))"
            f" FROM ONLY {name} x",
            db,
        )
    sums["<large objects>"] = pg.scalar(
        "SELECT count(*) || ':' || md5(coalesce(string_agg(m.oid::text || '=' || md5(lo_get(m.oid)), ','"
        " ORDER BY m.oid), '')) FROM pg_largeobject_metadata m",
        db,
    )
    return sums


# (test, PostgreSQL major, check) of every integrity check this session: the run's summary lists them.
INTEGRITY_CHECKS: list[tuple[str, int, str]] = []


def amcheck(pg: PgCluster, db: str) -> str:
    """Check a (restored) cluster for damage with the strongest check its server has; say which ran.

    ``pg_amcheck --heapallindexed`` where amcheck is installed (Debian's packages with contrib).
    The wheel's 16 and 18 have no contrib: there the cluster is stopped and ``pg_checksums --check``
    verifies every page (the clusters are made with data checksums), and the tests' per-table
    checksums compare the rows.
    """
    major = pg.version_num() // 10000
    if pg.scalar("SELECT count(*) FROM pg_available_extensions WHERE name = 'amcheck'", db):
        r = subprocess.run(
            pg.client("pg_amcheck", "--heapallindexed", "--install-missing", db),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert r.returncode == 0, f"pg_amcheck found problems in {db}:\n{r.stdout}\n{r.stderr}"
        check = "pg_amcheck --heapallindexed"
    else:
        check = checksums_check(pg)
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split(" ")[0]
    INTEGRITY_CHECKS.append((test, major, check))
    print(f"integrity check, PostgreSQL {major}, database {db}: {check}")
    return check


def create_roles(pg: PgCluster) -> None:
    pg.psql(
        """
        CREATE ROLE p88_owner NOLOGIN;
        CREATE ROLE p88_reader LOGIN PASSWORD 'reader-pw' CONNECTION LIMIT 7 VALID UNTIL '2030-01-01';
        CREATE ROLE p88_writer LOGIN IN ROLE p88_reader;
        ALTER ROLE p88_reader SET statement_timeout = '5min';
        """
    )


def load_rich(pg: PgCluster, db: str) -> None:
    pg.sql(f'CREATE DATABASE "{db}"')
    pg.psql((REPO / "tests" / "data" / "rich_schema.sql").read_text(), db)


def fake_manifest_fields(bid: str, when: datetime) -> dict[str, Any]:
    """The fields every manifest has, with made-up server facts (catalog and expire tests)."""
    from p88backup.catalog.models import Encoding

    return {
        "id": bid,
        "started_at": when,
        "finished_at": when,
        "server_version": "16.4",
        "server_version_num": 160004,
        "tool_version": "16.4",
        "p88backup_version": "0.1.0",
        "encoding": Encoding(),
    }


def fake_dump_manifest(bid: str, when: datetime) -> Any:
    """A dump of database p88 with one (not stored) object."""
    from p88backup.catalog.models import DatabaseDump, DumpManifest, StoredObject

    obj = StoredObject(key=f"dumps/{bid}/p88.pgdump.zst", size=1, sha256="0" * 64, raw_size=1)
    return DumpManifest(
        **fake_manifest_fields(bid, when),
        snapshot_time=when,
        databases=[DatabaseDump(name="p88", format="custom", objects=[obj])],
    )


def fake_basebackup_manifest(
    bid: str,
    when: datetime,
    start_wal: str,
    *,
    start_lsn: str | None = None,
    stop_lsn: str | None = None,
    stop_wal: str | None = None,
    segment_size: int = SEG,
) -> Any:
    """A base backup that needs WAL from ``start_wal`` on, on that segment's timeline.

    The LSNs default to just inside ``start_wal`` (of ``segment_size``-byte segments); pass them
    to place a backup exactly, e.g. before or after a timeline's switchpoint in the same segment.
    """
    from p88backup.catalog.models import BaseBackupManifest, StoredObject
    from p88backup.core.wal import names as walnames

    timeline, segno = walnames.parse_segment_name(start_wal, segment_size)
    start = walnames.parse_lsn(start_lsn) if start_lsn else walnames.segment_start_lsn(segno, segment_size) + 0x28
    stop = walnames.parse_lsn(stop_lsn) if stop_lsn else start + 0x100
    obj = StoredObject(key=f"basebackups/{bid}/base.tar.zst", size=1, sha256="0" * 64, raw_size=1)
    return BaseBackupManifest(
        **fake_manifest_fields(bid, when),
        timeline=timeline,
        start_lsn=walnames.format_lsn(start),
        stop_lsn=walnames.format_lsn(stop),
        start_wal=start_wal,
        stop_wal=stop_wal or walnames.segment_for_lsn(timeline, stop, segment_size),
        wal_segment_size=segment_size,
        start_time=when,
        stop_time=when,
        files=[obj],
    )
