"""`status` fails when protection has stopped, and jobs leave their metrics where node-exporter
reads them (issue 12, acceptance 4 and 6), against a real PostgreSQL archiving with wal-push.

Before: `status` exited 0 whatever the ages; nothing compared the server's WAL position with the
archive, so an archive that had stopped looked like a quiet server; no command wrote metrics.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from p88backup.errors import ExitCode
from tests.harness.archiving import Archived, make_archived
from tests.harness.helpers import ok, run_cli
from tests.harness.postgres import PgCluster


def status(arch: Archived, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    r = run_cli(["status", "--json", *args], env or arch.env, timeout=120)
    assert r.returncode in (0, ExitCode.UNHEALTHY), r.stderr
    return r.returncode, json.loads(r.stdout), r.stderr


def check(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(c for c in doc["checks"] if c["name"] == name)


def samples(path: Path) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(path.read_text())
        for s in family.samples
    }


DUMP = ("job", "dump")


def test_status_fails_on_an_old_dump_and_dump_writes_its_metrics(
    pg_factory: Callable[..., PgCluster], tmp_path: Path
) -> None:
    prom = tmp_path / "textfile" / "p88backup.prom"
    prom.parent.mkdir()
    arch = make_archived(
        pg_factory, tmp_path, f"file://{tmp_path}/store", "push", extra_env={"P88_METRICS_TEXTFILE": str(prom)}
    )
    arch.pg.sql("CREATE TABLE orders (id int)")
    arch.pg.sql("INSERT INTO orders SELECT generate_series(1, 1000)")
    started = time.time()
    dump = json.loads(ok(arch.cli("dump", "--json")).stdout)

    # acceptance 6: the textfile parses, and holds the dump's success, duration and bytes
    got = samples(prom)
    assert started <= got[("p88backup_last_success_timestamp_seconds", (DUMP,))] <= time.time()
    assert got[("p88backup_last_bytes", (DUMP,))] == dump["stored_bytes"] > 0
    assert 0 < got[("p88backup_last_duration_seconds", (DUMP,))] < 300
    assert got[("p88backup_job_failures_total", (DUMP,))] == 0.0  # from the first success: increase() sees a failure
    last_success = got[("p88backup_last_success_timestamp_seconds", (DUMP,))]

    # a failed dump counts a failure and keeps the last success
    failed = arch.cli("dump", "--database", "no_such_database")
    assert failed.returncode != 0
    got = samples(prom)
    assert got[("p88backup_job_failures_total", (DUMP,))] == 1.0
    assert got[("p88backup_last_success_timestamp_seconds", (DUMP,))] == last_success
    assert got[("p88backup_last_bytes", (DUMP,))] == dump["stored_bytes"]
    ok(arch.cli("verify", "latest"))  # another job: both keep their series
    got = samples(prom)
    assert ("p88backup_last_success_timestamp_seconds", (("job", "verify"),)) in got
    assert got[("p88backup_job_failures_total", (DUMP,))] == 1.0

    # acceptance 4: all fresh -> 0; the dump older than --max-dump-age -> 18, saying by how much
    arch.switch_and_wait()
    code, doc, _ = status(arch, "--max-dump-age", "1h", "--max-wal-age", "15m")
    assert code == 0 and doc["healthy"] is True, doc["checks"]
    assert doc["dumps"]["latest_id"] == dump["id"] and doc["wal"]["lag_segments"] == 0
    time.sleep(2.5)
    code, doc, stderr = status(arch, "--max-dump-age", "1s", "--max-wal-age", "15m")
    assert code == ExitCode.UNHEALTHY and doc["healthy"] is False
    assert [c["name"] for c in doc["checks"] if not c["ok"]] == ["dump_age"]
    assert f"newest dump {dump['id']} is " in check(doc, "dump_age")["reason"]
    assert "over the 1s limit" in check(doc, "dump_age")["reason"]
    assert "dump_age: newest dump" in stderr
    # status wrote what it measured of the archive, next to the jobs' series
    got = samples(prom)
    assert 2 <= got[("p88backup_newest_wal_age_seconds", ())] < 120
    assert got[("p88backup_wal_archive_lag_bytes", ())] < 16 * 1024 * 1024
    assert got[("p88backup_job_failures_total", (DUMP,))] == 1.0


def test_status_fails_when_archiving_stops_while_the_server_writes_not_when_it_is_quiet(
    pg_factory: Callable[..., PgCluster], tmp_path: Path
) -> None:
    arch = make_archived(pg_factory, tmp_path, f"file://{tmp_path}/store", "push")
    arch.pg.sql("CREATE TABLE t (x int)")
    arch.switch_and_wait()
    time.sleep(2.5)

    # quiet: nothing archived for longer than the limit, but the server has finished no segment since
    code, doc, _ = status(arch, "--max-wal-age", "1s")
    assert code == 0, doc["checks"]
    assert check(doc, "wal_age")["reason"].startswith("the server is quiet")
    assert doc["wal"]["lag_segments"] == 0 and doc["wal"]["server_lsn"] is not None
    # without the server's position the same archive can only be judged by its age, and says so
    no_db = {k: v for k, v in arch.env.items() if k != "P88_DATABASE_URL"}
    code, doc, _ = status(arch, "--max-wal-age", "1s", env=no_db)
    assert code == ExitCode.UNHEALTHY
    assert (
        "server position unknown (no database_url configured): judged by age alone" in check(doc, "wal_age")["reason"]
    )

    # archiving stops; the server goes on writing and finishing segments
    arch.pg.sql("ALTER SYSTEM SET archive_command = 'false'")
    arch.pg.sql("SELECT pg_reload_conf()")
    for _ in range(2):
        arch.pg.sql("INSERT INTO t SELECT generate_series(1, 10000)")
        arch.pg.sql("SELECT pg_switch_wal()")
    code, doc, stderr = status(arch, "--max-wal-age", "1s")
    assert code == ExitCode.UNHEALTHY
    wal = check(doc, "wal_age")
    assert not wal["ok"] and wal["reason"].startswith("archiving has stopped while the server kept writing")
    assert doc["wal"]["lag_segments"] >= 2 and doc["wal"]["lag_bytes"] >= 2 * 16 * 1024 * 1024
    assert "wal_age: archiving has stopped" in stderr
    # with a generous limit the same archive is still fresh enough: no verdict before the limit
    assert status(arch, "--max-wal-age", "1h")[0] == 0

    # wal-verify reports the same staleness, and still exits 0: there is no gap
    stale_env = arch.env | {"P88_STATUS__MAX_WAL_AGE": "1s"}
    r = run_cli(["wal-verify", "--json"], stale_env, timeout=120)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["freshness"]["lag_segments"] >= 2 and report["freshness"]["newest_age_seconds"] >= 2
    assert report["archiving"]["ok"] is False and "archiving has stopped" in report["archiving"]["reason"]
    human = run_cli(["wal-verify"], stale_env, timeout=120)
    assert human.returncode == 0 and "STALE  archiving has stopped" in human.stdout
