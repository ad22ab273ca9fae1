"""The metrics textfile: every job's series survive the next job's write, counters add up, gauges
replace, the write is atomic and serialised, and the result is what prometheus-client's (and so
node-exporter's) text parser reads.

Before: metrics.py had the registry and nothing that wrote it anywhere; no command recorded a run.
"""

from __future__ import annotations

import fcntl
import math
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from p88backup import metrics
from p88backup.core.health import Facts, Limits, Newest, judge
from p88backup.core.status import StatusReport
from p88backup.core.wal.freshness import WalFreshness
from tests.harness.helpers import REPO, cli_env, other_user
from tests.harness.procs import make_traversable, run_as


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


def freshness(age: float | None, lag_bytes: int | None) -> WalFreshness:
    """The archive's newest file ``age`` seconds before 2800 (None: nothing archived)."""
    now = datetime.fromtimestamp(2800.0, UTC)
    newest = None if age is None else now - timedelta(seconds=age)
    return WalFreshness(now, 0 if age is None else 3, newest, None, lag_bytes=lag_bytes)


def test_wal_figures_replace_the_last_ones_and_a_job_leaves_them_alone(tmp_path: Path) -> None:
    prom = tmp_path / "p88backup.prom"
    metrics.wal_freshness(freshness(30.0, lag_bytes=0))
    metrics.write_textfile(prom)
    next_process()
    metrics.wal_freshness(freshness(1800.0, lag_bytes=None))  # no server this time
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
    metrics.drill_result("pitr", ok=True, rto_seconds=42.0, rpo_seconds=None)
    metrics.write_textfile(prom)
    got = samples(prom)
    assert got[("other_thing", ())] == 7.0
    assert got[("p88backup_drill_success", (("kind", "pitr"),))] == 1.0
    assert got[("p88backup_drill_rto_seconds", (("kind", "pitr"),))] == 42.0
    assert math.isnan(got[("p88backup_drill_rpo_seconds", (("kind", "pitr"),))])  # not measured: unknown


def test_a_failed_drill_leaves_no_figures_of_an_earlier_one(tmp_path: Path) -> None:
    """README: RTO and RPO are the last drill's. Before: a failed drill kept the previous drill's
    figures (in the process and in the textfile), so a dashboard showed an RTO no drill had met."""
    prom = tmp_path / "p88backup.prom"
    metrics.drill_result("dump", ok=True, rto_seconds=30.0, rpo_seconds=3600.0)
    metrics.drill_result("pitr", ok=True, rto_seconds=50.0, rpo_seconds=5.0)
    metrics.write_textfile(prom)
    next_process()
    metrics.drill_result("pitr", ok=False, rto_seconds=None, rpo_seconds=None)  # failed: nothing measured
    metrics.write_textfile(prom)
    got = samples(prom)
    assert got[("p88backup_drill_success", (("kind", "pitr"),))] == 0.0
    assert math.isnan(got[("p88backup_drill_rto_seconds", (("kind", "pitr"),))])
    assert math.isnan(got[("p88backup_drill_rpo_seconds", (("kind", "pitr"),))])
    assert got[("p88backup_drill_rto_seconds", (("kind", "dump"),))] == 30.0  # the other kind's last drill passed
    # in one process too (the scheduler records every drill in its registry), and whatever it measured
    metrics.drill_result("dump", ok=False, rto_seconds=31.0, rpo_seconds=60.0)
    assert math.isnan(metrics.registry().get_sample_value("p88backup_drill_rto_seconds", {"kind": "dump"}) or 0.0)


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


def test_a_job_s_failure_counter_exists_at_0_from_its_first_success(tmp_path: Path) -> None:
    """increase(p88backup_job_failures_total[1h]) > 0 sees a failure only if the series had a sample
    before it. Before: the series first appeared at 1, so every job's first failure went unalerted."""
    prom = tmp_path / "p88backup.prom"
    metrics.job_finished("dump", ok=True, seconds=1.0, now=1000.0)
    metrics.write_textfile(prom)
    assert samples(prom)[("p88backup_job_failures_total", job("dump"))] == 0.0
    next_process()
    metrics.job_finished("dump", ok=False, seconds=1.0)
    metrics.write_textfile(prom)
    assert samples(prom)[("p88backup_job_failures_total", job("dump"))] == 1.0
    next_process()
    metrics.job_finished("dump", ok=True, seconds=1.0)  # a later success leaves the count alone
    metrics.write_textfile(prom)
    assert samples(prom)[("p88backup_job_failures_total", job("dump"))] == 1.0


def test_jobs_known_creates_their_counters_without_touching_counts() -> None:
    metrics.job_finished("expire", ok=False, seconds=1.0)
    metrics.jobs_known(["dump", "verify", "expire"])
    reg = metrics.registry()
    assert [reg.get_sample_value("p88backup_job_failures_total", {"job": j}) for j in ("dump", "verify", "expire")] == [
        0.0,
        0.0,
        1.0,
    ]


T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)


def report(*, dump: datetime | None, drill_ok: bool = True, wal_age: float = 60.0, lag: int | None = 0) -> StatusReport:
    facts = Facts(
        Newest("20261130T021500Z", dump) if dump else None,
        None,
        Newest("20261129T050000Z", T0 - timedelta(days=1), ok=drill_ok),
        WalFreshness(T0, 3, T0 - timedelta(seconds=wal_age), "000000010000000000000003", lag_bytes=lag),
    )
    return StatusReport(
        "memory://x", T0, {"dumps": 1, "basebackups": 0, "drills": 1}, facts, judge(facts, Limits(), T0)
    )


def gauges() -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in metrics.registry().collect()
        for s in fam.samples
        if fam.name
        in (
            "p88backup_newest_backup_timestamp_seconds",
            "p88backup_check_ok",
            "p88backup_status_check_success",
            "p88backup_newest_wal_age_seconds",
            "p88backup_newest_wal_timestamp_seconds",
            "p88backup_wal_archive_lag_bytes",
        )
    }


def test_a_status_report_exports_the_catalog_and_each_check_and_a_failed_check_unknowns() -> None:
    metrics.status_report(report(dump=T0 - timedelta(hours=3), drill_ok=False))
    got = gauges()
    newest = "p88backup_newest_backup_timestamp_seconds"
    assert got[(newest, (("kind", "dump"),))] == (T0 - timedelta(hours=3)).timestamp()
    assert got[(newest, (("kind", "basebackup"),))] == 0.0  # none at all: time() - 0 is "too old"
    assert got[(newest, (("kind", "drill"),))] == (T0 - timedelta(days=1)).timestamp()
    assert got[("p88backup_check_ok", (("check", "drill_passed"),))] == 0.0
    assert got[("p88backup_check_ok", (("check", "dump_age"),))] == 1.0
    assert got[("p88backup_status_check_success", ())] == 1.0
    assert got[("p88backup_newest_wal_age_seconds", ())] == 60.0
    assert got[("p88backup_wal_archive_lag_bytes", ())] == 0.0

    metrics.status_check_failed()  # storage unreachable: nothing measured now
    got = gauges()
    assert got[("p88backup_status_check_success", ())] == 0.0
    assert math.isnan(got[("p88backup_newest_wal_age_seconds", ())])
    assert math.isnan(got[("p88backup_wal_archive_lag_bytes", ())])
    assert all(math.isnan(v) for (name, _), v in got.items() if name == "p88backup_check_ok")
    # times stay: they are still true, and time() - t keeps growing for the alerts
    assert got[(newest, (("kind", "dump"),))] == (T0 - timedelta(hours=3)).timestamp()
    assert got[("p88backup_newest_wal_timestamp_seconds", ())] == (T0 - timedelta(seconds=60)).timestamp()


def test_a_verdict_asked_at_each_scrape() -> None:
    state = {"healthy": True}
    metrics.verdict_from(lambda: state["healthy"], {"wal_stream": lambda: 1 / 0 == 0})
    reg = metrics.registry()
    assert reg.get_sample_value("p88backup_healthy") == 1.0
    state["healthy"] = False
    assert reg.get_sample_value("p88backup_healthy") == 0.0
    assert math.isnan(reg.get_sample_value("p88backup_check_ok", {"check": "wal_stream"}) or 0.0)  # raised: unknown


def test_the_lock_serves_every_user_whatever_the_umask(tmp_path: Path) -> None:
    """Before: the lock was created with O_CREAT 0o644 through the umask, so root with umask 077 made
    a 0600 file that the service user could not open: every later write as postgres failed (only
    logged) and the metrics stopped. Now the job locks' opener: 0666, read-only when it must."""
    user = other_user()
    os.chmod(tmp_path, 0o777)
    make_traversable(tmp_path)
    prom = tmp_path / "p88backup.prom"
    old = os.umask(0o077)
    try:
        metrics.job_finished("dump", ok=True, seconds=1.0, now=1000.0)
        metrics.write_textfile(prom)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "p88backup.prom.lock").stat().st_mode) == 0o666
    code = (
        "import sys\nfrom pathlib import Path\nfrom p88backup import metrics\n"
        "metrics.job_finished('expire', ok=False, seconds=1.0)\nmetrics.write_textfile(Path(sys.argv[1]))\n"
    )
    r = run_as(user, [sys.executable, "-c", code, str(prom)], cwd=REPO)
    assert r.returncode == 0, r.stderr
    got = samples(prom)
    assert got[("p88backup_job_failures_total", job("expire"))] == 1.0
    assert got[("p88backup_last_success_timestamp_seconds", job("dump"))] == 1000.0


def test_a_lock_that_cannot_be_opened_is_an_os_error_naming_it(tmp_path: Path) -> None:
    """cli.main logs OSError from a textfile write and carries on; a ConfigError would crash it."""
    prom = tmp_path / "p88backup.prom"
    (tmp_path / "p88backup.prom.lock").mkdir()  # not a regular file
    metrics.job_finished("dump", ok=False, seconds=1.0)
    with pytest.raises(OSError, match="cannot use the metrics lock .*p88backup.prom.lock"):
        metrics.write_textfile(prom)


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
        "p88backup_newest_backup_timestamp_seconds",
        "p88backup_check_ok",
        "p88backup_status_check_success",
        "p88backup_healthy",
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
