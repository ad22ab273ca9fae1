"""`status` through the CLI on a file:// catalog of made-up backups and drill reports (no server):
thresholds from the config and from the command line, the exit code, the --json shape, and the
metrics a status run writes. The real-server cases (a dump that ages, archiving that stops) are in
tests/integration/test_status.py.

Before: `status` printed the newest backups' ages and exited 0 whatever they were.
"""

from __future__ import annotations

import io
import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from p88backup.catalog.backups import Catalog
from p88backup.catalog.layout import STORAGE_MARKER
from p88backup.catalog.models import DrillCheckResult, DrillReport, DrillRun, DrillSource
from p88backup.core.health import CHECKS
from p88backup.errors import ExitCode
from p88backup.storage import open_storage
from tests.harness.helpers import cli_env, fake_basebackup_manifest, fake_dump_manifest, init_storage, run_cli
from tests.harness.procs import free_port

NOW = datetime.now(UTC)


def drill_report(bid: str, when: datetime, *, ok: bool) -> DrillReport:
    check = DrillCheckResult(name="recent orders", kind="sql", status="passed" if ok else "failed")
    run = DrillRun(kind="pitr", backup_id="20261101T000000Z", ok=ok, source_now=when, checks=[check])
    return DrillReport(
        id=bid,
        started_at=when,
        finished_at=when,
        ok=ok,
        p88backup_version="0.1.0",
        source=DrillSource(clock="production"),
        drills=[run],
    )


def catalog_env(tmp_path: Path, config: str = "", **extra: str) -> tuple[dict[str, str], Catalog]:
    url = f"file://{tmp_path / 'store'}"
    cfg = tmp_path / "p88backup.toml"
    cfg.write_text(f'storage_url = "{url}"\n{config}')
    env = cli_env(tmp_path, P88_CONFIG=str(cfg), **extra)
    init_storage(env)
    return env, Catalog(open_storage(url))


def status(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any]]:
    r = run_cli(["status", "--json", *args], env, timeout=60)
    assert r.returncode in (0, ExitCode.UNHEALTHY), r.stderr
    return r.returncode, json.loads(r.stdout)


def checks(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in doc["checks"]}


def test_thresholds_from_the_config_and_the_command_line(tmp_path: Path) -> None:
    env, catalog = catalog_env(
        tmp_path, '[status]\nmax_dump_age = "26h"\nmax_basebackup_age = "8d"\nmax_drill_age = "8d"\n'
    )
    old_dump = (NOW - timedelta(days=2, hours=3)).replace(microsecond=0)
    catalog.write(fake_dump_manifest(old_dump.strftime("%Y%m%dT%H%M%SZ"), old_dump))
    bb = NOW - timedelta(days=1)
    catalog.write(fake_basebackup_manifest(bb.strftime("%Y%m%dT%H%M%SZ"), bb, "000000010000000000000002"))
    catalog.write_drill(drill_report((NOW - timedelta(days=1)).strftime("%Y%m%dT%H%M%SZ"), NOW, ok=True))

    code, doc = status(env)
    assert code == ExitCode.UNHEALTHY and doc["healthy"] is False
    by_name = checks(doc)
    assert [c["name"] for c in doc["checks"] if not c["ok"]] == ["dump_age"]
    assert by_name["dump_age"]["limit"] == 26 * 3600 and by_name["dump_age"]["value"] >= 51 * 3600
    assert "is 2d3h old: 1d1h over the 1d2h limit" in by_name["dump_age"]["reason"]
    assert by_name["basebackup_age"]["ok"] and by_name["drill_passed"]["ok"]
    # the keys status --json always had are still there, with the same meaning
    assert doc["dumps"]["count"] == 1 and doc["dumps"]["latest_age_seconds"] >= 51 * 3600
    assert doc["basebackups"]["count"] == 1 and doc["storage"].startswith("file://")
    assert doc["drills"]["count"] == 1 and doc["drills"]["latest_ok"] is True

    code, doc = status(env, "--max-dump-age", "3d")  # the command line wins over the config
    assert code == 0 and doc["healthy"] is True

    human = run_cli(["status", "--max-basebackup-age", "12h", "--max-dump-age", "3d"], env, timeout=60)
    assert human.returncode == ExitCode.UNHEALTHY
    assert "FAIL  basebackup_age" in human.stdout and human.stdout.rstrip().endswith("UNHEALTHY")
    assert "basebackup_age: newest base backup" in human.stderr and "over the 12h limit" in human.stderr


def test_the_last_drill_failing_or_too_old_is_unhealthy(tmp_path: Path) -> None:
    env, catalog = catalog_env(tmp_path)
    code, doc = status(env, "--max-drill-age", "8d")
    assert code == ExitCode.UNHEALTHY and checks(doc)["drill_age"]["reason"] == "no drill at all (limit 8d)"

    ten_days = NOW - timedelta(days=10)
    catalog.write_drill(drill_report(ten_days.strftime("%Y%m%dT%H%M%SZ"), ten_days, ok=True))
    code, doc = status(env, "--max-drill-age", "8d")
    assert code == ExitCode.UNHEALTHY and "2d over the 8d limit" in checks(doc)["drill_age"]["reason"]
    assert status(env)[0] == 0  # passed, and no age limit

    yesterday = NOW - timedelta(days=1)
    catalog.write_drill(drill_report(yesterday.strftime("%Y%m%dT%H%M%SZ"), yesterday, ok=False))
    code, doc = status(env)  # failed: unhealthy with no limit set at all
    assert code == ExitCode.UNHEALTHY and doc["drills"]["latest_ok"] is False
    reason = checks(doc)["drill_passed"]["reason"]
    assert "failed: pitr drill of 20261101T000000Z: check recent orders failed" in reason


def test_a_bad_duration_on_the_command_line_is_a_usage_error(tmp_path: Path) -> None:
    env, _ = catalog_env(tmp_path)
    r = run_cli(["status", "--max-wal-age", "15 minutes"], env, timeout=60)
    assert r.returncode == ExitCode.USAGE and "use e.g. 15m, 26h, 8d, 1d12h" in r.stderr


def textfile(prom: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(prom.read_text())
        for s in f.samples
    }


def test_status_writes_what_it_found_to_the_metrics_textfile(tmp_path: Path) -> None:
    """Only what status measured (the catalog, the checks, WAL freshness); no job series, and no
    file at all for --help."""
    prom = tmp_path / "metrics" / "p88backup.prom"
    prom.parent.mkdir()
    env, _ = catalog_env(tmp_path, P88_METRICS_TEXTFILE=str(prom))
    assert run_cli(["status", "--help"], env, timeout=60).returncode == 0
    assert run_cli(["dump", "--help"], env, timeout=60).returncode == 0
    assert run_cli(["dump", "--no-such-option"], env, timeout=60).returncode == ExitCode.USAGE
    assert not prom.exists()  # none of these ran anything
    assert status(env)[0] == 0
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    assert set(families) == {
        "p88backup_newest_wal_age_seconds",
        "p88backup_newest_wal_timestamp_seconds",
        "p88backup_wal_archive_lag_bytes",
        "p88backup_newest_backup_timestamp_seconds",
        "p88backup_check_ok",
        "p88backup_status_check_success",
        "p88backup_healthy",
    }
    got = textfile(prom)
    assert math.isnan(got[("p88backup_newest_wal_age_seconds", ())])  # nothing archived, no server asked
    assert got[("p88backup_newest_wal_timestamp_seconds", ())] == 0.0  # none: time() - 0 is "too old"
    for kind in ("dump", "basebackup", "drill"):
        assert got[("p88backup_newest_backup_timestamp_seconds", (("kind", kind),))] == 0.0
    assert got[("p88backup_status_check_success", ())] == 1.0 and got[("p88backup_healthy", ())] == 1.0
    assert {labels[0][1] for name, labels in got if name == "p88backup_check_ok"} == set(CHECKS)


def test_a_status_that_cannot_check_leaves_no_good_figures_behind(tmp_path: Path) -> None:
    """Before: a status run that could not read the storage wrote nothing, so the textfile kept the
    last good WAL age and lag for as long as the storage stayed away, and no series said so."""
    prom = tmp_path / "p88backup.prom"
    env, catalog = catalog_env(tmp_path, '[status]\nmax_dump_age = "26h"\n', P88_METRICS_TEXTFILE=str(prom))
    when = NOW - timedelta(hours=2)
    catalog.write(fake_dump_manifest(when.strftime("%Y%m%dT%H%M%SZ"), when))
    catalog.storage.put("wal/00000001/000000010000000000000001.zst", io.BytesIO(b"x"))
    assert status(env)[0] == 0
    before = textfile(prom)
    assert before[("p88backup_newest_wal_age_seconds", ())] < 60
    assert before[("p88backup_newest_backup_timestamp_seconds", (("kind", "dump"),))] == when.timestamp()

    (tmp_path / "store" / STORAGE_MARKER).unlink()  # the volume "unmounted": storage refuses
    r = run_cli(["status"], env, timeout=60)
    assert r.returncode == ExitCode.STORAGE, r.stderr
    got = textfile(prom)
    assert got[("p88backup_status_check_success", ())] == 0.0 and got[("p88backup_healthy", ())] == 0.0
    assert math.isnan(got[("p88backup_newest_wal_age_seconds", ())])
    assert math.isnan(got[("p88backup_wal_archive_lag_bytes", ())])
    assert math.isnan(got[("p88backup_check_ok", (("check", "dump_age"),))])
    # the times stay (still true; time() - t grows): the dump alert keeps working through the outage
    assert got[("p88backup_newest_backup_timestamp_seconds", (("kind", "dump"),))] == when.timestamp()
    wal_time = ("p88backup_newest_wal_timestamp_seconds", ())
    assert got[wal_time] == before[wal_time] > 0


def test_a_textfile_that_cannot_be_written_does_not_change_the_exit_status(tmp_path: Path) -> None:
    env, _ = catalog_env(tmp_path, P88_METRICS_TEXTFILE=str(tmp_path / "no-such-dir" / "p88backup.prom"))
    r = run_cli(["status"], env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "cannot write the metrics textfile" in r.stderr


def test_a_job_that_fails_on_its_settings_still_counts_the_failure(tmp_path: Path) -> None:
    """The settings cannot say where the textfile is when they are broken; P88_METRICS_TEXTFILE can."""
    prom = tmp_path / "p88backup.prom"
    env = cli_env(tmp_path, P88_METRICS_TEXTFILE=str(prom), P88_RETENTION__KEEP_DAILY="broken")
    r = run_cli(["dump"], env, timeout=60)
    assert r.returncode == ExitCode.CONFIG, r.stderr
    got = {
        (s.name, tuple(s.labels.items())): s.value
        for f in text_string_to_metric_families(prom.read_text())
        for s in f.samples
    }
    assert got[("p88backup_job_failures_total", (("job", "dump"),))] == 1.0
    assert ("p88backup_last_success_timestamp_seconds", (("job", "dump"),)) not in got


def test_an_unreachable_database_leaves_the_verdict_to_the_ages(tmp_path: Path) -> None:
    """status judges protection, not the database: a server it cannot ask is reported, not fatal."""
    env, catalog = catalog_env(tmp_path, P88_DATABASE_URL=f"postgresql://backup@127.0.0.1:{free_port()}/p88")
    catalog.write(fake_dump_manifest(NOW.strftime("%Y%m%dT%H%M%SZ"), NOW))
    code, doc = status(env, "--max-dump-age", "1h")
    assert code == 0, doc
    assert doc["wal"]["server_lsn"] is None and "cannot connect to PostgreSQL" in doc["wal"]["server_error"]
    r = run_cli(["wal-verify", "--json"], env, timeout=60)
    assert r.returncode == 0 and "cannot connect" in json.loads(r.stdout)["freshness"]["server_error"]
