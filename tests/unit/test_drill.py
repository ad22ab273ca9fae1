"""Restore drills, the parts that need no server: check verdicts, figures, space, ports, permissions,
signals, the runner's early refusals (memory storage), report retention and ``list --kind drill``."""

from __future__ import annotations

import io
import os
import signal
import stat
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from p88backup.catalog.backups import Catalog
from p88backup.catalog.models import DatabaseDump, DrillCheckResult, DrillRun, Encoding
from p88backup.core.drill import checks, report, scratch
from p88backup.core.drill.interrupts import DrillInterrupt, Interrupts
from p88backup.core.drill.run import DrillOptions, DrillRunner
from p88backup.core.retention.policy import Candidate, plan_drill_reports
from p88backup.errors import CryptoError, ExitCode, NotFoundError, PgToolError, RefusedError
from p88backup.storage import open_storage
from p88backup.stream import Codec
from tests.harness.helpers import cli_env, fake_dump_manifest, initialised, json_out, run_cli
from tests.harness.postgres import tools_search_path
from tests.harness.procs import make_traversable
from tests.unit.test_drill_catalog import fake_report

T0 = datetime(2026, 11, 27, 4, 0, 0, tzinfo=UTC)
MIB = 1024 * 1024

# -- SQL check verdicts -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "rows, passed, why",
    [
        ([(True,)], True, "true"),
        ([(True, "extra columns are fine")], True, "true"),
        ([(False,)], False, "returned false"),
        ([(None,)], False, "returned NULL"),
        ([], False, "returned 0 rows"),
        ([(True,), (True,)], False, "returned 2 rows"),
        ([(1,)], False, "returned 1 (int), not a boolean"),
        ([("t",)], False, "returned 't' (str), not a boolean"),
        ([()], False, "without columns"),
        (None, False, "no result set"),
    ],
)
def test_a_check_passes_only_on_one_row_whose_first_column_is_true(
    rows: list[tuple[Any, ...]] | None, passed: bool, why: str
) -> None:
    ok, detail = checks.judge(rows)
    assert ok is passed and why in detail


@pytest.mark.parametrize(
    "recorded, restored, passed, detail",
    [
        ({"public.a": 3, "public.b": 0}, {"public.a": 3, "public.b": 0}, True, "2 tables, every count"),
        (
            {"public.a": 3},
            {"public.a": 3, "public.new": 9},
            True,
            "1 table, every count",
        ),  # only what the dump recorded
        ({"public.a": 3}, {"public.a": 2}, False, "public.a: 3 recorded, 2 restored"),
        ({"public.a": 3}, {}, False, "public.a: 3 recorded, missing restored"),
    ],
)
def test_row_counts_compare_with_those_recorded_at_backup_time(
    recorded: dict[str, int], restored: dict[str, int], passed: bool, detail: str
) -> None:
    ok, why = checks.compare_counts(recorded, restored)
    assert ok is passed and detail in why


def test_row_counts_not_recorded_exactly_are_skipped_not_failed() -> None:
    from p88backup.pg.conn import ConnInfo

    db = DatabaseDump(name="p88", format="custom", objects=[], row_counts={"public.a": 1}, row_counts_kind="estimate")
    result = checks.row_count_check(ConnInfo({"host": "nowhere.invalid"}), db)  # never connects
    assert result.status == "skipped" and "estimate" in result.detail


# -- figures ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "now, newest, rpo",
    [
        (T0, T0 - timedelta(minutes=5), 300.0),
        (T0, T0 - timedelta(hours=26, seconds=1), 93601.0),
        (T0, T0 + timedelta(seconds=2), 0.0),  # WAL archived while the drill ran: nothing lost, never negative
        (T0, None, None),
        (T0.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo")), T0 - timedelta(seconds=1.5), 1.5),
    ],
)
def test_rpo_is_the_sources_clock_minus_the_newest_restored_commit(
    now: datetime, newest: datetime | None, rpo: float | None
) -> None:
    assert report.rpo_seconds(now, newest) == rpo


@pytest.mark.parametrize("start, passed_at, rto", [(100.0, 112.3456, 12.346), (100.0, None, None), (100.0, 100.0, 0.0)])
def test_rto_runs_from_the_restore_start_to_the_checks_passing(
    start: float, passed_at: float | None, rto: float | None
) -> None:
    assert report.rto_seconds(start, passed_at) == rto


def _run(kind: str, *, error: str | None = None, statuses: tuple[str, ...] = ()) -> DrillRun:
    run = DrillRun(
        kind=kind,  # type: ignore[arg-type]
        backup_id="20261127T021500Z",
        ok=False,
        error=error,
        source_now=T0,
        checks=[
            DrillCheckResult(name=f"c{i}", kind="sql", status=s, detail=f"d{i}")  # type: ignore[arg-type]
            for i, s in enumerate(statuses)
        ],
    )
    run.ok = report.run_ok(run)
    return run


def test_a_drill_passes_unless_its_restore_or_a_check_failed() -> None:
    assert _run("dump", statuses=("passed", "skipped")).ok
    assert not _run("dump", statuses=("passed", "failed")).ok
    assert not _run("pitr", error="WAL is missing").ok


def test_the_failure_message_names_the_drill_the_backup_and_the_cause() -> None:
    r = fake_report("20261127T040000Z")
    r.drills = [_run("dump", statuses=("passed", "failed")), _run("pitr", error="WAL is missing"), _run("dump")]
    r.ok = False
    assert report.failure_message(r) == (
        "drill 20261127T040000Z failed: dump drill of dump 20261127T021500Z: check 'c1' failed: d1"
        " | pitr drill of base backup 20261127T021500Z: restore failed: WAL is missing"
    )
    assert report.failure_message(fake_report("20261127T040000Z")) is None


# -- space, ports, permissions ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "restored, free, fits",
    [
        (0, 256 * MIB, True),  # an empty cluster still needs its own files
        (0, 255 * MIB, False),
        (1000 * MIB, 1456 * MIB, True),  # 1.2 x data + 256 MiB
        (1000 * MIB, 1455 * MIB, False),
        (10 * 1024 * MIB, 5 * 1024 * MIB, False),
    ],
)
def test_free_space_decision(restored: int, free: int, fits: bool) -> None:
    problem = scratch.space_problem("dump drill of X", restored, free, Path("/work"))
    assert (problem is None) is fits
    if not fits:
        assert problem is not None and "dump drill of X needs about" in problem and "in /work" in problem


@pytest.mark.parametrize(
    "port_range, busy, port",
    [
        ((55432, 55434), set(), 55432),
        ((55432, 55434), {55432, 55433}, 55434),
        ((55432, 55434), {55432, 55433, 55434}, None),
        ((6000, 6000), set(), 6000),
    ],
)
def test_the_first_free_port_of_the_range(port_range: tuple[int, int], busy: set[int], port: int | None) -> None:
    assert scratch.pick_port(port_range, lambda p: p in busy) == port


def test_a_listening_port_is_in_use() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        assert scratch.port_in_use(sock.getsockname()[1])


U, G = 1000, 2000  # the directory's owner and group
S = stat.S_IFDIR


@pytest.mark.parametrize(
    "mode, uid, gids, ok",
    [
        (S | 0o700, U, [], True),
        (S | 0o700, 999, [G], False),
        (S | 0o710, 999, [G], True),
        (S | 0o750, 999, [7], False),
        (S | 0o701, 999, [7], True),
        (S | 0o601, U, [], False),  # the owner's own bits decide for the owner
        (S | 0o000, 0, [], True),  # root
    ],
)
def test_who_may_enter_a_directory(mode: int, uid: int, gids: list[int], ok: bool) -> None:
    assert scratch.may_traverse(mode, U, G, uid, gids) is ok


def test_the_first_directory_the_servers_owner_cannot_enter(tmp_path: Path) -> None:
    make_traversable(tmp_path)
    locked = tmp_path / "locked"
    locked.mkdir()
    os.chmod(locked, 0o000)  # nobody but root enters, whoever owns it
    try:
        assert scratch.unreachable_parent(locked / "work" / "deeper", "postgres") == locked
        assert scratch.unreachable_parent(tmp_path / "open" / "work", "postgres") is None  # made by us, for it
        assert scratch.unreachable_parent(locked / "work", None) is None  # not root: the servers run as us
    finally:
        os.chmod(locked, 0o700)


# -- signals ----------------------------------------------------------------------------------------


def test_sigterm_raises_in_the_main_thread_and_handlers_come_back() -> None:
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(DrillInterrupt, match="SIGTERM"), Interrupts():
        os.kill(os.getpid(), signal.SIGTERM)
        for _ in range(100):  # the handler runs between bytecodes
            pass
    assert signal.getsignal(signal.SIGTERM) is before


def test_a_signal_during_cleanup_waits_for_the_cleanup_to_finish() -> None:
    done = []
    with pytest.raises(DrillInterrupt, match="SIGINT"), Interrupts() as interrupts:
        with interrupts.shield():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)  # a second one is ignored, not raised mid-cleanup
            done.append("cleanup finished")
    assert done == ["cleanup finished"]


# -- the runner's refusals, before any scratch cluster ----------------------------------------------


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(initialised(open_storage(f"memory://{uuid.uuid4().hex}")))


def _runner(catalog: Catalog, tmp_path: Path, codec: Codec | None = None, **kw: Any) -> DrillRunner:
    make_traversable(tmp_path)  # as root, the scratch servers' owner must reach work_dir
    bins = Path(tools_search_path())  # every installed major, as the CLI tests give it
    options = DrillOptions(work_dir=tmp_path / "work", restore_command="false", pg_bin_dir=bins, **kw)
    return DrillRunner(catalog.storage, codec or Codec(), options, source=None)


def test_nothing_to_drill_is_not_found(catalog: Catalog, tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="nothing to drill"):
        _runner(catalog, tmp_path).run()
    catalog.write(fake_dump_manifest("20261127T021500Z", T0))
    with pytest.raises(NotFoundError, match="no base backup to drill"):
        _runner(catalog, tmp_path, pitr=True).run()  # asked for explicitly
    assert not (tmp_path / "work").exists()


def test_an_encrypted_backup_without_the_key_is_refused_at_once(catalog: Catalog, tmp_path: Path) -> None:
    m = fake_dump_manifest("20261127T021500Z", T0)
    m.encoding = Encoding(encryption="age", recipients=["age1..."])
    catalog.write(m)
    with pytest.raises(CryptoError, match="dump 20261127T021500Z is encrypted.*drill host") as err:
        _runner(catalog, tmp_path).run()
    assert err.value.exit_code == ExitCode.CRYPTO
    assert not (tmp_path / "work").exists()  # refused before anything was made


def test_a_backup_whose_server_programs_are_missing_is_refused_at_once(catalog: Catalog, tmp_path: Path) -> None:
    m = fake_dump_manifest("20261127T021500Z", T0)
    m.server_version_num = 90624  # PostgreSQL 9.6: nothing here can run it
    catalog.write(m)
    with pytest.raises(PgToolError, match="initdb of PostgreSQL 9 is needed") as err:
        _runner(catalog, tmp_path).run()
    assert err.value.exit_code == ExitCode.PG_TOOL
    assert not (tmp_path / "work").exists()


def test_a_restore_that_would_not_fit_is_refused(catalog: Catalog, tmp_path: Path) -> None:
    m = fake_dump_manifest("20261127T021500Z", T0)
    m.databases[0].size = 1 << 50  # a petabyte database
    catalog.write(m)
    with pytest.raises(RefusedError, match="dump drill of 20261127T021500Z needs about") as err:
        _runner(catalog, tmp_path).run()
    assert err.value.exit_code == ExitCode.REFUSED
    assert list((tmp_path / "work").iterdir()) == []  # no scratch folder was made
    assert catalog.drill_ids() == []


def test_leftovers_of_a_killed_drill_are_removed_with_what_still_runs_in_them(tmp_path: Path) -> None:
    import subprocess

    stale = tmp_path / "drill-20261120T040000Z" / "dump" / "data"
    (stale / "global").mkdir(parents=True)
    (stale / "global" / "pg_control").write_bytes(b"")  # a data directory, its postmaster gone
    (tmp_path / "other").mkdir()
    orphan = subprocess.Popen(["sleep", "300"], cwd=stale)  # a backend left behind
    try:
        assert scratch.processes_in(stale) == [orphan.pid]
        assert scratch.reap_leftovers(tmp_path, None) == [tmp_path / "drill-20261120T040000Z"]
        assert orphan.wait(timeout=10) == -signal.SIGKILL
    finally:
        orphan.kill()
        orphan.wait()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["other"]


# -- retention and listing --------------------------------------------------------------------------


@pytest.mark.parametrize("count, kept", [(3, 3), (10, 10), (14, 10)])
def test_the_newest_ten_drill_reports_are_kept(count: int, kept: int) -> None:
    ids = [f"202611{d:02d}T040000Z" for d in range(1, count + 1)]
    decision = plan_drill_reports([Candidate(i, T0 - timedelta(days=30 - n)) for n, i in enumerate(ids)], T0)
    assert sorted(decision.keep) == ids[-kept:]
    assert decision.expire == ids[: count - kept]


def test_expire_keeps_the_newest_drill_reports_and_deletes_the_rest(catalog: Catalog, tmp_path: Path) -> None:
    from p88backup.core.retention.expire import Expirer
    from p88backup.core.retention.policy import GfsPolicy

    ids = [f"202611{d:02d}T040000Z" for d in range(1, 13)]
    for d, did in enumerate(ids, start=1):
        catalog.write_drill(fake_report(did, datetime(2026, 11, d, 4, tzinfo=UTC)))
    catalog.storage.put("dumps/20261101T021500Z/p88.pgdump.zst", io.BytesIO(b"x"))  # an orphan dump
    expirer = Expirer(catalog.storage, GfsPolicy(7, 4, 6), orphan_grace=timedelta(hours=1), lock_dir=tmp_path)
    plan = expirer.plan(datetime.now(UTC) + timedelta(hours=2))  # the orphan is past its grace
    assert plan.drill_reports.expire == ids[:2]
    assert [(o.kind, o.id) for o in plan.orphans] == [("dump", "20261101T021500Z")]  # drills are nobody's orphans
    assert plan.as_dict()["drill_reports"] == {"keep": ids[2:], "expire": ids[:2]}
    expirer.apply(plan)
    assert catalog.drill_ids() == ids[2:]


def test_list_kind_drill_shows_the_reports_and_leaves_list_all_as_it_was(tmp_path: Path) -> None:
    store = tmp_path / "store"
    env = cli_env(tmp_path, P88_STORAGE_URL=f"file://{store}")
    assert run_cli(["init"], env).returncode == 0
    catalog = Catalog(open_storage(f"file://{store}"))
    catalog.write(fake_dump_manifest("20261127T021500Z", T0))
    catalog.write_drill(fake_report("20261127T040000Z"))
    catalog.write_drill(fake_report("20261128T040000Z", T0 + timedelta(days=1), ok=False))
    rows = json_out(run_cli(["list", "--kind", "drill", "--json"], env))
    assert [(r["kind"], r["id"], r["ok"]) for r in rows] == [
        ("drill", "20261127T040000Z", True),
        ("drill", "20261128T040000Z", False),
    ]
    assert rows[0]["drills"][0]["rto_seconds"] == 12.5 and rows[0]["drills"][0]["rpo_seconds"] == 7200.0
    assert [r["kind"] for r in json_out(run_cli(["list", "--json"], env))] == ["dump"]  # all = backups, as before
    table = run_cli(["list", "--kind", "drill"], env)
    assert table.returncode == 0 and "20261128T040000Z" in table.stdout and "FAILED" in table.stdout


# -- failures before a restore starts, and the base backup the PITR drill checks ---------------------

# A server program of PostgreSQL 16 as far as `--version` goes; otherwise it does what it is told.
FAKE_PROGRAM = """#!/bin/sh
if [ "$1" = "--version" ]; then echo "$(basename "$0") (PostgreSQL) 16.4"; exit 0; fi
%s
"""
INITDB_FAILS = 'echo "initdb: error: could not create directory: No space left on device" >&2; exit 1'
INITDB_WRITES_NOTHING = "exit 0"  # as if its files were gone: the host refuses a file operation


@pytest.mark.parametrize(
    ("initdb", "cause"),
    [
        (INITDB_FAILS, "initdb 16 for the drill's scratch cluster failed: initdb exited with status 1: initdb: error"),
        (INITDB_WRITES_NOTHING, "No such file or directory"),
    ],
    ids=["initdb-fails", "a-file-refused"],
)
def test_a_scratch_cluster_that_cannot_be_made_fails_that_drill_and_the_other_still_runs(
    catalog: Catalog, tmp_path: Path, initdb: str, cause: str
) -> None:
    """Before: cluster.create()/start() sat outside the dump drill's try block: initdb failing (or the
    port taken before the start) aborted the whole run with exit 7, no report, no PITR drill; a file
    the host would not write, with a traceback (exit 1)."""
    from tests.harness.helpers import fake_basebackup_manifest
    from tests.harness.procs import free_port

    bins = tmp_path / "bin"
    bins.mkdir()
    for name in ("initdb", "pg_ctl", "postgres", "pg_verifybackup"):
        (bins / name).write_text(FAKE_PROGRAM % (initdb if name == "initdb" else "exit 1"))
        (bins / name).chmod(0o755)
    catalog.write(fake_dump_manifest("20261127T021500Z", T0))
    catalog.write(fake_basebackup_manifest("20261127T024500Z", T0, "000000010000000000000002"))  # no WAL stored
    make_traversable(tmp_path)
    low = free_port()
    options = DrillOptions(
        work_dir=tmp_path / "work", restore_command="false", pg_bin_dir=bins, port_range=(low, low + 5)
    )
    report = DrillRunner(catalog.storage, Codec(), options, source=None).run()
    dump, pitr = report.drills
    assert (dump.kind, dump.ok, pitr.kind, pitr.ok, report.ok) == ("dump", False, "pitr", False, False)
    assert dump.error is not None and cause in dump.error
    assert dump.restore_seconds is None and dump.rto_seconds is None and dump.rpo_seconds is None
    assert pitr.error is not None and "WAL is missing" in pitr.error  # the PITR drill ran, and said why
    assert catalog.drill_ids() == [report.id]  # the report is stored
    assert [p.name for p in (tmp_path / "work").iterdir()] == []  # and nothing left behind
    assert f"dump drill of dump 20261127T021500Z: restore failed: {dump.error}" in report_failure_message(report)


def report_failure_message(r: Any) -> str:
    message = report.failure_message(r)
    assert message is not None
    return message


def test_the_pitr_drill_checks_the_base_backup_restore_pitr_latest_would_use(catalog: Catalog, tmp_path: Path) -> None:
    """After a restore, the newest base backup can lie on the abandoned branch; restore --pitr latest
    restores the newest one on the live timeline's history. Before: the checks (key, programs, space)
    looked at the newest of all (bases[-1]), so a drill could be refused for a backup it would not use."""
    from p88backup.catalog.layout import id_time, wal_key
    from tests.harness.helpers import fake_basebackup_manifest
    from tests.unit.test_expire import B1, B2, FORK_HISTORY, put_history, seg

    # test_expire's after_a_restore: B1 and B2 on timeline 1; a PITR to a point between them promoted
    # timeline 2, which archived on; the old primary went on along timeline 1 past B2.
    for bid, start in ((B1, seg(1, 2)), (B2, seg(1, 8))):
        m = fake_basebackup_manifest(bid, id_time(bid), start)
        m.data_size = 1 << 50  # a petabyte each: the space check names the one it looked at
        catalog.write(m)
    names = [seg(1, n) for n in range(1, 0xD)] + [seg(2, n) for n in range(5, 0xA)] + [seg(1, 5) + ".partial"]
    for name in names:
        catalog.storage.put(wal_key(name, ".zst"), io.BytesIO(b"w"))
    put_history(catalog.storage, 2, FORK_HISTORY)
    with pytest.raises(RefusedError, match=f"PITR drill of base backup {B1} needs about") as err:
        _runner(catalog, tmp_path, dump=False).run()
    assert B2 not in str(err.value)


def test_the_newest_base_backup_stands_in_when_the_restore_cannot_be_planned(catalog: Catalog, tmp_path: Path) -> None:
    """No WAL at all: the planner refuses; the drill itself will record why, the checks look at the newest."""
    from tests.harness.helpers import fake_basebackup_manifest

    m = fake_basebackup_manifest("20261127T024500Z", T0, "000000010000000000000002")
    m.data_size = 1 << 50
    catalog.write(m)
    with pytest.raises(RefusedError, match="PITR drill of base backup 20261127T024500Z needs about"):
        _runner(catalog, tmp_path).run()


def test_no_dump_and_no_pitr_together_is_a_usage_error(tmp_path: Path) -> None:
    """Before: exit 5, "nothing to drill: no dump and no base backup in ...", as if the storage were empty."""
    store = tmp_path / "store"
    env = cli_env(tmp_path, P88_STORAGE_URL=f"file://{store}")
    assert run_cli(["init"], env).returncode == 0
    r = run_cli(["drill", "--no-dump", "--no-pitr"], env)
    assert r.returncode == ExitCode.USAGE, r.stderr
    assert "--no-dump and --no-pitr together leave nothing to drill" in r.stderr
