"""Continuous archiving and point-in-time recovery, end to end on real PostgreSQL.

The scenario (issue acceptance 1): base backup under a pgbench write load;
rows A committed; writes stop and the source is dumped (pg_dumpall) at T;
rows B committed and a table dropped; restore --pitr T --start gives a
promoted server whose pg_dumpall equals the one taken at T; amcheck passes.
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from p88backup.errors import ExitCode
from tests.harness.archiving import P88, Archived, dumpall, make_archived, psql_at, stop_restored, stop_streamer
from tests.harness.helpers import amcheck, json_out, ok
from tests.harness.postgres import PgCluster
from tests.harness.procs import free_port


@dataclass
class Story:
    at_t: str  # pg_dumpall of the source at T
    t: datetime
    lsn: str
    xid: int
    final: str  # pg_dumpall after B and the drop


def write_story(arch: Archived) -> Story:
    pg = arch.pg
    pg.sql("CREATE DATABASE app")
    subprocess.run(pg.client("pgbench", "-i", "-s", "2", "-q", "app"), check=True, capture_output=True)
    pg.sql("CREATE TABLE important (id int PRIMARY KEY, what text)", "app")
    pg.sql("CREATE TABLE doomed (id int PRIMARY KEY)", "app")
    pg.sql("INSERT INTO doomed SELECT generate_series(1, 100)", "app")
    load = subprocess.Popen(
        pg.client("pgbench", "-c", "2", "-T", "60", "-n", "app"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)
        summary = json_out(arch.cli("basebackup", "--json", "--wal-timeout", "120"))
        assert summary["kind"] == "basebackup" and summary["timeline"] == 1
        time.sleep(1)
    finally:
        load.send_signal(signal.SIGINT)
        load.wait(30)
    with pg.connect("app", autocommit=False) as conn:  # rows A, and the xid that wrote them
        conn.execute("INSERT INTO important SELECT g, 'A' || g FROM generate_series(1, 50) g")
        xid = int(conn.execute("SELECT txid_current()").fetchone()[0])
        conn.commit()
    lsn = pg.scalar("SELECT pg_current_wal_insert_lsn()::text")
    time.sleep(0.2)
    t = datetime.now(UTC)
    at_t = dumpall(pg)
    time.sleep(1.2)
    pg.sql("INSERT INTO important SELECT g, 'B' || g FROM generate_series(51, 80) g", "app")  # rows B
    pg.sql("DROP TABLE doomed", "app")
    arch.switch_and_wait()
    return Story(at_t, t, lsn, xid, dumpall(pg))


def restore(arch: Archived, target: str, name: str, *extra: str) -> dict[str, object]:
    result = json_out(
        arch.cli("restore", "--pitr", target, "--target-dir", str(arch.tmp / name), "--start", "--json", *extra)
    )
    assert result["promoted"] is True
    return result


@pytest.fixture(params=["push", "stream"])
def story(
    request: pytest.FixtureRequest, pg_factory: Callable[..., PgCluster], tmp_path: Path
) -> Iterator[tuple[Archived, Story]]:
    arch = make_archived(pg_factory, tmp_path, f"file://{tmp_path}/store", request.param)
    try:
        yield arch, write_story(arch)
    finally:
        stop_streamer(arch)
        for d in tmp_path.iterdir():
            if d.name.startswith("r-"):
                stop_restored(arch, d.name)


@pytest.mark.matrix
def test_pitr_to_a_time_equals_the_source_at_that_time(story: tuple[Archived, Story]) -> None:
    arch, s = story
    result = restore(arch, s.t.isoformat(), "r-time")
    port = int(result["port"])  # type: ignore[arg-type]
    assert result["timeline"] == 2
    assert "recovery stopping before commit" in str(result["stop_reason"])
    assert dumpall(arch.pg, port) == s.at_t
    assert psql_at(arch.pg, port, "SELECT count(*), min(what) FROM important") == "50|A1"
    assert psql_at(arch.pg, port, "SELECT count(*) FROM doomed") == "100"
    amcheck_port(arch.pg, port)


def amcheck_port(pg: PgCluster, port: int) -> None:
    amcheck(PgCluster(pg.datadir, port, pg.bindir, pg.logfile, pg.socket_dir), "app")


@pytest.mark.matrix
def test_pitr_to_lsn_xid_name_latest_and_immediate(story: tuple[Archived, Story]) -> None:
    arch, s = story
    for target, name in ((f"lsn:{s.lsn}", "r-lsn"), (f"xid:{s.xid}", "r-xid")):
        port = int(restore(arch, target, name)["port"])  # type: ignore[arg-type]
        assert dumpall(arch.pg, port) == s.at_t, target
        stop_restored(arch, name)

    port = int(restore(arch, "latest", "r-latest")["port"])  # type: ignore[arg-type]
    assert dumpall(arch.pg, port) == s.final
    assert psql_at(arch.pg, port, "SELECT count(*) FROM important") == "80"
    assert psql_at(arch.pg, port, "SELECT count(*) FROM doomed").startswith("ERROR")
    stop_restored(arch, "r-latest")

    stopped = restore(arch, "immediate", "r-immediate", "--stop")  # start, promote, shut down cleanly
    target = arch.tmp / "r-immediate"
    assert stopped["stopped"] and not (target / "postmaster.pid").exists()
    conf = (target / "postgresql.auto.conf").read_text()
    # Nothing of the restore is left: no recovery setting, no trial setting (its block is gone).
    assert "p88backup restore" not in conf and "restore_command" not in conf and "recovery_target" not in conf
    again = PgCluster(target, free_port(), arch.pg.bindir, target / "log" / "again.log", arch.pg.socket_dir)
    with open(target / "postgresql.auto.conf", "a") as fh:  # the source is still running on its port
        # --stop left the cluster's own settings (archive_command into this archive): this check
        # must not become a second production archiving a new timeline beside the source.
        fh.write(f"port = {again.port}\narchive_mode = off\n")
    again.start()  # as any server would, e.g. the db container taking over the directory
    assert again.scalar("SELECT pg_is_in_recovery()") is False
    assert again.scalar("SELECT count(*) FROM important", "app") == 0  # only up to the backup's end
    again.stop()

    ok(arch.cli("restore-point", "before-c"))
    arch.pg.sql("INSERT INTO important VALUES (1000, 'C')", "app")
    arch.switch_and_wait()
    port = int(restore(arch, "name:before-c", "r-name")["port"])  # type: ignore[arg-type]
    assert psql_at(arch.pg, port, "SELECT count(*), max(id) FROM important") == "80|80"


@pytest.mark.matrix
def test_second_pitr_on_the_new_timeline(pg_factory: Callable[..., PgCluster], tmp_path: Path) -> None:
    """Timeline 2 -> 3: the first restore becomes the new primary and archives; a later PITR follows it."""
    arch = make_archived(pg_factory, tmp_path, f"file://{tmp_path}/store", "push")
    s = write_story(arch)
    archive_cmd = f"{P88} --config {arch.config} wal-push %p"
    first = restore(arch, s.t.isoformat(), "r-tl2", "--archive-mode", "on", "--set", f"archive_command={archive_cmd}")
    port = int(first["port"])  # type: ignore[arg-type]
    assert first["timeline"] == 2
    psql_at(arch.pg, port, "INSERT INTO important VALUES (500, 'on timeline 2')")
    time.sleep(0.3)
    t2 = datetime.now(UTC)
    expected = dumpall(arch.pg, port)
    time.sleep(1.2)
    psql_at(arch.pg, port, "INSERT INTO important VALUES (501, 'after t2')")
    psql_at(arch.pg, port, "SELECT pg_switch_wal()")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        tl2 = json_out(arch.cli("wal-verify", "--json"))
        if tl2["newest_timeline"] == 2 and str(tl2["newest_segment"]).startswith("00000002"):
            break
        time.sleep(0.5)
    assert tl2["timelines"][0]["timeline"] == 2
    second = restore(arch, t2.isoformat(), "r-tl3")
    assert second["timeline"] == 3 and second["timeline_followed"] == 2
    assert dumpall(arch.pg, int(second["port"])) == expected  # type: ignore[arg-type]
    stop_restored(arch, "r-tl2")
    stop_restored(arch, "r-tl3")


def test_pitr_with_s3_storage(pg_factory: Callable[..., PgCluster], tmp_path: Path, s3_env: dict[str, str]) -> None:
    aws = {k: v for k, v in s3_env.items() if k.startswith("AWS_")}
    arch = make_archived(pg_factory, tmp_path, s3_env["P88_STORAGE_URL"], "push", aws)
    s = write_story(arch)
    try:
        port = int(restore(arch, s.t.isoformat(), "r-s3")["port"])  # type: ignore[arg-type]
        assert dumpall(arch.pg, port) == s.at_t
        amcheck_port(arch.pg, port)
    finally:
        stop_restored(arch, "r-s3")


def test_pitr_refuses_unreachable_targets_and_non_empty_dirs(story: tuple[Archived, Story]) -> None:
    arch, s = story
    r = arch.cli("restore", "--pitr", "2001-01-01T00:00:00Z", "--target-dir", str(arch.tmp / "r-early"))
    assert r.returncode == ExitCode.PITR_TARGET and "before the oldest usable base backup" in r.stderr
    r = arch.cli("restore", "--pitr", "2999-01-01T00:00:00Z", "--target-dir", str(arch.tmp / "r-late"))
    assert r.returncode == ExitCode.PITR_TARGET and "after the newest archived WAL" in r.stderr
    r = arch.cli("restore", "--pitr", "2026-11-27 03:00", "--target-dir", str(arch.tmp / "r-naive"))
    assert r.returncode == ExitCode.PITR_TARGET and "has no time zone" in r.stderr
    r = arch.cli("restore", "--pitr", "lsn:FF/0", "--target-dir", str(arch.tmp / "r-lsn"))
    assert r.returncode == ExitCode.PITR_TARGET and "beyond the newest archived WAL" in r.stderr
    busy = arch.tmp / "r-busy"
    busy.mkdir()
    (busy / "precious").write_text("keep me")
    r = arch.cli("restore", "--pitr", "latest", "--target-dir", str(busy))
    assert r.returncode == ExitCode.REFUSED and "not empty" in r.stderr
    assert (busy / "precious").read_text() == "keep me"
