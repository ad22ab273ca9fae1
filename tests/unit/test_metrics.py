"""The metrics textfile: every job's series survive the next job's write, counters add up, gauges
replace, the write is atomic and serialised, and the result is what prometheus-client's (and so
node-exporter's) text parser reads.

Before: metrics.py had the registry and nothing that wrote it anywhere; no command recorded a run.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from p88backup import metrics
from tests.harness.helpers import REPO, cli_env


@pytest.fixture(autouse=True)
def fresh_process() -> Iterator[None]:
    """Each test starts as a new process would: nothing recorded, nothing written yet."""
    metrics.reset()
    yield
    metrics.reset()


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(path.read_text()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def job(name: str) -> tuple[tuple[str, str], ...]:
    return (("job", name),)


def next_process() -> None:
    """What a new command run starts with: an empty registry."""
    metrics.reset()


def test_two_jobs_in_turn_keep_both_jobs_series(tmp_path: Path) -> None:
    prom = tmp_path / "p88backup.prom"
    metrics.job_finished("dump", ok=True, seconds=12.5, stored_bytes=4096, now=1000.0)
    metrics.write_textfile(prom)
    next_process()
    metrics.job_finished("basebackup", ok=True, seconds=80.0, stored_bytes=1 << 30, now=2000.0)
    metrics.write_textfile(prom)

    got = samples(prom)
    assert got[("p88backup_last_success_timestamp_seconds", job("dump"))] == 1000.0
    assert got[("p88backup_last_bytes", job("dump"))] == 4096
    assert got[("p88backup_last_duration_seconds", job("dump"))] == 12.5
    assert got[("p88backup_last_success_timestamp_seconds", job("basebackup"))] == 2000.0
    assert got[("p88backup_last_bytes", job("basebackup"))] == 1 << 30
    # nothing this process did not measure: no WAL figures, no *_created noise
    assert not any(name.startswith("p88backup_newest_wal") or name.endswith("_created") for name, _ in got)


def test_a_failed_run_increments_the_counter_and_keeps_the_last_success(tmp_path: Path) -> None:
    prom = tmp_path / "p88backup.prom"
    metrics.job_finished("dump", ok=True, seconds=10.0, stored_bytes=4096, now=1000.0)
    metrics.write_textfile(prom)
    for expected in (1.0, 2.0):
        next_process()
        metrics.job_finished("dump", ok=False, seconds=3.0)
        metrics.write_textfile(prom)
        got = samples(prom)
        assert got[("p88backup_job_failures_total", job("dump"))] == expected
        assert got[("p88backup_last_success_timestamp_seconds", job("dump"))] == 1000.0
        assert got[("p88backup_last_bytes", job("dump"))] == 4096
        assert got[("p88backup_last_duration_seconds", job("dump"))] == 3.0  # the last run's, failed or not
    next_process()
    metrics.job_finished("dump", ok=True, seconds=9.0, stored_bytes=8192, now=5000.0)
    metrics.write_textfile(prom)
    got = samples(prom)
    assert got[("p88backup_job_failures_total", job("dump"))] == 2.0  # a success does not reset the count
    assert got[("p88backup_last_success_timestamp_seconds", job("dump"))] == 5000.0


def test_a_second_write_in_one_process_adds_only_what_is_new(tmp_path: Path) -> None:
    """A long-running writer (or two writes in one run) must not count the same failure twice."""
    prom = tmp_path / "p88backup.prom"
    metrics.job_finished("expire", ok=False, seconds=1.0)
    metrics.write_textfile(prom)
    metrics.write_textfile(prom)
    assert samples(prom)[("p88backup_job_failures_total", job("expire"))] == 1.0
    metrics.job_finished("expire", ok=False, seconds=1.0)
    metrics.write_textfile(prom)
    assert samples(prom)[("p88backup_job_failures_total", job("expire"))] == 2.0


def test_wal_figures_replace_the_last_ones_and_a_job_leaves_them_alone(tmp_path: Path) -> None:
    prom = tmp_path / "p88backup.prom"
    metrics.wal_freshness(age_seconds=30.0, newest_at=1000.0, lag_bytes=0)
    metrics.write_textfile(prom)
    next_process()
    metrics.wal_freshness(age_seconds=1800.0, newest_at=1000.0, lag_bytes=None)  # no server this time
    metrics.write_textfile(prom)
    next_process()
    metrics.job_finished("dump", ok=True, seconds=1.0)  # never measured WAL: must not reset it
    metrics.write_textfile(prom)
    got = samples(prom)
    assert got[("p88backup_newest_wal_age_seconds", ())] == 1800.0
    assert got[("p88backup_newest_wal_timestamp_seconds", ())] == 1000.0
    lag = got[("p88backup_wal_archive_lag_bytes", ())]
    assert lag != lag  # NaN: unknown, not a stale figure from an earlier run


def test_drill_series_and_foreign_series_are_kept(tmp_path: Path) -> None:
    prom = tmp_path / "p88backup.prom"
    prom.write_text("# HELP other_thing written by someone else\n# TYPE other_thing gauge\nother_thing 7\n")
    metrics.drill_result("pitr", ok=False, rto_seconds=42.0, rpo_seconds=None)
    metrics.write_textfile(prom)
    got = samples(prom)
    assert got[("other_thing", ())] == 7.0
    assert got[("p88backup_drill_success", (("kind", "pitr"),))] == 0.0
    assert got[("p88backup_drill_rto_seconds", (("kind", "pitr"),))] == 42.0
    assert ("p88backup_drill_rpo_seconds", (("kind", "pitr"),)) not in got


def test_the_file_is_replaced_whole_and_readable_by_node_exporter(tmp_path: Path) -> None:
    prom = tmp_path / "p88backup.prom"
    prom.write_text("this is not the text format {{{\n")
    metrics.job_finished("verify", ok=True, seconds=2.0, now=1.0)
    metrics.write_textfile(prom)  # an unreadable file is ours to rewrite, not a reason to stop recording
    assert samples(prom)[("p88backup_last_success_timestamp_seconds", job("verify"))] == 1.0
    assert prom.stat().st_mode & 0o777 == 0o644  # node-exporter runs as another user
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p88backup.prom", "p88backup.prom.lock"]


def test_a_held_lock_is_waited_for_boundedly_and_the_file_is_unchanged(tmp_path: Path) -> None:
    prom = tmp_path / "p88backup.prom"
    prom.write_text("")
    fd = os.open(tmp_path / "p88backup.prom.lock", os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        metrics.job_finished("dump", ok=False, seconds=1.0)
        with pytest.raises(TimeoutError, match="held by another process"):
            metrics.write_textfile(prom, lock_timeout=0.2)
    finally:
        os.close(fd)
    assert prom.read_text() == ""
    metrics.write_textfile(prom)  # free again: the failure is written once
    assert samples(prom)[("p88backup_job_failures_total", job("dump"))] == 1.0


WRITER = """
import sys
from pathlib import Path
from p88backup import metrics
metrics.job_finished("dump", ok=False, seconds=1.0)
metrics.job_finished(sys.argv[2], ok=True, seconds=1.0, now=float(sys.argv[3]))
metrics.write_textfile(Path(sys.argv[1]))
"""


def test_concurrent_writers_lose_no_update(tmp_path: Path) -> None:
    """Eight jobs finishing at once: read-merge-write under the lock, so every failure is counted."""
    prom = tmp_path / "p88backup.prom"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(prom), f"job{i}", str(i)], cwd=REPO) for i in range(8)]
    assert [p.wait(timeout=60) for p in procs] == [0] * 8
    got = samples(prom)
    assert got[("p88backup_job_failures_total", job("dump"))] == 8.0
    assert {got[("p88backup_last_success_timestamp_seconds", job(f"job{i}"))] for i in range(8)} == set(
        map(float, range(8))
    )


def test_the_registry_defines_every_documented_series() -> None:
    """README "Metrics" and the alert rules name these; a rename must fail here first."""
    names = {fam.name for fam in metrics.registry().collect()}
    assert names == {
        "p88backup_last_success_timestamp_seconds",
        "p88backup_last_duration_seconds",
        "p88backup_last_bytes",
        "p88backup_job_failures",  # exposed as p88backup_job_failures_total
        "p88backup_drill_rto_seconds",
        "p88backup_drill_rpo_seconds",
        "p88backup_drill_success",
        "p88backup_newest_wal_age_seconds",
        "p88backup_newest_wal_timestamp_seconds",
        "p88backup_wal_archive_lag_bytes",
    }
    readme = (REPO / "README.md").read_text()
    exposed = {n + "_total" if n == "p88backup_job_failures" else n for n in names}
    assert not {n for n in exposed if f"`{n}" not in readme}, "README's Metrics section lists every series"


def test_the_archive_fast_path_never_loads_prometheus_client(tmp_path: Path) -> None:
    """wal-push runs once per WAL segment: it records no metrics and must not pay for the client."""
    prom = tmp_path / "p88backup.prom"
    env = cli_env(tmp_path, P88_STORAGE_URL=f"file://{tmp_path}/store", P88_METRICS_TEXTFILE=str(prom))
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "p88backup", "wal-push", str(tmp_path / "000000010000000000000001")],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 5, r.stderr  # no such file: the command ran and failed
    imported = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    assert "prometheus_client" not in imported and "p88backup.metrics" not in imported
    assert not prom.exists()
