"""A dump or base backup due shortly before the daemon started runs at once when the catalog shows it
was not made (a restart across its time); tables for the rule, and the daemon with a stand-in child.

Before: APScheduler's in-memory store computed each job's first run from the start, so a restart at
02:16 skipped the 02:15 dump until the next night, silently.
"""

from __future__ import annotations

import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from p88backup.schedule.catchup import CatchUp, last_due, missed_run
from p88backup.schedule.cron import parse_schedule
from p88backup.schedule.health import StatusResult
from p88backup.schedule.scheduler import MISFIRE_GRACE, Daemon, DaemonConfig
from tests.harness.procs import free_port

START = datetime(2026, 11, 30, 2, 20, 0, 500000, tzinfo=UTC)  # 02:20:00.5, a Monday


def at(hour: int, minute: int, second: int = 0, day: int = 30) -> datetime:
    return datetime(2026, 11, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("schedule", "started", "due"),
    [
        ("15 2 * * *", START, at(2, 15)),  # five minutes before the start
        ("15 2 * * *", at(2, 30), at(2, 15)),  # exactly the grace: still
        ("15 2 * * *", at(2, 30, 1), None),  # past the grace: APScheduler would call it missed, so do we
        ("15 2 * * *", at(2, 14, 59), None),  # not due yet: the scheduler runs it in a second
        ("15 2 * * *", at(2, 15, 0), at(2, 15)),  # due this very second: APScheduler starts after it
        ("*/5 * * * *", START, at(2, 20)),  # the newest of several in the window
        ("45 2 * * 0", at(2, 50, day=29), at(2, 45, day=29)),  # Sunday's base backup
        ("45 2 * * 0", START, None),  # not today
        ("30 * * * * *", START, at(2, 19, 30)),  # six fields: seconds
    ],
)
def test_the_run_due_within_the_grace_before_the_start(schedule: str, started: datetime, due: datetime | None) -> None:
    cron = parse_schedule(schedule)
    assert cron is not None
    assert last_due(cron, started, MISFIRE_GRACE) == due


@pytest.mark.parametrize(
    ("newest", "missed"),
    [
        (None, True),  # no backup at all
        (at(2, 15, day=29), True),  # yesterday's: today's run was not made
        (at(2, 14), True),  # one an operator took just before: the scheduled run still is due
        (at(2, 15), False),  # the run started on time (a backup's id is its start time)
        (at(2, 17), False),  # it started late (waited on a lock), or an operator ran one since
    ],
)
def test_a_run_was_made_when_a_backup_started_at_or_after_its_time(newest: datetime | None, missed: bool) -> None:
    assert missed_run(at(2, 15), newest) is missed
    assert missed_run(None, newest) is False  # nothing was due


def test_only_dump_and_basebackup_are_caught_up_and_storage_trouble_skips_it(caplog: pytest.LogCaptureFixture) -> None:
    jobs = [(key, parse_schedule("15 2 * * *")) for key in ("dump", "basebackup", "expire", "drill")]
    asked: list[str] = []

    def newest(kind: str) -> datetime | None:
        asked.append(kind)
        if kind == "basebackup":
            raise OSError("connection refused")
        return None

    with caplog.at_level(logging.INFO, logger="p88backup.schedule"):
        missed = CatchUp(newest, grace=MISFIRE_GRACE).missed(jobs, START)  # type: ignore[arg-type]
    assert missed == [("dump", at(2, 15))]
    assert asked == ["dump", "basebackup"]  # expire and drill: never looked up
    said = {r.getMessage().split(":")[0]: r for r in caplog.records}
    assert said["job catch-up"].levelname == "INFO"
    assert said["cannot tell whether a run due before the start was made"].p88["schedule"] == "basebackup"


def test_nothing_is_read_from_storage_when_nothing_was_due() -> None:
    jobs = [("dump", parse_schedule("15 2 * * *"))]

    def newest(kind: str) -> datetime | None:
        raise AssertionError("the catalog was read")

    assert CatchUp(newest, grace=MISFIRE_GRACE).missed(jobs, at(12, 0)) == []  # type: ignore[arg-type]


# -- the daemon ------------------------------------------------------------------------------------

FAKE = r"""
import json, os, sys, time
with open(os.environ["FAKE_LOG"], "a") as f:
    f.write(json.dumps({"args": sys.argv[1:], "t": time.time()}) + "\n")
print(json.dumps({"id": "20261130T021500Z"}))
"""


@pytest.fixture
def fake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[list[str], Path]]:
    program = tmp_path / "fake_p88backup.py"
    program.write_text(FAKE)
    log_file = tmp_path / "runs.log"
    monkeypatch.setenv("FAKE_LOG", str(log_file))
    yield [sys.executable, str(program)], log_file


def runs(log_file: Path) -> list[list[str]]:
    if not log_file.exists():
        return []
    return [json.loads(line)["args"] for line in log_file.read_text().splitlines()]


def daily_at(when: datetime) -> str:
    """A six-field schedule that fires once a day, at ``when``'s second."""
    return f"{when.second} {when.minute} {when.hour} * * *"


def run_daemon(argv: list[str], schedules: dict[str, str], newest: Any, seconds: float) -> None:
    config = DaemonConfig(
        schedules=schedules, listen=f"127.0.0.1:{free_port()}", stop_grace=5, base_argv=argv, wal_stream_spool=None
    )
    daemon = Daemon(config, lambda: StatusResult(time.time(), True), catch_up=CatchUp(newest, grace=MISFIRE_GRACE))
    stop = threading.Event()
    thread = threading.Thread(target=daemon.run, args=(stop,), daemon=True)
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(30)
    assert not thread.is_alive()


@pytest.mark.timeout(60)
def test_a_dump_due_just_before_the_start_and_not_made_runs_at_once(
    fake: tuple[list[str], Path], caplog: pytest.LogCaptureFixture
) -> None:
    argv, log_file = fake
    due = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=3)
    looked: list[str] = []

    def newest(kind: str) -> datetime | None:
        looked.append(kind)
        return due - timedelta(days=1)  # yesterday's

    with caplog.at_level(logging.INFO, logger="p88backup.schedule"):
        run_daemon(argv, {"dump": daily_at(due), "expire": daily_at(due)}, newest, 4)
    assert looked == ["dump"]
    assert runs(log_file) == [["dump", "--json"], ["verify", "--kind", "dump", "20261130T021500Z"]]  # not expire
    (line,) = [r for r in caplog.records if r.getMessage().startswith("job catch-up")]
    assert line.p88["due"] == due.isoformat()


@pytest.mark.timeout(60)
def test_a_dump_that_was_made_is_not_run_again(fake: tuple[list[str], Path]) -> None:
    argv, log_file = fake
    due = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=3)
    run_daemon(argv, {"dump": daily_at(due)}, lambda kind: due, 3)
    assert runs(log_file) == []


def test_the_newest_backup_s_start_is_read_from_the_catalog() -> None:
    import uuid

    from p88backup.catalog.backups import Catalog
    from p88backup.schedule.catchup import newest_in_catalog
    from p88backup.storage import open_storage
    from tests.harness.helpers import fake_dump_manifest, initialised

    catalog = Catalog(initialised(open_storage(f"memory://{uuid.uuid4().hex}")))
    newest = newest_in_catalog(lambda: catalog.storage)
    assert newest("dump") is None
    for bid in ("20261128T021500Z", "20261129T021503Z"):
        catalog.write(fake_dump_manifest(bid, at(2, 15)))
    assert newest("dump") == at(2, 15, 3, day=29)
    assert newest("basebackup") is None
