"""Safety rules under fault injection (DESIGN §3): nothing partial is ever
listed, nothing good is ever lost, every failure exits non-zero and says why."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from p88backup.errors import ExitCode
from p88backup.locks import job_lock
from tests.harness.helpers import REPO, cli_env, init_storage, initialised, json_out, ok, run_cli
from tests.harness.postgres import PgCluster, contrib_major, tools_search_path
from tests.harness.procs import children_named
from tests.harness.s3 import S3Server, start_minio


@pytest.fixture(scope="module")
def bigdb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgCluster]:
    """A cluster whose dump takes a few seconds, so faults can land mid-stream."""
    base = tmp_path_factory.mktemp("faults")
    cluster = PgCluster.create(base / "pg", major=contrib_major())  # pgcrypto
    cluster.start()
    cluster.sql("CREATE DATABASE app")
    # random text, so it neither compresses nor dumps instantly
    cluster.psql(
        "CREATE EXTENSION pgcrypto;"
        "CREATE TABLE small (id int PRIMARY KEY, v text);"
        "INSERT INTO small SELECT g, md5(g::text) FROM generate_series(1, 1000) g;"
        "CREATE TABLE big (id int, v text);"
        "INSERT INTO big SELECT g, encode(gen_random_bytes(600), 'base64') FROM generate_series(1, 400000) g;",
        "app",
    )
    yield cluster
    cluster.destroy()


@pytest.fixture(autouse=True)
def bigdb_alive(request: pytest.FixtureRequest) -> Iterator[None]:
    """A test that needs the shared cluster finds it up, or says what happened to it."""
    if "bigdb" in request.fixturenames:
        from tests.harness.procs import tail

        cluster: PgCluster = request.getfixturevalue("bigdb")
        assert cluster.is_ready(), f"the shared cluster is down; its log:\n{tail(cluster.logfile, 30)}"
    yield


def start_cli(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "p88backup", "--log-format", "json", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def child_named(proc: subprocess.Popen[str], name: str, timeout: float = 30) -> psutil.Process:
    """The running ``name`` child doing the work (not a ``--version`` probe, not one that ended)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = children_named(proc.pid, name)
        if found:
            return psutil.Process(found[0])
        time.sleep(0.05)
    raise AssertionError(f"no {name} child appeared")


def wait_for_bytes(path: Path, at_least: int, timeout: float = 60) -> None:
    """Until an in-progress local put has written ``at_least`` bytes."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sizes = [p.stat().st_size for p in path.glob("*.tmp")] if path.exists() else []
        if sizes and max(sizes) >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError("the dump never got going")


def keys(store: Path) -> set[str]:
    skip = {".p88tmp", "p88backup.json"}  # temp files, the storage marker
    return {str(p.relative_to(store)) for p in store.rglob("*") if p.is_file() and not skip & set(p.parts)}


def first_backup(env: dict[str, str], store: Path) -> tuple[str, set[str]]:
    init_storage(env)
    bid = json_out(run_cli(["dump", "--json"], env))["id"]
    return bid, keys(store)


def assert_only_first_backup(env: dict[str, str], bid: str, before: set[str], store: Path | None = None) -> None:
    assert [b["id"] for b in json_out(run_cli(["list", "--json"], env))] == [bid]
    if store is not None:
        assert keys(store) == before  # no stray objects a later run could misread
    ok(run_cli(["verify", bid], env))  # the previous good backup is untouched


def test_pg_dump_killed_mid_stream(bigdb: PgCluster, tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = cli_env(tmp_path, P88_DATABASE_URL=bigdb.url("app"), P88_STORAGE_URL=f"file://{store}")
    bid, before = first_backup(env, store)

    proc = start_cli(["dump"], env)
    pg_dump = child_named(proc, "pg_dump")
    wait_for_bytes(store / ".p88tmp", 1 << 20)
    pg_dump.kill()
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == ExitCode.PG_TOOL, err
    assert "pg_dump was killed by signal SIGKILL" in err
    assert_only_first_backup(env, bid, before, store)
    assert not list((store / ".p88tmp").glob("*"))  # the temp file went with the failed put


def test_postgres_stopped_mid_dump(pg_factory, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cluster: PgCluster = pg_factory("stopme", major=contrib_major())  # pgcrypto
    cluster.start()
    cluster.sql("CREATE DATABASE app")
    cluster.psql(
        "CREATE EXTENSION pgcrypto; CREATE TABLE big (id int, v text);"
        "INSERT INTO big SELECT g, encode(gen_random_bytes(600), 'base64') FROM generate_series(1, 300000) g;",
        "app",
    )
    store = tmp_path / "store"
    env = cli_env(tmp_path, P88_DATABASE_URL=cluster.url("app"), P88_STORAGE_URL=f"file://{store}")
    bid, before = first_backup(env, store)

    proc = start_cli(["dump"], env)
    wait_for_bytes(store / ".p88tmp", 1 << 20)
    cluster.stop("immediate")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode in (ExitCode.PG_TOOL, ExitCode.DATABASE), err
    last = json.loads(err.strip().splitlines()[-1])
    assert last["level"] == "error" and ("pg_dump" in last["msg"] or "PostgreSQL" in last["msg"])
    cluster.start()
    assert_only_first_backup(env, bid, before, store)


def test_postgres_down_before_dump(tmp_path: Path) -> None:
    env = cli_env(
        tmp_path, P88_DATABASE_URL="postgresql://postgres@127.0.0.1:1/app", P88_STORAGE_URL=f"file://{tmp_path}/store"
    )
    r = run_cli(["dump"], env)
    assert r.returncode == ExitCode.DATABASE
    assert "cannot connect to PostgreSQL at 127.0.0.1:1/app" in r.stderr


def test_s3_server_stopped_mid_upload(bigdb: PgCluster, tmp_path: Path) -> None:
    server: S3Server = start_minio(tmp_path / "minio")
    try:
        bucket = server.create_bucket("faults")
        env = cli_env(
            tmp_path,
            P88_DATABASE_URL=bigdb.url("app"),
            P88_STORAGE_URL=f"s3://{bucket}/p88",
            P88_RETRY_DEADLINE_SECONDS="4",
            **server.env(),
        )
        init_storage(env)
        bid = json_out(run_cli(["dump", "--json"], env))["id"]
        before = {o["Key"] for o in server.client().list_objects_v2(Bucket=bucket).get("Contents", [])}

        proc = start_cli(["dump"], env)
        child_named(proc, "pg_dump")
        time.sleep(1.0)  # parts are on their way
        server.stop()
        _, err = proc.communicate(timeout=180)
        assert proc.returncode == ExitCode.STORAGE, err
        assert "cannot reach S3" in err
        assert "retrying" in err  # transient errors were retried before giving up

        server.restart()
        after = {o["Key"] for o in server.client().list_objects_v2(Bucket=bucket).get("Contents", [])}
        assert after == before
        assert_only_first_backup(env, bid, before)
    finally:
        server.stop()


def _fake_tool(bin_dir: Path, name: str, body: str) -> None:
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text(f"#!/bin/bash\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)


def fake_bin(tmp_path: Path, pg: PgCluster, pg_dump_body: str) -> Path:
    """A bin dir whose pg_dump is ``pg_dump_body``; the other tools are real."""
    bin_dir = tmp_path / "fakebin"
    for tool in ("pg_dumpall", "pg_restore", "psql"):
        _fake_tool(bin_dir, tool, f'exec {pg.bindir / tool} "$@"')
    _fake_tool(
        bin_dir, "pg_dump", f'if [ "$1" = --version ]; then exec {pg.bindir / "pg_dump"} --version; fi\n{pg_dump_body}'
    )
    return bin_dir


def test_zero_byte_dump_is_a_failure(bigdb: PgCluster, tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = cli_env(
        tmp_path,
        P88_DATABASE_URL=bigdb.url("app"),
        P88_STORAGE_URL=f"file://{store}",
        P88_PG_BIN_DIR=str(fake_bin(tmp_path, bigdb, "exit 0")),
    )
    init_storage(env)
    r = run_cli(["dump"], env)
    assert r.returncode == ExitCode.PG_TOOL
    assert "pg_dump produced no output" in r.stderr
    assert json_out(run_cli(["list", "--json"], env)) == []
    assert keys(store) == set()


def test_pg_dump_error_exit_is_a_failure(bigdb: PgCluster, tmp_path: Path) -> None:
    body = f'{bigdb.bindir / "pg_dump"} "$@" | head -c 100000; echo "pg_dump: error: simulated" >&2; exit 1'
    store = tmp_path / "store"
    env = cli_env(
        tmp_path,
        P88_DATABASE_URL=bigdb.url("app"),
        P88_STORAGE_URL=f"file://{store}",
        P88_PG_BIN_DIR=str(fake_bin(tmp_path, bigdb, body)),
    )
    init_storage(env)
    r = run_cli(["dump"], env)
    assert r.returncode == ExitCode.PG_TOOL
    assert "pg_dump exited with status 1: pg_dump: error: simulated" in r.stderr
    assert keys(store) == set()


def test_pg_dump_too_old_for_the_server(bigdb: PgCluster, tmp_path: Path) -> None:
    bin_dir = tmp_path / "oldbin"
    _fake_tool(bin_dir, "pg_dump", 'echo "pg_dump (PostgreSQL) 12.20"')
    env = cli_env(
        tmp_path, P88_DATABASE_URL=bigdb.url("app"), P88_STORAGE_URL=f"file://{tmp_path}/s", P88_PG_BIN_DIR=str(bin_dir)
    )
    init_storage(env)
    r = run_cli(["dump"], env)
    major = bigdb.version_num() // 10000
    assert r.returncode == ExitCode.PG_TOOL
    assert f"pg_dump {major} or newer is needed for a PostgreSQL {major} server" in r.stderr
    assert f"postgresql-client-{major}" in r.stderr


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_verify_and_restore_reject_damaged_objects(bigdb: PgCluster, tmp_path: Path, damage: str) -> None:
    store = tmp_path / "store"
    env = cli_env(tmp_path, P88_DATABASE_URL=bigdb.url("app"), P88_STORAGE_URL=f"file://{store}")
    init_storage(env)
    bid = json_out(run_cli(["dump", "--json"], env))["id"]
    ok(run_cli(["verify", bid], env))
    target = next((store / "dumps" / bid).glob("app.pgdump.zst"))
    data = bytearray(target.read_bytes())
    if damage == "flip":
        data[len(data) // 2] ^= 0x01
    else:
        data = data[: len(data) - 1000]
    target.write_bytes(bytes(data))

    r = run_cli(["verify", bid, "--json"], env)
    assert r.returncode == ExitCode.VERIFY_FAILED
    report = json.loads(r.stdout)
    bad = [o for o in report["objects"] if not o["ok"]]
    assert [o["key"] for o in bad] == [f"dumps/{bid}/app.pgdump.zst"]
    assert f"dumps/{bid}/app.pgdump.zst" in r.stderr

    r = run_cli(["restore", "--dump", bid, "--target-db", "damaged", "--no-globals"], env)
    assert r.returncode == ExitCode.VERIFY_FAILED, r.stderr
    assert not bigdb.sql("SELECT 1 FROM pg_database WHERE datname = 'damaged'")


def test_truncated_archive_with_exit_zero_is_caught_by_verify(bigdb: PgCluster, tmp_path: Path) -> None:
    """A pg_dump that lies (exit 0, truncated output) cannot be caught while
    streaming; verify reads every data block and catches it."""
    body = f'{bigdb.bindir / "pg_dump"} "$@" | head -c 3000000; exit 0'
    store = tmp_path / "store"
    env = cli_env(
        tmp_path,
        P88_DATABASE_URL=bigdb.url("app"),
        P88_STORAGE_URL=f"file://{store}",
        P88_PG_BIN_DIR=str(fake_bin(tmp_path, bigdb, body)),
    )
    init_storage(env)
    bid = json_out(run_cli(["dump", "--json", "--no-globals"], env))["id"]
    r = run_cli(["verify", bid], env)
    assert r.returncode == ExitCode.VERIFY_FAILED, r.stderr
    assert "app.pgdump.zst" in r.stderr


def test_second_dump_is_locked_out(bigdb: PgCluster, tmp_path: Path) -> None:
    env = cli_env(tmp_path, P88_DATABASE_URL=bigdb.url("app"), P88_STORAGE_URL=f"file://{tmp_path}/s")
    init_storage(env)
    with job_lock(Path(env["P88_LOCK_DIR"]), "dump"):
        t0 = time.monotonic()
        r = run_cli(["dump", "--wait", "1"], env)
        assert r.returncode == ExitCode.LOCKED
        assert time.monotonic() - t0 >= 1.0
        assert f"another dump run is in progress (pid {os.getpid()}" in r.stderr
    assert json_out(run_cli(["list", "--json"], env)) == []
    ok(run_cli(["dump"], env))  # lock released: the next run goes ahead


def test_manifest_write_that_lands_then_fails_leaves_no_listed_backup(pg: PgCluster, tmp_path: Path) -> None:
    """The manifest PUT reaches storage but the answer is lost: the dump fails, and
    its cleanup must not leave a listed backup whose objects it deleted."""
    from p88backup.catalog.backups import Catalog, layout
    from p88backup.core.logical.dump import Dumper, DumpOptions
    from p88backup.errors import StorageError
    from p88backup.pg.conn import ConnInfo
    from p88backup.storage.local import LocalStorage
    from p88backup.stream import make_codec

    class ManifestAnswerLost(LocalStorage):
        def put(self, key, data, *, overwrite=True):  # type: ignore[no-untyped-def]
            info = super().put(key, data, overwrite=overwrite)
            if key.endswith(layout.MANIFEST):
                raise StorageError(f"{key}: connection reset after the upload")
            return info

    store = tmp_path / "store"
    storage = initialised(ManifestAnswerLost(store))
    options = DumpOptions(databases=["postgres"], work_dir=tmp_path / "work", pg_bin_dir=Path(tools_search_path()))
    with pytest.raises(StorageError, match="connection reset"):
        Dumper(ConnInfo.from_url(pg.url()), storage, make_codec(), options).run()
    assert Catalog(LocalStorage(store)).ids("dump") == []
    assert keys(store) == set()  # nothing a later list/expire could misread
