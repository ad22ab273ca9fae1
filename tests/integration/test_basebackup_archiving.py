"""``basebackup`` never waits without end when WAL does not reach the archive (DESIGN §3.13).

The server runs as the postgres user; these tests give it an archive_command it
cannot run (a script in a directory only root may enter: ``Permission denied``,
exit 126, as on a fresh machine whose CLI lives in root's home) or one whose
storage is down, and check that ``basebackup`` stops within ``--wal-timeout``
with a message naming the failure, and leaves nothing listed or stored.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from p88backup.errors import ExitCode
from tests.harness.archiving import P88
from tests.harness.helpers import cli_env, init_storage, json_out, log_lines, run_cli
from tests.harness.postgres import PgCluster
from tests.harness.procs import free_port


def _unrunnable_archive_command(tmp: Path) -> str:
    closed = tmp / "closed"
    closed.mkdir()
    script = closed / "wal-push"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    os.chmod(closed, 0o700)  # the server's user (postgres, when we are root) cannot enter
    return str(script)


def _source(pg_factory: Callable[..., PgCluster], archive_command: str) -> PgCluster:
    pg = pg_factory(
        "src", settings={"archive_mode": "on", "archive_command": f"'{archive_command} %p'", "archive_timeout": "0"}
    )
    pg.start()
    pg.sql("CREATE TABLE t AS SELECT g, md5(g::text) FROM generate_series(1, 20000) g")
    return pg


def _stored(tmp: Path) -> list[str]:
    store = tmp / "store"
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file()) if store.exists() else []


def test_failing_archive_command_stops_the_backup_after_its_data_is_sent(
    pg_factory: Callable[..., PgCluster], tmp_path: Path
) -> None:
    pg = _source(pg_factory, _unrunnable_archive_command(tmp_path))
    env = cli_env(tmp_path, P88_DATABASE_URL=pg.url(), P88_STORAGE_URL=f"file://{tmp_path}/store")
    init_storage(env)
    t0 = time.monotonic()
    r = run_cli(["basebackup", "--no-archive-check", "--wal-timeout", "15"], env, timeout=120)
    took = time.monotonic() - t0
    assert r.returncode == ExitCode.ARCHIVING, r.stderr
    errors = [line for line in log_lines(r.stderr) if line["level"] == "error"]
    message = errors[-1]["msg"]
    assert "waited" in message and "cannot be run at all" in message, message
    # It names the segment the archiver is stuck on (126 is not counted in pg_stat_archiver).
    stuck = pg.scalar("SELECT min(name) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'")
    assert stuck and stuck.removesuffix(".ready") in message, message
    assert any(line["msg"].startswith("backup data sent") for line in log_lines(r.stderr))
    assert took < 15 + 30, f"took {took:.0f}s"
    assert json_out(run_cli(["list", "--json"], env)) == []
    assert not [k for k in _stored(tmp_path) if k.startswith("basebackups/")], _stored(tmp_path)


def test_archive_check_refuses_to_start_a_backup_when_wal_is_not_archived(
    pg_factory: Callable[..., PgCluster], tmp_path: Path
) -> None:
    pg = _source(pg_factory, _unrunnable_archive_command(tmp_path))
    env = cli_env(tmp_path, P88_DATABASE_URL=pg.url(), P88_STORAGE_URL=f"file://{tmp_path}/store")
    init_storage(env)
    t0 = time.monotonic()
    r = run_cli(["basebackup", "--wal-timeout", "8"], env, timeout=120)
    assert r.returncode == ExitCode.ARCHIVING, r.stderr
    assert "archiving does not work" in r.stderr and "cannot be run at all" in r.stderr
    assert time.monotonic() - t0 < 8 + 20
    # Refused before pg_basebackup ran: the server never entered backup mode.
    assert pg.scalar("SELECT count(*) FROM pg_stat_progress_basebackup") == 0
    assert not [k for k in _stored(tmp_path) if k.startswith("basebackups/")]


def test_storage_down_for_archive_command_stops_the_backup(
    pg_factory: Callable[..., PgCluster], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "archive.toml"
    config.write_text('storage_url = "s3://nowhere/p88"\nretry_deadline_seconds = 1\n')
    config.chmod(0o644)
    # The server inherits this environment: every wal-push goes to an S3 endpoint nothing listens on.
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    for key, value in (("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y"), ("AWS_DEFAULT_REGION", "us-east-1")):
        monkeypatch.setenv(key, value)
    pg = _source(pg_factory, f"{P88} --config {config} wal-push")
    env = cli_env(tmp_path, P88_DATABASE_URL=pg.url(), P88_STORAGE_URL=f"file://{tmp_path}/store")
    init_storage(env)
    r = run_cli(["basebackup", "--no-archive-check", "--wal-timeout", "10", "--json"], env, timeout=120)
    assert r.returncode == ExitCode.ARCHIVING, r.stderr
    assert "archive_command failed" in r.stderr
    assert r.stdout.strip() == ""
