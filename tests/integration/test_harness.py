"""The test harness itself: it stops at once when the service user cannot run the CLI, leaves no
server running after a test times out, and its integrity check of restored clusters fails on damage
on every major (amcheck where installed, pg_checksums where not).

The session-level behaviours run a small pytest session in a subprocess (a "probe") that uses this
suite's conftest, so they are tested the way a real run meets them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest

from tests.harness.helpers import REPO, amcheck
from tests.harness.postgres import PgCluster
from tests.harness.procs import service_user, service_user_cannot_run

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="servers run as another user only when tests run as root")


def closed_script(tmp: Path) -> Path:
    """A script in a directory only root may enter, as the CLI in root's 0700 home on a fresh machine."""
    closed = tmp / "closed"
    closed.mkdir()
    script = closed / "p88backup"
    script.write_text("#!/bin/sh\nexit 0\n")
    script.chmod(0o755)
    closed.chmod(0o700)
    return script


def run_probe(tmp: Path, test_source: str, conftest_extra: str = "", timeout: float = 240) -> tuple[int, str]:
    """Run ``test_source`` as its own pytest session with this suite's conftest; (exit code, output)."""
    probe = tmp / "probe" / "integration"
    probe.mkdir(parents=True)
    (probe / "conftest.py").write_text(f"from tests.conftest import *  # noqa: F403\n{conftest_extra}")
    (probe / "test_probe.py").write_text(test_source)
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-c",
            str(REPO / "pyproject.toml"),
            "--rootdir",
            str(REPO),
            "--basetemp",
            str(tmp / "probe-tmp"),
            "-q",
            str(probe),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    return r.returncode, r.stdout + r.stderr


@needs_root
def test_check_says_why_the_service_user_cannot_run_a_program(tmp_path: Path) -> None:
    script = closed_script(tmp_path)
    assert service_user_cannot_run([[sys.executable, "-c", "pass"]]) is None
    failure = service_user_cannot_run([[sys.executable, "-c", "pass"], [str(script), "--version"]])
    assert failure is not None and str(script) in failure and "Permission denied" in failure


@needs_root
def test_session_stops_at_once_when_the_service_user_cannot_run_the_cli(tmp_path: Path) -> None:
    """Before: archive_command failed with exit 126 on every segment and basebackup waited for ever."""
    script = closed_script(tmp_path)
    source = "def test_would_archive(pg_factory):\n    raise AssertionError('must not run')\n"
    t0 = time.monotonic()
    code, out = run_probe(
        tmp_path, source, f"import tests.harness.archiving\ntests.harness.archiving.P88 = {str(script)!r}\n"
    )
    assert code != 0
    assert f"the {service_user()} user cannot run {script}" in out and "Permission denied" in out, out
    assert "must not run" not in out
    assert time.monotonic() - t0 < 60


@needs_root
def test_a_test_that_times_out_leaves_no_server_running(tmp_path: Path) -> None:
    """A cluster started outside any fixture (as ``restore --pitr --start`` starts one) is stopped
    when its test times out. Before: it kept running after the session."""
    record = tmp_path / "datadir.txt"
    # The timeout is cut to 1 s once the server is up (pytest-timeout's own timer, so its own
    # handler fires), so a slow initdb on a busy machine cannot time the test out too early.
    source = f"""
import signal
import time
import pytest
from tests.harness.postgres import PgCluster

@pytest.mark.timeout(120)
def test_hangs(tmp_path):
    cluster = PgCluster.create(tmp_path / "pg")
    cluster.start()
    open({str(record)!r}, "w").write(str(cluster.datadir))
    signal.setitimer(signal.ITIMER_REAL, 1)
    time.sleep(600)
"""
    code, out = run_probe(tmp_path, source)
    assert code != 0 and "Timeout" in out, out
    datadir = Path(record.read_text())
    assert not (datadir / "postmaster.pid").exists(), out
    for proc in psutil.process_iter(["cmdline"]):
        assert str(datadir) not in " ".join(proc.info["cmdline"] or []), f"still running: {proc}"


def damage_a_page(pg: PgCluster) -> None:
    """Flip bytes in the middle of a table's first data page, behind the server's back."""
    pg.sql("CREATE TABLE victim AS SELECT g, md5(g::text) AS v FROM generate_series(1, 2000) g")
    pg.sql("CREATE INDEX victim_g ON victim (g)")
    rel = pg.scalar("SELECT pg_relation_filepath('victim')")
    pg.sql("CHECKPOINT")
    pg.stop()
    with open(pg.datadir / rel, "r+b") as fh:
        fh.seek(4096)
        fh.write(b"\xde\xad\xbe\xef" * 16)
    pg.start()


@pytest.mark.matrix
def test_integrity_check_passes_a_sound_cluster_and_fails_a_damaged_one(
    pg_factory: Callable[..., PgCluster], pg_major: int
) -> None:
    """Before: on 16 and 18 (no amcheck) the check failed on every cluster, sound or not."""
    pg = pg_factory("pg")
    pg.start()
    pg.sql("CREATE TABLE sound AS SELECT generate_series(1, 1000) AS x")
    check = amcheck(pg, "postgres")
    assert check == ("pg_amcheck --heapallindexed" if pg_major == 15 else "pg_checksums --check")
    assert pg.scalar("SELECT count(*) FROM sound") == 1000  # up again after the check
    damage_a_page(pg)
    with pytest.raises(AssertionError, match="found problems"):
        amcheck(pg, "postgres")
