"""The schedule daemon's parts, with a stand-in p88backup program as the child (a real process):
job runs and their log lines and metrics, the dump's follow-up verify, overruns, the stop within
the grace period, wal-stream's restarts, and /healthz + /metrics over HTTP.

Before: `p88backup schedule` did not exist (the [schedule] settings were read by nothing).
"""

from __future__ import annotations

import io
import json
import logging
import math
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, BinaryIO

import click
import pytest

from p88backup import metrics
from p88backup.catalog.backups import Catalog
from p88backup.catalog.layout import STORAGE_MARKER, wal_key
from p88backup.core.health import Limits
from p88backup.errors import StorageNotInitialisedError
from p88backup.schedule.children import Children
from p88backup.schedule.health import HealthMonitor, StatusResult, assess
from p88backup.schedule.httpd import HealthServer
from p88backup.schedule.jobs import JobRunner, Outcome, drill_results, follow_up, result_name, stored_bytes
from p88backup.schedule.scheduler import (
    Daemon,
    DaemonConfig,
    StatusCheck,
    job_commands,
    plan,
    unchecked_freshness,
)
from p88backup.schedule.supervisor import WalStreamSupervisor, next_backoff
from p88backup.settings import load_settings
from p88backup.storage.base import ObjectInfo
from p88backup.storage.memory import MemoryStorage
from p88backup.stream import Codec
from tests.harness.helpers import fake_dump_manifest
from tests.harness.procs import free_port

# The stand-in: records each run in $FAKE_LOG and behaves as $FAKE_BEHAVIOUR says for its command
# (sleep, exit status, stdout, ignore SIGINT); SIGINT is Python's KeyboardInterrupt, exit 16 as p88backup.
FAKE = r"""
import json, os, signal, sys, time
args = sys.argv[1:]
cmd = args[0]
def note(event, **kw):
    with open(os.environ["FAKE_LOG"], "a") as f:
        line = {"cmd": cmd, "args": args, "pid": os.getpid(), "event": event, "t": time.time(), **kw}
        f.write(json.dumps(line) + "\n")
b = json.loads(os.environ.get("FAKE_BEHAVIOUR", "{}")).get(cmd, {})
if b.get("ignore_sigint"):
    signal.signal(signal.SIGINT, signal.SIG_IGN)
signal.signal(signal.SIGTERM, lambda *_: (note("sigterm"), sys.exit(0)))
counter = os.environ["FAKE_LOG"] + "." + cmd
n = int(open(counter).read()) + 1 if os.path.exists(counter) else 1
open(counter, "w").write(str(n))
note("start", n=n)
try:
    if n <= b.get("fail_first", 0):
        sys.exit(b.get("rc", 8))
    time.sleep(b.get("sleep", 0))
except KeyboardInterrupt:
    note("interrupted")
    sys.exit(16)
sys.stdout.write(b.get("stdout", ""))
note("end")
sys.exit(b.get("rc", 0) if not b.get("fail_first") else 0)
"""


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, msg: str) -> list[dict[str, Any]]:
        return [dict(getattr(r, "p88", {}), level=r.levelname) for r in self.records if r.getMessage().startswith(msg)]


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("p88backup.schedule")
    old = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(old)


@pytest.fixture(autouse=True)
def fresh_metrics() -> Iterator[None]:
    metrics.reset()
    yield
    metrics.reset()


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    program = tmp_path / "fake_p88backup.py"
    program.write_text(FAKE)
    log_file = tmp_path / "fake.log"
    monkeypatch.setenv("FAKE_LOG", str(log_file))

    class Fake:
        argv = [sys.executable, str(program)]

        @staticmethod
        def behave(**commands: dict[str, Any]) -> None:
            monkeypatch.setenv("FAKE_BEHAVIOUR", json.dumps({k.replace("_", "-"): v for k, v in commands.items()}))

        @staticmethod
        def runs() -> list[dict[str, Any]]:
            if not log_file.exists():
                return []
            return [json.loads(line) for line in log_file.read_text().splitlines()]

    return Fake


def sample(name: str, **labels: str) -> float | None:
    return metrics.registry().get_sample_value(name, labels)


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- pure parts ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rc", "name"),
    [
        (0, "ok"),
        (4, "locked"),
        (8, "storage"),
        (16, "interrupted"),
        (18, "unhealthy"),
        (99, "exit 99"),
        (-9, "killed by SIGKILL"),
    ],
)
def test_result_names(rc: int, name: str) -> None:
    assert result_name(rc) == name


@pytest.mark.parametrize(
    ("key", "rc", "stdout", "expected"),
    [
        ("dump", 0, b'{"id": "20261130T021500Z", "stored_bytes": 5}', ("verify", "--kind", "dump", "20261130T021500Z")),
        ("dump", 0, b"not json", ("verify", "--kind", "dump", "latest")),
        ("dump", 8, b'{"id": "20261130T021500Z"}', None),
        ("basebackup", 0, b'{"id": "20261130T024500Z"}', None),
    ],
)
def test_only_a_successful_dump_is_followed_by_a_verify_of_that_dump(
    key: str, rc: int, stdout: bytes, expected: tuple[str, ...] | None
) -> None:
    assert follow_up(key, Outcome(key, rc, 1.0, stdout)) == expected


def test_what_is_read_from_a_job_s_json() -> None:
    assert stored_bytes(Outcome("dump", 0, 1, b'{"stored_bytes": 1234}')) == 1234
    assert stored_bytes(Outcome("dump", 0, 1, b'{"stored_bytes": true}')) is None
    report = {
        "drills": [
            {"kind": "dump", "ok": True, "rto_seconds": 12.5, "rpo_seconds": 3600},
            {"kind": "pitr", "ok": False, "rto_seconds": None},
            {"kind": "other"},
        ]
    }
    assert drill_results(Outcome("drill", 11, 1, json.dumps(report).encode())) == [
        ("dump", True, 12.5, 3600.0),
        ("pitr", False, None, None),
    ]


@pytest.mark.parametrize(
    ("current", "ran_for", "expected"),
    [(0.0, 0.1, 1.0), (1.0, 0.1, 2.0), (32.0, 5.0, 60.0), (60.0, 5.0, 60.0), (60.0, 61.0, 1.0)],
)
def test_wal_stream_backoff(current: float, ran_for: float, expected: float) -> None:
    assert next_backoff(current, ran_for) == expected


NOW = 1_000_000.0
STREAM_OK = (True, "streaming on timeline 1: 0 bytes behind the server")
STATUS_OK = StatusResult(NOW - 10, True)


@pytest.mark.parametrize(
    ("stream", "status", "healthy", "reasons"),
    [
        (STREAM_OK, STATUS_OK, True, []),
        (None, STATUS_OK, True, []),  # --no-wal-stream: status alone
        ((False, "not streaming from PostgreSQL: refused"), STATUS_OK, False, ["wal-stream: not streaming from"]),
        (STREAM_OK, None, False, ["status: not checked yet"]),
        (
            STREAM_OK,
            StatusResult(NOW - 10, False, failures=("dump_age: no dump at all (limit 1d2h)",)),
            False,
            ["status: dump_age: no dump at all (limit 1d2h)"],
        ),
        (
            STREAM_OK,
            StatusResult(NOW - 10, False, error="storage unreachable"),
            False,
            ["status: cannot check: storage"],
        ),
        (STREAM_OK, StatusResult(NOW - 500, True), False, ["status: last checked 500s ago (a check is stuck)"]),
        (
            (False, "wal-stream stopped 3s ago"),
            StatusResult(NOW - 10, False, failures=("wal_age: archiving has stopped",)),
            False,
            ["wal-stream: wal-stream stopped", "status: wal_age: archiving has stopped"],
        ),
    ],
)
def test_healthz_verdict(
    stream: tuple[bool, str] | None, status: StatusResult | None, healthy: bool, reasons: list[str]
) -> None:
    got = assess(stream, status, now=NOW, stale_after=240, started_at=NOW - 20)
    assert got.healthy is healthy and got.body["healthy"] is healthy
    assert len(got.body["reasons"]) == len(reasons)
    for said, expected in zip(got.body["reasons"], reasons, strict=True):
        assert said.startswith(expected), said


def test_no_status_check_long_after_start_says_so() -> None:
    got = assess(STREAM_OK, None, now=NOW, stale_after=240, started_at=NOW - 300)
    assert got.body["reasons"] == ["status: not checked for 300s since start"]


# -- job runs, as child processes -----------------------------------------------------------


def test_a_dump_run_logs_start_and_end_records_metrics_and_verifies_that_dump(fake: Any, records: Records) -> None:
    fake.behave(dump={"stdout": json.dumps({"id": "20261130T021500Z", "stored_bytes": 1234}), "sleep": 0.2})
    finished: list[str] = []
    JobRunner(Children(), fake.argv, on_finished=finished.append).run("dump")
    starts = [r for r in fake.runs() if r["event"] == "start"]
    assert [r["args"] for r in starts] == [["dump", "--json"], ["verify", "--kind", "dump", "20261130T021500Z"]]
    assert [(r["job"], r["schedule"]) for r in records.lines("job started")] == [("dump", "dump"), ("verify", "dump")]
    ends = records.lines("job finished")
    assert [(r["job"], r["result"], r["level"]) for r in ends] == [("dump", "ok", "INFO"), ("verify", "ok", "INFO")]
    assert ends[0]["seconds"] >= 0.2 and ends[0]["stored_bytes"] == 1234 and ends[0]["id"] == "20261130T021500Z"
    assert sample("p88backup_last_bytes", job="dump") == 1234
    assert sample("p88backup_last_success_timestamp_seconds", job="verify") is not None
    assert finished == ["dump"]


def test_a_failed_dump_is_reported_counted_and_not_verified(fake: Any, records: Records) -> None:
    fake.behave(dump={"rc": 8})
    JobRunner(Children(), fake.argv).run("dump")
    assert [r["args"][0] for r in fake.runs() if r["event"] == "start"] == ["dump"]
    (end,) = records.lines("job finished")
    assert (end["result"], end["exit_code"], end["level"]) == ("storage", 8, "ERROR")
    assert sample("p88backup_job_failures_total", job="dump") == 1
    assert sample("p88backup_last_success_timestamp_seconds", job="dump") is None


def test_a_drill_run_records_each_drill_s_result(fake: Any) -> None:
    report = {
        "drills": [{"kind": "dump", "ok": True, "rto_seconds": 7.0, "rpo_seconds": 60.0}, {"kind": "pitr", "ok": False}]
    }
    fake.behave(drill={"stdout": json.dumps(report), "rc": 11})
    JobRunner(Children(), fake.argv).run("drill")
    assert sample("p88backup_drill_success", kind="dump") == 1
    assert sample("p88backup_drill_rto_seconds", kind="dump") == 7.0
    assert sample("p88backup_drill_success", kind="pitr") == 0
    assert sample("p88backup_job_failures_total", job="drill") == 1


def test_a_job_that_cannot_be_started_is_a_failed_run(tmp_path: Path, records: Records) -> None:
    JobRunner(Children(), [str(tmp_path / "no-such-program")]).run("expire")
    (line,) = records.lines("job could not start")
    assert line["job"] == "expire" and line["level"] == "ERROR"
    assert sample("p88backup_job_failures_total", job="expire") == 1


def test_nothing_starts_once_closed(fake: Any, records: Records) -> None:
    children = Children()
    children.close()
    JobRunner(children, fake.argv).run("dump")
    assert fake.runs() == [] and records.lines("job not started")


# -- the daemon ------------------------------------------------------------------------------


def daemon_config(fake: Any, schedules: dict[str, str], grace: float = 10.0) -> DaemonConfig:
    return DaemonConfig(
        schedules=schedules,
        listen=f"127.0.0.1:{free_port()}",
        stop_grace=grace,
        base_argv=fake.argv,
        wal_stream_spool=None,
    )


def start(daemon: Daemon) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    thread.start()
    return stop, thread


def healthy() -> StatusResult:
    return StatusResult(time.time(), True)


@pytest.mark.timeout(60)
def test_an_overrunning_job_is_skipped_and_reported_never_stacked(fake: Any, records: Records) -> None:
    fake.behave(wal_verify={"sleep": 2.5})
    daemon = Daemon(daemon_config(fake, {"wal_verify": "* * * * * *"}), healthy)
    stop, thread = start(daemon)
    wait_until(lambda: len([r for r in fake.runs() if r["event"] == "end"]) >= 2, 30, "two wal-verify runs")
    stop.set()
    thread.join(30)
    runs = [r for r in fake.runs() if r["cmd"] == "wal-verify"]
    spans: dict[int, list[float]] = {}
    for r in runs:
        spans.setdefault(r["pid"], []).append(r["t"])
    ordered = sorted(spans.values())
    for earlier, later in zip(ordered, ordered[1:], strict=False):
        assert later[0] >= earlier[-1], "two runs of wal-verify overlapped"
    overruns = records.lines("job overran")
    assert overruns and overruns[0]["schedule"] == "wal_verify" and overruns[0]["running_seconds"] >= 0.5
    assert all(r["level"] == "WARNING" for r in overruns)


@pytest.mark.timeout(60)
def test_stop_aborts_a_running_job_cleanly_and_a_stubborn_one_is_killed_within_the_grace(
    fake: Any, records: Records
) -> None:
    fake.behave(dump={"sleep": 60}, basebackup={"sleep": 60, "ignore_sigint": True})
    grace = 4.0
    daemon = Daemon(daemon_config(fake, {"dump": "* * * * * *", "basebackup": "* * * * * *"}, grace), healthy)
    stop, thread = start(daemon)
    wait_until(lambda: {r["cmd"] for r in fake.runs() if r["event"] == "start"} >= {"dump", "basebackup"}, 30, "jobs")
    began = time.monotonic()
    stop.set()
    thread.join(30)
    took = time.monotonic() - began
    assert not thread.is_alive() and took <= grace, took
    events = {(r["cmd"], r["event"]) for r in fake.runs()}
    assert ("dump", "interrupted") in events  # SIGINT: the child's own cleanup ran
    assert not any(r["cmd"] == "verify" for r in fake.runs())  # nothing new after the stop
    wait_until(lambda: len(records.lines("job finished")) == 2, 10, "both runs reported")
    results = {r["job"]: (r["result"], r["level"]) for r in records.lines("job finished")}
    assert results == {"dump": ("interrupted", "WARNING"), "basebackup": ("killed by SIGKILL", "WARNING")}
    assert [r["job"] for r in records.lines("did not stop in time")] == ["basebackup"]
    assert len({r["pid"] for r in fake.runs() if r["cmd"] == "dump"}) == 1  # one run at a time


@pytest.mark.timeout(60)
def test_wal_stream_is_restarted_with_backoff_and_stopped_with_sigterm(fake: Any, records: Records) -> None:
    fake.behave(wal_stream={"fail_first": 2, "rc": 8, "sleep": 60})
    sup = WalStreamSupervisor(Children(), [*fake.argv, "wal-stream"], min_backoff=0.1, max_backoff=0.2)
    sup.start()
    wait_until(lambda: sup.starts == 3 and any(r["event"] == "start" and r["n"] == 3 for r in fake.runs()), 20, "3rd")
    proc = sup.stop()
    assert proc is not None and proc.wait(10) == 0
    sup.join(10)
    restarts = records.lines("wal-stream exited, restarting it")
    assert [(r["result"], r["in_seconds"]) for r in restarts] == [("storage", 0.1), ("storage", 0.2)]
    assert ("wal-stream", "sigterm") in {(r["cmd"], r["event"]) for r in fake.runs()}
    assert records.lines("wal-stream stopped")[0]["exit_code"] == 0


def test_wal_stream_that_cannot_even_be_started_is_tried_again(tmp_path: Path, records: Records) -> None:
    """Before: the first failure to make the process ended the supervisor's thread for good."""
    sup = WalStreamSupervisor(Children(), [str(tmp_path / "no-such-program")], min_backoff=0.05, max_backoff=0.1)
    sup.start()
    wait_until(lambda: len(records.lines("cannot start wal-stream")) >= 3, 10, "three attempts")
    assert sup._thread is not None and sup._thread.is_alive()
    assert sup.stop() is None
    sup.join(5)
    assert not sup._thread.is_alive()


def get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read(), r.headers["Content-Type"]
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers["Content-Type"]


def test_healthz_and_metrics_over_http(tmp_path: Path) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    results = [StatusResult(time.time(), False, failures=("dump_age: no dump at all (limit 1d2h)",))]
    monitor = HealthMonitor(lambda: results[-1], spool=tmp_path / "spool", interval=0.1)
    listen = f"127.0.0.1:{free_port()}"
    server = HealthServer(listen, monitor.assessment)
    monitor.start()
    server.start()
    try:
        wait_until(lambda: get(f"http://{listen}/healthz")[0] == 503, 5, "first verdict")
        code, body, ctype = get(f"http://{listen}/healthz")
        doc = json.loads(body)
        assert ctype == "application/json" and doc["healthy"] is False
        assert doc["reasons"][0].startswith("wal-stream: no status.json in the spool")
        assert "status: dump_age: no dump at all (limit 1d2h)" in doc["reasons"]

        # a healthy streamer (status.json as wal-stream writes it) and a healthy status: 200
        (tmp_path / "spool").mkdir()
        now = time.time()
        (tmp_path / "spool" / "status.json").write_text(
            json.dumps({"updated_at": now, "connected": True, "last_progress_at": now, "timeline": 1, "lag_bytes": 0})
        )
        results.append(StatusResult(time.time(), True))
        monitor.poke()
        wait_until(lambda: get(f"http://{listen}/healthz")[0] == 200, 5, "healthy")

        metrics.job_finished("dump", ok=True, seconds=3.0, stored_bytes=10)
        code, body, ctype = get(f"http://{listen}/metrics")
        assert code == 200 and ctype.startswith("text/plain")
        families = {f.name: f for f in text_string_to_metric_families(body.decode())}
        assert families["p88backup_last_bytes"].samples[0].value == 10
        assert get(f"http://{listen}/nothing")[0] == 404
    finally:
        server.stop()
        monitor.stop()


def test_a_port_in_use_is_one_clear_error() -> None:
    from p88backup.errors import ConfigError

    listen = f"127.0.0.1:{free_port()}"
    first = HealthServer(listen, lambda: assess(None, None, now=0, stale_after=1, started_at=0))
    first.start()
    try:
        with pytest.raises(ConfigError, match=f"cannot listen on {listen}"):
            HealthServer(listen, first.health).start()
    finally:
        first.stop()


def test_a_status_check_that_cannot_be_made_is_unhealthy_with_the_reason_and_retried_sooner() -> None:
    """Before the retry: after storage came back, /healthz stayed 503 for up to a whole interval."""
    from p88backup.errors import StorageError

    calls: list[float] = []

    def storage_back_on_the_second_call() -> StatusResult:
        calls.append(time.monotonic())
        if len(calls) == 1:
            raise StorageError("cannot reach s3://b/p: connection refused")
        return StatusResult(time.time(), True)

    monitor = HealthMonitor(storage_back_on_the_second_call, spool=None, interval=60, retry_after_error=0.5)
    monitor.start()
    try:
        wait_until(lambda: calls, 5, "a check")
        wait_until(lambda: monitor.assessment().body["reasons"] != ["status: not checked yet"], 5, "a verdict")
        got = monitor.assessment()
        assert not got.healthy
        assert got.body["reasons"] == ["status: cannot check: cannot reach s3://b/p: connection refused"]
        wait_until(lambda: monitor.assessment().healthy, 5, "the retry")
        assert len(calls) == 2
    finally:
        monitor.stop()


def test_sigint_ends_a_command_with_exit_16(monkeypatch: pytest.MonkeyPatch) -> None:
    """How the daemon aborts a job. Before: Click turned KeyboardInterrupt into Abort, which
    cli.main reported as "Aborted." exit 1, so an aborted dump looked like a crash."""
    from p88backup.cli.main import COMMANDS, run
    from p88backup.errors import ExitCode

    monkeypatch.setitem(COMMANDS, "interrupted", f"{__name__}:interrupted_cmd")
    assert run(["interrupted"]) == ExitCode.INTERRUPTED


@click.command("interrupted")
def interrupted_cmd() -> None:
    """Stand-in for a job that gets SIGINT while it runs."""
    raise KeyboardInterrupt


# -- the status check's metrics, and what it reads ---------------------------------------------


class CountingStorage(MemoryStorage):
    """Memory storage that notes every open and list (what a status check costs)."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.opened: list[str] = []
        self.listed: list[str] = []

    def open(self, key: str) -> BinaryIO:
        self.opened.append(key)
        return super().open(key)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        self.listed.append(prefix)
        return super().list(prefix)


def status_check(storage: MemoryStorage) -> StatusCheck:
    settings = load_settings(None, storage_url=storage.url, status={"max_dump_age": "26h"})
    return StatusCheck(settings, codec=Codec, conninfo=lambda: pytest.fail("no database here"), storage=lambda: storage)


def a_catalog(name: str, dumps: int = 3) -> CountingStorage:
    storage = CountingStorage(name)
    storage.init(b"{}")
    catalog = Catalog(storage)
    now = datetime.now(UTC)
    for n in range(dumps, 0, -1):
        when = (now - timedelta(hours=n)).replace(microsecond=0)
        catalog.write(fake_dump_manifest(when.strftime("%Y%m%dT%H%M%SZ"), when))
    for segno in range(1, 40):
        storage.put(wal_key(f"00000001000000000000{segno:04X}", ".zst"), io.BytesIO(b"x"))
    return storage


def test_a_status_check_that_cannot_be_made_leaves_no_good_figures_on_metrics() -> None:
    """Before: the WAL series were set only after a check succeeded, so while storage was down
    /metrics kept the last good age and lag and P88BackupArchivingStopped could not fire."""
    storage = a_catalog(uuid.uuid4().hex)
    check = status_check(storage)
    assert check().healthy
    assert (sample("p88backup_newest_wal_age_seconds") or 1e9) < 60
    assert sample("p88backup_status_check_success") == 1.0
    assert sample("p88backup_check_ok", check="dump_age") == 1.0
    newest_wal = sample("p88backup_newest_wal_timestamp_seconds")

    storage.delete(STORAGE_MARKER)  # the volume is gone: every operation refuses
    with pytest.raises(StorageNotInitialisedError):
        check()
    assert sample("p88backup_status_check_success") == 0.0
    for name, labels in (
        ("p88backup_newest_wal_age_seconds", {}),
        ("p88backup_wal_archive_lag_bytes", {}),
        ("p88backup_check_ok", {"check": "dump_age"}),
        ("p88backup_check_ok", {"check": "wal_age"}),
    ):
        assert math.isnan(sample(name, **labels) or 0.0), name
    assert sample("p88backup_newest_wal_timestamp_seconds") == newest_wal  # a time stays true


def test_a_repeated_status_check_reads_what_changed_only() -> None:
    """Before: every check (each minute) read every manifest again and listed the whole WAL archive."""
    storage = a_catalog(uuid.uuid4().hex, dumps=5)
    check = status_check(storage)
    check()
    assert sum(k.endswith("manifest.json") for k in storage.opened) == 5
    assert "wal/" in storage.listed
    storage.opened.clear()
    storage.listed.clear()
    check()
    assert storage.opened == []  # manifests never change: read once
    assert "wal/" not in storage.listed and all(p.startswith("wal/0000000") for p in storage.listed if "wal" in p)
    catalog = Catalog(storage)
    when = datetime.now(UTC).replace(microsecond=0)
    catalog.write(fake_dump_manifest(when.strftime("%Y%m%dT%H%M%SZ"), when))
    storage.opened.clear()
    check()
    assert storage.opened == [f"dumps/{when.strftime('%Y%m%dT%H%M%SZ')}/manifest.json"]
    assert sample("p88backup_newest_backup_timestamp_seconds", kind="dump") == when.timestamp()


@pytest.mark.timeout(60)
def test_the_daemon_exports_its_verdict_and_every_job_s_counter_and_warns_about_unchecked_ages(
    fake: Any, records: Records
) -> None:
    """Before: a job's failure counter appeared only at its first failure (at 1: no increase, no
    alert), nothing on /metrics said what /healthz said, and a job whose [status] limit was unset
    was never judged, without a word."""
    from prometheus_client.parser import text_string_to_metric_families

    config = daemon_config(fake, {"dump": "0 0 1 1 *", "drill": "0 0 1 1 *", "expire": "0 0 1 1 *"})
    config.limits = Limits(max_dump_age=26 * 3600)
    verdicts = [StatusResult(time.time(), False, failures=("dump_age: no dump at all (limit 1d2h)",))]
    daemon = Daemon(config, lambda: verdicts[-1])
    stop, thread = start(daemon)
    try:
        wait_until(lambda: records.lines("serving /healthz"), 10, "the server")
        url = f"http://{config.listen}"

        def scraped() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
            body = get(f"{url}/metrics")[1].decode()
            return {
                (s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(body)
                for s in f.samples
            }

        wait_until(lambda: get(f"{url}/healthz")[0] == 503, 10, "the first verdict")
        got = scraped()
        assert got[("p88backup_healthy", ())] == 0.0
        for job in ("dump", "verify", "drill", "expire"):  # verify follows each dump
            assert got[("p88backup_job_failures_total", (("job", job),))] == 0.0, job
        assert ("p88backup_job_failures_total", (("job", "basebackup"),)) not in got  # not scheduled

        verdicts.append(StatusResult(time.time(), True))
        daemon.health.poke()
        wait_until(lambda: get(f"{url}/healthz")[0] == 200, 10, "healthy")
        assert scraped()[("p88backup_healthy", ())] == 1.0  # asked at the scrape, as /healthz is
    finally:
        stop.set()
        thread.join(30)
    unchecked = [(r["job"], r["unset"], r["level"]) for r in records.lines("freshness not checked")]
    # dump has its limit; --no-wal-stream and no max_wal_age: archiving is judged by nothing either
    assert unchecked == [("drill", "status.max_drill_age", "WARNING"), ("wal", "status.max_wal_age", "WARNING")]


@pytest.mark.parametrize(
    ("schedules", "limits", "wal_stream", "expected"),
    [
        ({"dump": "15 2 * * *"}, Limits(), True, [("dump", "max_dump_age")]),
        ({"dump": "15 2 * * *"}, Limits(max_dump_age=1), True, []),
        ({"dump": "off", "basebackup": "45 2 * * 0"}, Limits(), True, [("basebackup", "max_basebackup_age")]),
        ({"expire": "30 4 * * *", "wal_verify": "5 * * * *", "reindex": "0 3 * * *"}, Limits(), True, []),
        ({}, Limits(), False, [("wal", "max_wal_age")]),
        ({}, Limits(max_wal_age=900), False, []),
    ],
)
def test_unchecked_freshness(
    schedules: dict[str, str], limits: Limits, wal_stream: bool, expected: list[tuple[str, str]]
) -> None:
    assert unchecked_freshness(plan(schedules), limits, wal_stream=wal_stream) == expected


def test_job_commands_are_the_metrics_job_labels_of_a_schedule() -> None:
    jobs = plan({"dump": "15 2 * * *", "wal_verify": "5 * * * *", "drill": "off"})
    assert job_commands(jobs) == ["dump", "verify", "wal-verify"]
