"""Dump a database with a rich schema, restore it, and prove the copy is identical.

Shape (after WAL-G's end-to-end test): make data, back up, restore, compare
pg_dump --schema-only and per-table checksums, run amcheck.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from p88backup.errors import ExitCode
from tests.harness.helpers import (
    amcheck,
    cli_env,
    create_roles,
    globals_dump,
    init_storage,
    json_out,
    load_rich,
    log_lines,
    ok,
    run_cli,
    schema_dump,
    table_checksums,
)
from tests.harness.postgres import PgCluster

SOURCE_DB = "rich ünï"


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, pg_major: int) -> Iterator[PgCluster]:
    base = tmp_path_factory.mktemp("fidelity")
    base.chmod(0o777)
    cluster = PgCluster.create(base / "pg", major=pg_major)
    cluster.start()
    create_roles(cluster)
    load_rich(cluster, SOURCE_DB)
    yield cluster
    cluster.destroy()


@pytest.fixture(scope="module")
def expected(source: PgCluster) -> dict[str, object]:
    return {"schema": schema_dump(source, SOURCE_DB), "data": table_checksums(source, SOURCE_DB)}


def age_key(tmp: Path) -> tuple[str, Path]:
    r = subprocess.run(["age-keygen"], capture_output=True, text=True, check=True)
    key = tmp / "backup.key"
    key.write_text(r.stdout)
    public = next(ln.split(": ")[1] for ln in r.stderr.splitlines() + r.stdout.splitlines() if "public key" in ln)
    return public.strip(), key


def assert_same(source: PgCluster, target: PgCluster, db: str, expected: dict[str, object]) -> None:
    assert schema_dump(target, db) == expected["schema"]
    assert table_checksums(target, db) == expected["data"]
    amcheck(target, db)


VARIANTS = {
    "custom-local": ([], {}),
    "directory-jobs2-local": (["--format", "directory", "--jobs", "2"], {}),
    "custom-s3": ([], {"s3": True}),
    "directory-s3-age": (["--format", "directory", "--jobs", "2"], {"s3": True, "age": True}),
    "custom-local-age": ([], {"age": True}),
}


@pytest.mark.matrix
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_dump_restore_is_identical(
    variant: str, source: PgCluster, expected: dict[str, object], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    dump_args, opts = VARIANTS[variant]
    extra: dict[str, str] = {"P88_DATABASE_URL": source.url(SOURCE_DB)}
    if opts.get("s3"):
        extra.update(request.getfixturevalue("s3_env"))
    else:
        extra["P88_STORAGE_URL"] = f"file://{tmp_path}/store"
    if opts.get("age"):
        public, key = age_key(tmp_path)
        extra.update(P88_AGE_RECIPIENTS=public, P88_AGE_IDENTITY_FILE=str(key))
    env = cli_env(tmp_path, **extra)
    init_storage(env)

    summary = json_out(run_cli(["dump", "--json", *dump_args], env))
    assert summary["databases"] == [SOURCE_DB] and summary["encrypted"] == bool(opts.get("age"))
    listed = json_out(run_cli(["list", "--json"], env))
    assert [b["id"] for b in listed] == [summary["id"]]
    report = json_out(run_cli(["verify", "latest", "--json"], env))
    assert report["ok"] and all(o["ok"] for o in report["objects"])

    jobs = ["--jobs", "2"] if "--jobs" in dump_args else []
    result = json_out(run_cli(["restore", "--dump", "latest", "--target-db", "copy", "--json", *jobs], env))
    assert result["tables_checked"] >= 10
    assert_same(source, source, "copy", expected)
    # the copy is ours to drop; the source is untouched by the restore
    source.sql('DROP DATABASE "copy"')

    if opts.get("age"):
        # Without the identity, restore fails clearly and creates nothing.
        no_key = {k: v for k, v in env.items() if k != "P88_AGE_IDENTITY_FILE"}
        r = run_cli(["restore", "--dump", "latest", "--target-db", "copy2"], no_key)
        assert r.returncode == ExitCode.CRYPTO, r.stderr
        assert "no age identity is configured" in r.stderr
        assert not source.sql("SELECT 1 FROM pg_database WHERE datname = 'copy2'")


@pytest.mark.matrix
def test_roles_and_data_into_a_fresh_cluster(
    source: PgCluster, expected: dict[str, object], tmp_path: Path, pg_factory
) -> None:  # type: ignore[no-untyped-def]
    store = f"file://{tmp_path}/store"
    env = cli_env(tmp_path, P88_DATABASE_URL=source.url(SOURCE_DB), P88_STORAGE_URL=store)
    init_storage(env)
    ok(run_cli(["dump"], env))

    fresh = pg_factory("fresh")
    fresh.start()
    env_fresh = cli_env(tmp_path, P88_DATABASE_URL=fresh.url("postgres"), P88_STORAGE_URL=store)
    result = json_out(run_cli(["restore", "--dump", "latest", "--target-db", SOURCE_DB, "--json"], env_fresh))
    assert set(result["roles_created"]) == {"p88_owner", "p88_reader", "p88_writer"}
    assert "postgres" in result["roles_left_unchanged"]
    assert globals_dump(fresh) == globals_dump(source)
    assert_same(source, fresh, SOURCE_DB, expected)
    # the restored role can log in with its original password (scram hash carried over)
    assert fresh.scalar("SELECT rolpassword IS NOT NULL FROM pg_authid WHERE rolname = 'p88_reader'")


def test_restore_refuses_existing_database_unless_clean(
    source: PgCluster, expected: dict[str, object], tmp_path: Path
) -> None:
    env = cli_env(tmp_path, P88_DATABASE_URL=source.url(SOURCE_DB), P88_STORAGE_URL=f"file://{tmp_path}/store")
    init_storage(env)
    ok(run_cli(["dump", "--no-globals"], env))
    source.sql('CREATE DATABASE "occupied"')
    source.sql("CREATE TABLE keep_me (x int)", "occupied")
    r = run_cli(["restore", "--dump", "latest", "--target-db", "occupied"], env)
    assert r.returncode == ExitCode.REFUSED
    assert "already exists" in r.stderr and "--clean" in r.stderr
    assert source.sql("SELECT 1 FROM pg_tables WHERE tablename = 'keep_me'", "occupied")  # untouched

    ok(run_cli(["restore", "--dump", "latest", "--target-db", "occupied", "--clean", "--no-globals"], env))
    assert not source.sql("SELECT 1 FROM pg_tables WHERE tablename = 'keep_me'", "occupied")
    assert table_checksums(source, "occupied") == expected["data"]
    source.sql('DROP DATABASE "occupied"')


def test_restore_without_p88backup(source: PgCluster, expected: dict[str, object], tmp_path: Path) -> None:
    """DESIGN §4: the stored objects restore with age, zstd and pg_restore alone (the runbook's recipe)."""
    public, key = age_key(tmp_path)
    store = tmp_path / "store"
    env = cli_env(
        tmp_path, P88_DATABASE_URL=source.url(SOURCE_DB), P88_STORAGE_URL=f"file://{store}", P88_AGE_RECIPIENTS=public
    )
    init_storage(env)
    bid = json_out(run_cli(["dump", "--json"], env))["id"]
    dump_files = list((store / "dumps" / bid).glob("*.pgdump.zst.age"))
    globals_file = store / "dumps" / bid / "globals.sql.zst.age"
    assert len(dump_files) == 1 and globals_file.exists()

    source.sql('CREATE DATABASE "by hand"')
    bindir = source.bindir
    script = f"""
        set -euo pipefail
        age -d -i {key} '{globals_file}' | zstd -d -q > /dev/null
        age -d -i {key} '{dump_files[0]}' | zstd -d -q > '{tmp_path}/db.pgdump'
        {bindir}/pg_restore --exit-on-error --single-transaction -d '{source.url("by hand")}' '{tmp_path}/db.pgdump'
    """
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert table_checksums(source, "by hand") == expected["data"]
    amcheck(source, "by hand")
    source.sql('DROP DATABASE "by hand"')


def test_dump_logs_are_json_lines_with_a_summary(source: PgCluster, tmp_path: Path) -> None:
    env = cli_env(tmp_path, P88_DATABASE_URL=source.url(SOURCE_DB), P88_STORAGE_URL=f"file://{tmp_path}/s")
    init_storage(env)
    r = ok(run_cli(["dump"], env))
    lines = log_lines(r.stderr)
    finished = [ln for ln in lines if ln["msg"] == "dump finished"]
    assert len(finished) == 1
    assert finished[0]["databases"] == [SOURCE_DB] and finished[0]["stored_bytes"] > 0
    assert all(set(ln) >= {"ts", "level", "logger", "msg"} for ln in lines)


def memberships(pg: PgCluster, role: str) -> set[tuple[str, bool]]:
    """The roles ``role`` is a member of, with the ADMIN option."""
    rows = pg.sql(
        "SELECT r.rolname, m.admin_option FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid"
        " JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s",
        params=(role,),
    )
    return {(name, admin) for name, admin in rows}


@pytest.mark.matrix
def test_restore_next_to_live_roles_changes_none_of_them(tmp_path: Path, pg_factory) -> None:  # type: ignore[no-untyped-def]
    """Issue 10 item 14: the dump's globals grant a role it creates to a role the server already has.
    restore --dump creates the new roles with their memberships and reports that grant, unapplied."""
    source = pg_factory("source")
    source.start()
    source.psql(
        """
        CREATE ROLE p88_reader LOGIN;
        CREATE ROLE p88_team NOLOGIN;
        CREATE ROLE p88_writer LOGIN;
        GRANT p88_team TO p88_reader WITH ADMIN OPTION;
        GRANT p88_reader TO p88_writer;
        GRANT p88_team TO p88_writer;
        COMMENT ON ROLE p88_reader IS 'the source''s reader';
        CREATE DATABASE app OWNER p88_writer;
        """
    )
    source.sql("CREATE TABLE t AS SELECT g AS id FROM generate_series(1, 100) g", "app")
    store = f"file://{tmp_path}/store"
    source_env = cli_env(tmp_path, P88_DATABASE_URL=source.url("app"), P88_STORAGE_URL=store)
    init_storage(source_env)
    ok(run_cli(["dump"], source_env))

    live = pg_factory("live")
    live.start()
    live.psql("CREATE ROLE p88_reader LOGIN; COMMENT ON ROLE p88_reader IS 'live reader';")
    env = cli_env(tmp_path, P88_DATABASE_URL=live.url("postgres"), P88_STORAGE_URL=store)
    r = ok(run_cli(["restore", "--dump", "latest", "--target-db", "app", "--json"], env))
    result = json_out(r)

    assert memberships(live, "p88_reader") == set()  # the live role gained nothing
    assert live.scalar("SELECT shobj_description(oid, 'pg_authid') FROM pg_roles WHERE rolname = 'p88_reader'") == (
        "live reader"
    )
    assert sorted(result["roles_created"]) == ["p88_team", "p88_writer"]
    assert "p88_reader" in result["roles_left_unchanged"]
    assert {name for name, _ in memberships(live, "p88_writer")} == {"p88_reader", "p88_team"}
    [skipped] = result["globals_skipped"]
    assert skipped["statement"].startswith("GRANT p88_team TO p88_reader WITH ADMIN OPTION")
    assert skipped["reason"] == "it would change the existing role p88_reader"
    warned = [ln for ln in log_lines(r.stderr) if ln["msg"] == "globals statement not applied"]
    assert [w["statement"] for w in warned] == [skipped["statement"]]
    assert live.scalar("SELECT count(*) FROM t", "app") == 100
