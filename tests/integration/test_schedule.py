"""`p88backup schedule` end to end (issue 13 acceptance 2): the real daemon as a process, against real
PostgreSQL and MinIO, with a fast schedule (six-field cron expressions, seconds first).

- it takes a dump (then verifies it) and a base backup, wal-stream archives continuously, /healthz
  answers 200 once protected and turns 503 when PostgreSQL stops, /metrics parses;
- storage down at start-up delays archiving but the daemon lives on, and archiving catches up;
- SIGTERM during a dump: exit 0 within the grace period, no dump listed, nothing of that run left.

Before: there was no `schedule` command at all (the compose sidecar's command did not exist).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.harness.helpers import REPO, cli_env, init_storage, json_out, log_lines, new_bucket, run_cli, unavailable
from tests.harness.postgres import PgCluster
from tests.harness.procs import free_port
from tests.harness.s3 import S3Server, start_minio

PROBE_BUDGET = 30  # the compose healthcheck's interval: a stopped database must show within one probe


def at(seconds: float) -> str:
    """A six-field schedule that fires once a day, ``seconds`` from now."""
    when = datetime.now(UTC) + timedelta(seconds=seconds)
    return f"{when.second} {when.minute} {when.hour} * * *"


class Daemon:
    def __init__(self, proc: subprocess.Popen[bytes], log: Path, port: int) -> None:
        self.proc, self.log, self.port = proc, log, port

    def lines(self) -> list[dict[str, Any]]:
        return log_lines(self.log.read_text(errors="replace")) if self.log.exists() else []

    def said(self, msg: str) -> list[dict[str, Any]]:
        return [line for line in self.lines() if line.get("msg") == msg]

    def healthz(self) -> tuple[int, dict[str, Any]] | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())
        except OSError:
            return None  # not listening yet

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-6000:] if self.log.exists() else "(no log)"

    def wait(self, check: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = check()
            if value:
                return value
            assert self.proc.poll() is None, (
                f"the daemon exited ({self.proc.returncode}) waiting for {what}\n{self.tail()}"
            )
            time.sleep(0.5)
        raise AssertionError(f"{what}: not within {timeout:.0f}s\n{self.tail()}")

    def terminate(self) -> tuple[int, float]:
        """SIGTERM; (exit status, seconds it took)."""
        began = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(120)
        return rc, time.monotonic() - began


@contextmanager
def daemon(env: dict[str, str], tmp_path: Path, *args: str) -> Iterator[Daemon]:
    port = free_port()
    log = tmp_path / "schedule.log"
    env = {**env, "P88_SCHEDULE__LISTEN": f"127.0.0.1:{port}"}
    with log.open("ab") as out:  # a file, not a pipe: a full pipe would stall the daemon and its jobs
        proc = subprocess.Popen(
            [sys.executable, "-m", "p88backup", "--log-format", "json", "schedule", *args],
            env=env,
            cwd=REPO,
            stdout=out,
            stderr=out,
        )
    d = Daemon(proc, log, port)
    try:
        yield d
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        for line in d.said("wal-stream started"):  # no child outlives the daemon
            _gone(line["pid"])


def _gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        if Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z"):
            return  # exited, not yet reaped by its parent (gone with it)
        time.sleep(0.2)
    raise AssertionError(f"child {pid} of the daemon is still running")


def keys(server: S3Server, bucket: str, prefix: str) -> list[str]:
    out: list[str] = []
    for page in server.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def environment(pg: PgCluster, server: S3Server, bucket: str, tmp_path: Path, **extra: str) -> dict[str, str]:
    env = cli_env(
        tmp_path,
        P88_DATABASE_URL=pg.url("app"),
        P88_STORAGE_URL=f"s3://{bucket}/p88",
        **server.env(),
        **{f"P88_SCHEDULE__{job}": "off" for job in ("DUMP", "BASEBACKUP", "EXPIRE", "WAL_VERIFY", "DRILL", "REINDEX")},
    )
    env.update(extra)
    return env


def source(pg_factory: Callable[..., PgCluster]) -> PgCluster:
    pg = pg_factory("src")
    pg.start()
    pg.sql("CREATE DATABASE app")
    pg.psql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g;", "app")
    return pg


def switch_wal(pg: PgCluster) -> str:
    """Write, close the segment, and return its name."""
    pg.psql("INSERT INTO t SELECT g, 'x' FROM generate_series(1, 1000) g;", "app")
    segment = str(pg.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())"))
    pg.sql("SELECT pg_switch_wal()")
    return segment


@pytest.mark.timeout(600)
def test_the_daemon_backs_up_archives_and_says_when_protection_stops(
    pg_factory: Callable[..., PgCluster], tmp_path: Path, minio: S3Server
) -> None:
    pg = source(pg_factory)
    bucket = new_bucket(minio)
    env = environment(
        pg,
        minio,
        bucket,
        tmp_path,
        P88_SCHEDULE__DUMP=at(10),
        P88_SCHEDULE__BASEBACKUP=at(20),
        P88_SCHEDULE__WAL_VERIFY="*/3 * * * * *",
        P88_STATUS__MAX_DUMP_AGE="1h",
        P88_STATUS__MAX_BASEBACKUP_AGE="1h",
        P88_STATUS__MAX_WAL_AGE="15m",
        P88_SCHEDULE__STOP_GRACE_SECONDS="30",
    )
    init_storage(env)
    with daemon(env, tmp_path) as d:
        # Not protected yet: no dump, no base backup. Unhealthy, and the body says why.
        code, body = d.wait(lambda: (h := d.healthz()) and h[1]["status"]["checked_at"] and h, 60, "a verdict")
        assert code == 503 and body["healthy"] is False
        assert any(r.startswith("status: dump_age: no dump at all") for r in body["reasons"]), body

        # The jobs run at their times: a dump (then verify of it) and a base backup appear.
        rows = d.wait(lambda: (r := json_out(run_cli(["list", "--json"], env))) and len(r) == 2 and r, 180, "backups")
        assert sorted(r["kind"] for r in rows) == ["basebackup", "dump"]
        dump_id = next(r["id"] for r in rows if r["kind"] == "dump")
        d.wait(lambda: any(x["job"] == "verify" for x in d.said("job finished")), 60, "verify after the dump")

        # Protected: 200 (the status check runs again after each job; wal-stream is caught up).
        code, body = d.wait(lambda: (h := d.healthz()) and h[0] == 200 and h, 90, "healthy")
        assert body["healthy"] is True and body["reasons"] == [] and body["wal_stream"]["healthy"] is True

        # wal-stream archives continuously: each switched segment reaches S3.
        for _ in range(2):
            segment = switch_wal(pg)
            d.wait(lambda s=segment: keys(minio, bucket, f"p88/wal/{s[:8]}/{s}"), 60, f"{segment} archived")

        # /metrics parses and has the jobs' series and the WAL freshness of the status check.
        from prometheus_client.parser import text_string_to_metric_families

        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(d.metrics())
            for s in family.samples
        }
        for job in ("dump", "verify", "basebackup", "wal-verify"):
            assert samples[("p88backup_last_success_timestamp_seconds", (("job", job),))] > time.time() - 600, job
        assert samples[("p88backup_last_bytes", (("job", "dump"),))] > 0
        assert samples[("p88backup_newest_wal_age_seconds", ())] < 900

        # One line at each job's start and end, with duration and result; verify checks that dump.
        started = {(x["job"], x["pid"]) for x in d.said("job started")}
        finished = {x["job"]: x for x in d.said("job finished") if x["job"] in ("dump", "verify", "basebackup")}
        assert {"dump", "verify", "basebackup"} <= {job for job, _ in started}
        for job in ("dump", "verify", "basebackup"):
            assert finished[job]["result"] == "ok" and finished[job]["seconds"] > 0, finished[job]
            assert (job, finished[job]["pid"]) in started
        assert finished["dump"]["id"] == dump_id
        assert next(x for x in d.said("job started") if x["job"] == "verify")["args"][-1] == dump_id

        # One wal-verify at a time, though one is due every 3 s.
        spans: dict[int, list[float]] = {}
        for line in d.lines():
            if line.get("job") == "wal-verify" and line.get("msg") in ("job started", "job finished"):
                spans.setdefault(line["pid"], []).append(datetime.fromisoformat(line["ts"]).timestamp())
        ordered = sorted(v for v in spans.values() if len(v) == 2)
        assert len(ordered) >= 2
        for earlier, later in zip(ordered, ordered[1:], strict=False):
            assert later[0] >= earlier[1], "two wal-verify runs overlapped"

        # PostgreSQL stops: unhealthy within one probe interval, and the daemon goes on.
        pg.stop()
        stopped = time.monotonic()
        code, body = d.wait(lambda: (h := d.healthz()) and h[0] != 200 and h, PROBE_BUDGET, "unhealthy")
        assert time.monotonic() - stopped < PROBE_BUDGET
        assert any(r.startswith("wal-stream: not streaming from PostgreSQL") for r in body["reasons"]), body
        time.sleep(3)
        assert d.proc.poll() is None

        rc, took = d.terminate()
        assert rc == 0 and took < 30, (rc, took, d.tail())
        assert d.said("stopped")


@pytest.mark.timeout(600)
def test_sigterm_during_a_dump_stops_within_the_grace_and_leaves_nothing_of_it(
    pg_factory: Callable[..., PgCluster], tmp_path: Path, minio: S3Server
) -> None:
    pg = source(pg_factory)
    pg.sql("CREATE DATABASE locked")
    pg.psql("CREATE TABLE big AS SELECT g FROM generate_series(1, 1000) g;", "locked")
    bucket = new_bucket(minio)
    grace = 20.0
    env = environment(
        pg,
        minio,
        bucket,
        tmp_path,
        P88_DUMP__DATABASES="app,locked",
        P88_SCHEDULE__DUMP=at(8),
        P88_SCHEDULE__STOP_GRACE_SECONDS=str(grace),
    )
    init_storage(env)
    # The dump of `app` is stored, then the dump of `locked` waits for this lock: a dump in progress
    # that has stored part of itself, for as long as the test needs.
    holder = pg.connect("locked", autocommit=False)
    try:
        holder.execute("LOCK TABLE big IN ACCESS EXCLUSIVE MODE")
        with daemon(env, tmp_path) as d:
            d.wait(lambda: keys(minio, bucket, "p88/dumps/"), 120, "the first database's dump stored")

            def waiting() -> bool:
                return bool(
                    pg.scalar(
                        "SELECT count(*) FROM pg_stat_activity WHERE datname = 'locked' AND wait_event_type = 'Lock'"
                    )
                )

            d.wait(waiting, 60, "the dump waiting for the lock")
            assert d.healthz() is not None

            rc, took = d.terminate()
            assert rc == 0, d.tail()
            assert took < grace, (took, d.tail())
            (end,) = [x for x in d.said("job finished") if x["job"] == "dump"]
            assert end["result"] == "interrupted" and end["level"] == "warning", end
            assert not [x for x in d.said("job started") if x["job"] == "verify"]
    finally:
        holder.close()
    assert json_out(run_cli(["list", "--json"], env)) == []
    assert keys(minio, bucket, "p88/dumps/") == []  # the stored part was taken back
    assert minio.client().list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []
    # and pg_dump was stopped with it, not left waiting for the lock
    deadline = time.monotonic() + 15
    while pg.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = 'locked'") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert pg.scalar("SELECT count(*) FROM pg_stat_activity WHERE datname = 'locked'") == 0


@pytest.mark.timeout(600)
def test_storage_down_at_start_delays_archiving_but_never_stops_the_daemon(
    pg_factory: Callable[..., PgCluster], tmp_path: Path
) -> None:
    try:
        server = start_minio(tmp_path / "minio")  # our own: this test stops and starts it
    except Exception as exc:
        unavailable("MinIO S3 server", exc)
    try:
        pg = source(pg_factory)
        bucket = new_bucket(server)
        env = environment(pg, server, bucket, tmp_path)
        init_storage(env)
        server.stop()
        with daemon(env, tmp_path) as d:
            d.wait(lambda: d.said("wal-stream started"), 60, "wal-stream started")
            segments = [switch_wal(pg) for _ in range(2)]
            code, body = d.wait(lambda: (h := d.healthz()) and h[1]["status"]["checked_at"] and h, 90, "a verdict")
            assert code == 503 and any(r.startswith("status: cannot check") for r in body["reasons"]), body
            time.sleep(10)
            assert d.proc.poll() is None  # storage down: nothing stops
            assert not [x for x in d.lines() if x.get("msg") == "wal-stream exited, restarting it"]

            server.restart()
            for segment in segments:
                d.wait(lambda s=segment: keys(server, bucket, f"p88/wal/{s[:8]}/{s}"), 180, f"{segment} archived")
            d.wait(lambda: (h := d.healthz()) and h[0] == 200, 120, "healthy once storage is back")
            rc, _ = d.terminate()
            assert rc == 0
    finally:
        server.stop()
