"""archive_command / restore_command semantics (DESIGN §2, §3.2), against real WAL."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from p88backup.errors import ExitCode
from tests.harness.archiving import Archived, make_archived
from tests.harness.helpers import cli_env, init_storage, json_out, ok, run_cli
from tests.harness.postgres import PgCluster
from tests.harness.s3 import start_minio


def segments_archived(arch: Archived, count: int) -> list[str]:
    for _ in range(count):
        arch.pg.sql("CREATE TABLE IF NOT EXISTS filler (x int); INSERT INTO filler SELECT generate_series(1, 5000)")
        arch.switch_and_wait()
    report = json_out(arch.cli("wal-verify", "--json"))
    assert report["ok"], report
    return sorted(p.name.removesuffix(".zst") for p in (arch.tmp / "store" / "wal" / "00000001").glob("*[0-9A-F].zst"))


@pytest.fixture
def archived(pg_factory: Callable[..., PgCluster], tmp_path: Path) -> Archived:
    return make_archived(pg_factory, tmp_path, f"file://{tmp_path}/store", "push")


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.matrix
def test_push_is_idempotent_and_never_overwrites(archived: Archived, tmp_path: Path) -> None:
    names = segments_archived(archived, 3)
    assert archived.pg.scalar("SELECT failed_count FROM pg_stat_archiver") == 0
    name = names[-1]
    stored = tmp_path / "store" / "wal" / "00000001" / f"{name}.zst"
    before = sha(stored)

    local = tmp_path / "copy" / name
    local.parent.mkdir()
    r = run_cli(["wal-fetch", name, str(local)], archived.env)
    assert r.returncode == 0, r.stderr
    assert local.stat().st_size == 16 * 1024 * 1024

    r = run_cli(["wal-push", str(local)], archived.env)  # identical content: success
    assert r.returncode == 0, r.stderr
    assert "already archived (identical)" in r.stderr

    data = bytearray(local.read_bytes())
    data[8 * 1024 * 1024] ^= 0xFF  # different content, same name
    local.write_bytes(bytes(data))
    r = run_cli(["wal-push", str(local)], archived.env)
    assert r.returncode == ExitCode.CONFLICT, r.stderr
    assert "already archived with different content" in r.stderr and "not overwriting" in r.stderr
    assert sha(stored) == before


def test_push_rejects_what_is_not_wal(archived: Archived, tmp_path: Path) -> None:
    bogus = tmp_path / "not-wal.txt"
    bogus.write_text("hello")
    assert run_cli(["wal-push", str(bogus)], archived.env).returncode != 0
    short = tmp_path / "000000010000000000000099"
    short.write_bytes(b"\0" * 1000)
    r = run_cli(["wal-push", str(short)], archived.env)
    assert r.returncode == ExitCode.VERIFY_FAILED, r.stderr
    r = run_cli(["wal-push", str(tmp_path / "000000010000000000000098")], archived.env)
    assert r.returncode != 0 and "no such file" in r.stderr


def test_fetch_missing_is_exit_1_and_other_failures_126(archived: Archived, tmp_path: Path) -> None:
    names = segments_archived(archived, 2)
    assert len(names) >= 2
    r = run_cli(["wal-fetch", "0000000100000000000000F0", str(tmp_path / "x")], archived.env)
    assert r.returncode == 1, r.stderr
    r = run_cli(["wal-fetch", "00000009.history", str(tmp_path / "x")], archived.env)
    assert r.returncode == 1
    assert not (tmp_path / "x").exists()

    # a damaged object: not "missing", so recovery must abort (126), and nothing is delivered
    obj = tmp_path / "store" / "wal" / "00000001" / f"{names[-1]}.zst"
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x55
    obj.write_bytes(bytes(data))
    r = run_cli(["wal-fetch", names[-1], str(tmp_path / "y")], archived.env)
    assert r.returncode == 126, r.stderr
    assert not (tmp_path / "y").exists()

    # a file that is not the segment its name says
    other = tmp_path / "store" / "wal" / "00000001" / f"{names[0]}.zst"
    obj.write_bytes(other.read_bytes())
    r = run_cli(["wal-fetch", names[-1], str(tmp_path / "z")], archived.env)
    assert r.returncode == 126 and "belongs to another segment" in r.stderr


def test_fetch_with_s3_down_exits_126(tmp_path: Path) -> None:
    server = start_minio(tmp_path / "minio")
    bucket = server.create_bucket("walfetch")
    env = cli_env(tmp_path, P88_STORAGE_URL=f"s3://{bucket}/p88", P88_RETRY_DEADLINE_SECONDS="2", **server.env())
    init_storage(env)
    assert run_cli(["wal-fetch", "000000010000000000000001", str(tmp_path / "x")], env).returncode == 1
    server.stop()
    t0 = time.monotonic()
    r = run_cli(["wal-fetch", "000000010000000000000001", str(tmp_path / "x")], env)
    assert r.returncode == 126, r.stderr
    assert "cannot reach S3" in r.stderr and time.monotonic() - t0 < 30


def test_recovery_aborts_instead_of_promoting_when_s3_is_down(
    pg_factory: Callable[..., PgCluster], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server = start_minio(tmp_path / "minio")
    try:
        for k, v in server.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.setenv("P88_RETRY_DEADLINE_SECONDS", "2")
        bucket = server.create_bucket("recovery")
        arch = make_archived(pg_factory, tmp_path, f"s3://{bucket}/p88", "push", server.env())
        arch.pg.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) x")
        ok(arch.cli("basebackup"))
        arch.pg.sql("INSERT INTO t SELECT generate_series(1, 1000)")
        arch.switch_and_wait()
        target = tmp_path / "restored"
        ok(arch.cli("restore", "--pitr", "latest", "--target-dir", str(target), "--port", "55011"))
        server.stop()  # the archive is unreachable when recovery needs it

        user = "postgres" if os.geteuid() == 0 else None
        log = target / "log" / "recovery.log"
        log.parent.mkdir(exist_ok=True)
        if user:
            subprocess.run(["chown", "-R", user, str(target)], check=True)
        started = subprocess.run(
            [str(arch.pg.bindir / "pg_ctl"), "-D", str(target), "-l", str(log), "-w", "-t", "60", "start"],
            user=user,
            group=user,
            extra_groups=[] if user else None,
            capture_output=True,
            text=True,
            cwd="/",
        )
        assert log.exists(), started.stderr
        deadline = time.monotonic() + 60
        while (target / "postmaster.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        text = log.read_text()
        assert not (target / "postmaster.pid").exists(), "the server kept running without its WAL"
        assert "FATAL:  could not restore file" in text
        assert "selected new timeline" not in text and "database system is ready to accept connections" not in text
        assert (target / "recovery.signal").exists()  # never promoted: a later retry resumes recovery
        assert not list((target / "pg_wal").glob("*.history"))
    finally:
        server.stop()


def test_wal_verify_reports_a_deleted_segment_as_a_gap(archived: Archived, tmp_path: Path) -> None:
    ok(archived.cli("basebackup"))
    names = segments_archived(archived, 4)
    report = json_out(archived.cli("wal-verify", "--json"))
    assert report["ok"] and report["base_backups"][0]["ok"]
    middle = names[-2]
    (tmp_path / "store" / "wal" / "00000001" / f"{middle}.zst").unlink()
    r = archived.cli("wal-verify", "--json")
    assert r.returncode == ExitCode.VERIFY_FAILED
    report = json.loads(r.stdout)
    assert report["ok"] is False
    assert report["gaps"] == [{"from": middle, "to": middle}]
    assert report["base_backups"][0]["gaps"] == [{"from": middle, "to": middle}]
    assert middle in r.stderr
    r = archived.cli("restore", "--pitr", "latest", "--target-dir", str(tmp_path / "r-gap"))
    assert r.returncode == ExitCode.PITR_TARGET and f"WAL is missing from the archive: {middle}" in r.stderr


def test_small_segments_past_the_names_16mb_segments_have(pg_factory: Callable[..., PgCluster], tmp_path: Path) -> None:
    """initdb --wal-segsize=1 (issue 10 item 8): ...00FF is followed by ...0100, a name that does
    not exist with 16 MB segments. Archiving must not stall there, and the archive must read right."""

    def past_ff(name: str, **kw: Any) -> PgCluster:
        cluster = pg_factory(name, initdb_args=("--data-checksums", "--wal-segsize=1"), **kw)
        # Start writing WAL just before the interesting names instead of writing 254 MB to get there.
        cluster._run_as_service(
            [str(cluster.bindir / "pg_resetwal"), "-l", "0000000100000000000000FE", "-D", str(cluster.datadir)]
        )
        return cluster

    arch = make_archived(past_ff, tmp_path, f"file://{tmp_path}/store", "push")
    names = segments_archived(arch, 4)
    assert "000000010000000000000100" in names and names[-1] > "000000010000000000000100", names
    assert arch.pg.scalar("SELECT failed_count FROM pg_stat_archiver") == 0
    report = json_out(arch.cli("wal-verify", "--json"))
    assert report["ok"] and report["segment_size"] == 1024 * 1024 and report["newest_segment"] == names[-1], report

    back = tmp_path / "back"
    ok(run_cli(["wal-fetch", "000000010000000000000100", str(back)], arch.env))
    assert back.stat().st_size == 1024 * 1024
    after = f"00000001000000000000{int(names[-1][16:], 16) + 5:04X}"
    r = run_cli(["wal-fetch", after, str(tmp_path / "x")], arch.env)
    assert r.returncode == 1, r.stderr  # not archived (yet): "not found", never 126


def test_encrypted_archive_with_the_key_off_the_server(pg_factory: Callable[..., PgCluster], tmp_path: Path) -> None:
    """Issue 10 item 6: the recommended setup keeps the age identity off the database server; a
    re-push of an identical segment (a retry after a crash) must still succeed there."""
    import pyrage

    key = pyrage.x25519.Identity.generate()
    identity = tmp_path / "backup.key"
    identity.write_text(str(key) + "\n")
    arch = make_archived(pg_factory, tmp_path, f"file://{tmp_path}/store", "push")
    # What archive_command reads from now on: encrypt, no identity.
    arch.config.write_text(arch.config.read_text() + f'age_recipients = ["{key.to_public()}"]\n')
    arch.pg.sql("CREATE TABLE t AS SELECT generate_series(1, 10000) x")
    arch.switch_and_wait()
    stored = sorted((tmp_path / "store" / "wal" / "00000001").glob("*.zst.age"))
    assert stored, "nothing was archived encrypted"
    name = stored[-1].name.removesuffix(".zst.age")
    assert (stored[-1].parent / f"{name}.digest.json").exists()
    assert arch.pg.scalar("SELECT failed_count FROM pg_stat_archiver") == 0

    local = tmp_path / "copy" / name
    local.parent.mkdir()
    ok(run_cli(["wal-fetch", name, str(local)], arch.env | {"P88_AGE_IDENTITY_FILE": str(identity)}))
    before = sha(stored[-1])
    r = run_cli(["--config", str(arch.config), "wal-push", str(local)], arch.env)  # as archive_command runs it
    assert r.returncode == 0 and "already archived (identical)" in r.stderr, r.stderr
    data = bytearray(local.read_bytes())
    data[4 * 1024 * 1024] ^= 0xFF
    local.write_bytes(bytes(data))
    r = run_cli(["--config", str(arch.config), "wal-push", str(local)], arch.env)
    assert r.returncode == ExitCode.CONFLICT and "different content" in r.stderr, r.stderr
    assert sha(stored[-1]) == before
