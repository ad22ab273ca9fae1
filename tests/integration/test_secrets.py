"""DESIGN §3.7: the database password never reaches argv, logs, manifests or errors."""

from __future__ import annotations

import stat
from pathlib import Path
from urllib.parse import quote

from p88backup.errors import ExitCode
from tests.harness.helpers import cli_env, init_storage, ok, run_cli
from tests.harness.postgres import PgCluster

PASSWORD = "Tr0ub4dor&3-very-secret"


def spy_bin(tmp_path: Path, pg: PgCluster, log: Path) -> Path:
    """Wrappers that record each tool's argv before running the real one."""
    d = tmp_path / "spybin"
    d.mkdir()
    for tool in ("pg_dump", "pg_dumpall", "pg_restore", "psql"):
        p = d / tool
        p.write_text(f'#!/bin/bash\nprintf "%s\\n" "$0 $*" >> {log}\nexec {pg.bindir / tool} "$@"\n')
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return d


def test_password_stays_out_of_argv_logs_and_storage(pg: PgCluster, tmp_path: Path) -> None:
    pg.sql("DROP ROLE IF EXISTS p88_secret")
    pg.sql(f"CREATE ROLE p88_secret LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    pg.sql("DROP DATABASE IF EXISTS secretdb")
    pg.sql("CREATE DATABASE secretdb")
    pg.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 100) g", "secretdb")
    argv_log = tmp_path / "argv.log"
    store = tmp_path / "store"
    url = f"postgresql://p88_secret:{quote(PASSWORD, safe='')}@127.0.0.1:{pg.port}/secretdb"
    env = cli_env(
        tmp_path,
        P88_DATABASE_URL=url,
        P88_STORAGE_URL=f"file://{store}",
        P88_PG_BIN_DIR=str(spy_bin(tmp_path, pg, argv_log)),
    )
    init_storage(env)

    outputs = []
    for args in (
        ["-v", "dump"],
        ["-v", "verify", "latest"],
        ["-v", "list"],
        ["-v", "restore", "--dump", "latest", "--target-db", "secretdb_copy"],
        ["config"],
    ):
        r = ok(run_cli(args, env))
        outputs.append(r.stdout + r.stderr)
    assert pg.scalar("SELECT count(*) FROM t", "secretdb_copy") == 100  # the password did its job, via PGPASSWORD

    recorded = argv_log.read_text()
    assert "pg_dump" in recorded and "pg_restore" in recorded and "pg_dumpall" in recorded
    for text in [*outputs, recorded]:
        assert PASSWORD not in text and quote(PASSWORD, safe="") not in text
    for f in store.rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes()

    bad = env | {"P88_DATABASE_URL": url.replace(quote(PASSWORD, safe=""), "wrong-" + PASSWORD[:8])}
    r = run_cli(["dump"], bad)
    assert r.returncode == ExitCode.DATABASE
    assert "password authentication failed" in r.stderr and PASSWORD[:8] not in r.stderr
    pg.sql("DROP DATABASE secretdb_copy")


SSL_KEY_PASSWORD = "Cl1ent-key-passphrase-42"


def test_every_libpq_secret_in_the_url_query_stays_out_too(pg: PgCluster, tmp_path: Path) -> None:
    """Issue 10 item 13: ``?password=`` and ``sslpassword=`` in the query are secrets too. Tools
    get them from PGPASSWORD and an in-memory service file, never from their command line."""
    pg.sql("DROP ROLE IF EXISTS p88_secret")
    pg.sql(f"CREATE ROLE p88_secret LOGIN SUPERUSER PASSWORD '{PASSWORD}'")
    pg.sql("DROP DATABASE IF EXISTS secretq")
    pg.sql("CREATE DATABASE secretq")
    pg.sql("CREATE TABLE t AS SELECT g FROM generate_series(1, 50) g", "secretq")
    log = tmp_path / "argv.log"
    spies = tmp_path / "spybin"
    spies.mkdir()
    for tool in ("pg_dump", "pg_dumpall", "pg_restore", "psql"):
        p = spies / tool
        # argv, and whether libpq's service file (if any) carries the key passphrase: not its value
        p.write_text(
            f'#!/bin/bash\nprintf "%s\\n" "$0 $*" >> {log}\n'
            f'[ -n "$PGSERVICEFILE" ] && printf "service sslpassword lines: %s\\n"'
            f' "$(grep -c "^sslpassword={SSL_KEY_PASSWORD}$" "$PGSERVICEFILE")" >> {log}\n'
            f'exec {pg.bindir / tool} "$@"\n'
        )
        p.chmod(p.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    store = tmp_path / "store"
    url = (
        f"postgresql://p88_secret@127.0.0.1:{pg.port}/secretq?password={quote(PASSWORD, safe='')}"
        f"&sslpassword={quote(SSL_KEY_PASSWORD, safe='')}&sslmode=prefer"
    )
    env = cli_env(tmp_path, P88_DATABASE_URL=url, P88_STORAGE_URL=f"file://{store}", P88_PG_BIN_DIR=str(spies))
    init_storage(env)

    outputs = []
    for args in (["-v", "dump"], ["-v", "restore", "--dump", "latest", "--target-db", "secretq_copy"], ["config"]):
        r = ok(run_cli(args, env))
        outputs.append(r.stdout + r.stderr)
    assert pg.scalar("SELECT count(*) FROM t", "secretq_copy") == 50  # the query's password did its job
    assert "sslpassword=***" in outputs[-1] and "password=***" in outputs[-1]  # `p88backup config`

    recorded = log.read_text()
    assert "service sslpassword lines: 1" in recorded and "pg_dump" in recorded and "pg_restore" in recorded
    for text in [*outputs, recorded]:
        for secret in (PASSWORD, quote(PASSWORD, safe=""), SSL_KEY_PASSWORD):
            assert secret not in text
    for f in store.rglob("*"):
        if f.is_file():
            assert PASSWORD.encode() not in f.read_bytes() and SSL_KEY_PASSWORD.encode() not in f.read_bytes()
    pg.sql("DROP DATABASE secretq_copy")
