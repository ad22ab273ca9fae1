"""A scheduler job's child killed mid-dump leaves no process holding the job's stdout (real PostgreSQL).

The daemon reads a job's ``--json`` from its stdout. A directory-format ``pg_dump``, started by
``p88backup dump`` in a session of its own, used to inherit that stdout: killed (OOM), the dump
left pg_dump running, and pg_dump kept the daemon's end of the pipe from ever seeing its end.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.harness.helpers import REPO, cli_env, init_storage
from tests.harness.postgres import PgCluster
from tests.harness.procs import children_named


def directory_pg_dumps(parent: int) -> list[int]:
    """The directory-format pg_dump children of ``parent`` (not the ``pg_dump --version`` probes)."""
    found = []
    for pid in children_named(parent, "pg_dump"):
        try:
            if b"--format=directory" in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                found.append(pid)
        except OSError:
            continue
    return found


@pytest.mark.timeout(300)
def test_a_killed_directory_dump_leaves_no_process_holding_its_stdout(
    pg_factory: Callable[..., PgCluster], tmp_path: Path
) -> None:
    """Before: pg_dump's stdout was the dump's own (a pipe here, as in the daemon): after SIGKILL
    of the dump, reading that pipe waited for as long as pg_dump lived (here: on a lock, forever)."""
    pg = pg_factory("src")
    pg.start()
    pg.sql("CREATE DATABASE locked")
    pg.psql("CREATE TABLE big AS SELECT g FROM generate_series(1, 1000) g;", "locked")
    env = cli_env(
        tmp_path,
        P88_STORAGE_URL=f"file://{tmp_path}/store",
        P88_DATABASE_URL=pg.url("locked"),
        P88_DUMP__FORMAT="directory",
        P88_DUMP__JOBS="2",
    )
    init_storage(env)
    holder = pg.connect("locked", autocommit=False)
    pg_dumps: list[int] = []
    try:
        holder.execute("LOCK TABLE big IN ACCESS EXCLUSIVE MODE")  # pg_dump waits here, for as long as we like
        dump = subprocess.Popen(
            [sys.executable, "-m", "p88backup", "--log-format", "json", "dump", "--json"],
            env=env,
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while not (pg_dumps := directory_pg_dumps(dump.pid)):
            assert dump.poll() is None, "the dump ended before pg_dump started"
            assert time.monotonic() < deadline, "pg_dump never started"
            time.sleep(0.05)
        assert os.readlink(f"/proc/{pg_dumps[0]}/fd/1") == "/dev/null"
        dump.kill()  # the OOM killer, say: no cleanup runs
        dump.wait(10)
        assert dump.stdout is not None
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(dump.stdout.read()), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(10)
        assert not reader.is_alive(), "the dump's stdout is still held open by the pg_dump it left behind"
        assert got == [b""]
    finally:
        holder.close()
        for pid in pg_dumps:
            try:
                os.killpg(pid, signal.SIGKILL)  # its own session: pg_dump and any workers
            except ProcessLookupError:
                pass
