"""``drill`` end to end on real PostgreSQL (issue 12, acceptance 1-3).

A source cluster archives with wal-push; it has a dump and a base backup, and
rows committed after the base backup. Every drill, passed, failed or killed,
must leave no scratch server process, no listening port of the drill's range,
no scratch directory, and production with exactly the databases it had.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest

from p88backup.errors import ExitCode
from tests.harness.archiving import Archived, make_archived
from tests.harness.helpers import REPO, cli_env, init_storage, json_out, log_lines, ok, run_cli
from tests.harness.postgres import PgCluster, has_contrib, program_runs
from tests.harness.procs import children_named, free_port

CHECK = "orders restored"


@dataclass
class Source:
    arch: Archived
    dump_id: str
    base_id: str
    last_commit: datetime  # the newest commit, made after the base backup (only WAL replay restores it)
    databases: list[str]
    port_range: tuple[int, int]

    def drill(self, *args: str, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        extra = () if program_runs(self.arch.pg.bindir / "pg_verifybackup") else ("--no-verify",)
        first = ("--config", str(config)) if config else ()
        return self.arch.cli(*first, "drill", *args, *extra)


def drill_config(path: Path, storage_url: str, port_range: tuple[int, int], *checks: tuple[str, str]) -> None:
    lines = [f'storage_url = "{storage_url}"', "[drill]", f"port_range = [{port_range[0]}, {port_range[1]}]"]
    for name, sql in checks:
        lines += ["[[drill.checks]]", f'name = "{name}"', 'database = "app"', f'sql = "{sql}"']
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o644)


@pytest.fixture
def source(pg_factory: Callable[..., PgCluster], tmp_path: Path) -> Iterator[Source]:
    store = f"file://{tmp_path}/store"
    arch = make_archived(pg_factory, tmp_path, store, "push")
    low = free_port()
    port_range = (low, low + 5)
    drill_config(arch.config, store, port_range, (CHECK, "SELECT count(*) >= 100 FROM orders"))
    pg = arch.pg
    pg.psql("CREATE ROLE app_owner LOGIN")  # the dump's globals must bring it to the scratch cluster
    pg.sql("CREATE DATABASE app OWNER app_owner")
    pg.psql(
        "SET ROLE app_owner;"
        " CREATE TABLE orders (id int PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT clock_timestamp());"
        " INSERT INTO orders (id) SELECT generate_series(1, 100);",
        "app",
    )
    dump_id = json_out(arch.cli("dump", "--database", "app", "--json"))["id"]
    base_id = json_out(arch.cli("basebackup", "--json", "--wal-timeout", "120"))["id"]
    pg.sql("INSERT INTO orders (id) SELECT generate_series(101, 150)", "app")
    last_commit = pg.scalar("SELECT max(created_at) FROM orders", "app")
    arch.switch_and_wait()
    yield Source(arch, dump_id, base_id, last_commit, databases(pg), port_range)


def databases(pg: PgCluster) -> list[str]:
    return [r[0] for r in pg.sql("SELECT datname FROM pg_database ORDER BY 1")]


def scratch_processes(work: Path) -> list[str]:
    """Processes that run from, or name, the drill's work directory (a scratch postmaster's -D)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if str(work) in cmdline or cwd.startswith(str(work)):
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


def listening(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def assert_nothing_left(src: Source) -> None:
    """The four things a drill must never leave: a process, a port, a directory, a database."""
    work = src.arch.tmp / "work"
    assert scratch_processes(work) == []
    assert [p for p in range(src.port_range[0], src.port_range[1] + 1) if listening(p)] == []
    assert sorted(p.name for p in work.iterdir() if p.name.startswith("drill-")) == []
    assert databases(src.arch.pg) == src.databases


def error_line(stderr: str) -> str:
    """The one line the CLI reports an expected failure with (the one carrying the exit code)."""
    errors = [ln["msg"] for ln in log_lines(stderr) if "exit_code" in ln]
    return errors[-1] if errors else stderr


@pytest.mark.matrix
@pytest.mark.timeout(600)
def test_drill_restores_both_backups_checks_them_and_stores_rto_and_rpo(source: Source) -> None:
    report = json_out(source.drill("--json"))
    assert report["kind"] == "drill" and report["ok"] is True
    runs = {d["kind"]: d for d in report["drills"]}
    dump, pitr = runs["dump"], runs["pitr"]
    assert (dump["backup_id"], pitr["backup_id"]) == (source.dump_id, source.base_id)
    major = source.arch.pg.major
    for run in (dump, pitr):
        assert run["ok"] and run["error"] is None and run["server_major"] == major
        assert run["port"] in range(source.port_range[0], source.port_range[1] + 1)
        assert 0 < run["restore_seconds"] <= run["rto_seconds"]
        assert run["rpo_seconds"] >= 0 and run["setup_seconds"] >= 0 and run["cleanup_seconds"] > 0
        sql = [c for c in run["checks"] if c["kind"] == "sql"]
        assert [(c["name"], c["database"], c["status"]) for c in sql] == [(CHECK, "app", "passed")]
        amchecks = {c["database"]: c["status"] for c in run["checks"] if c["kind"] == "amcheck"}
        if has_contrib(source.arch.pg.bindir):
            assert amchecks["app"] == "passed"
        else:
            assert amchecks == {None: "skipped"}
    counts = [c for c in dump["checks"] if c["kind"] == "row_counts"]
    assert [(c["name"], c["status"]) for c in counts] == [("row counts app", "passed")], counts
    assert dump["databases"] == ["app"] and "app" in pitr["databases"]
    # The PITR drill replayed the rows committed after the base backup; the dump cannot have them.
    newest_pitr = datetime.fromisoformat(pitr["newest_restorable"])
    assert newest_pitr >= source.last_commit
    assert datetime.fromisoformat(dump["newest_restorable"]) < source.last_commit
    assert pitr["rpo_seconds"] < dump["rpo_seconds"]
    assert pitr["lsn"] and pitr["timeline"] == 2
    assert report["source"] == {
        "clock": "production",
        "note": None,
        "databases_before": source.databases,
        "databases_after": source.databases,
    }
    listed = json_out(source.arch.cli("list", "--kind", "drill", "--json"))
    assert listed == [report]
    assert_nothing_left(source)
    table = ok(source.drill("--no-pitr"))  # and for a person: a table with both figures
    assert "passed" in table.stdout and source.dump_id in table.stdout
    assert_nothing_left(source)


@pytest.mark.timeout(900)
def test_a_bad_dump_a_missing_wal_segment_and_a_failing_check_each_fail_the_drill(source: Source) -> None:
    arch = source.arch
    store = arch.tmp / "store"

    # A failing SQL check: exit 11, naming the check and the backup.
    failing = arch.tmp / "failing-check.toml"
    drill_config(failing, f"file://{store}", source.port_range, (CHECK, "SELECT true"), ("no refunds", "SELECT false"))
    r = source.drill("--no-pitr", config=failing)
    assert r.returncode == ExitCode.DRILL_FAILED, r.stderr
    assert f"dump drill of dump {source.dump_id}: check 'no refunds' failed: returned false" in error_line(r.stderr)
    assert_nothing_left(source)

    # A flipped byte in the latest dump's archive.
    obj = next((store / "dumps" / source.dump_id).glob("app.pgdump*"))
    original = obj.read_bytes()
    damaged = bytearray(original)
    damaged[len(damaged) // 2] ^= 0xFF
    obj.write_bytes(bytes(damaged))
    try:
        r = source.drill("--no-pitr")
    finally:
        obj.write_bytes(original)
    assert r.returncode == ExitCode.DRILL_FAILED, r.stderr
    line = error_line(r.stderr)
    assert f"dump drill of dump {source.dump_id}: restore failed" in line and "app.pgdump" in line, line
    assert_nothing_left(source)

    # A WAL segment the PITR drill needs, deleted.
    base = json_out(arch.cli("list", "--kind", "basebackup", "--json"))[-1]
    segment = next((store / "wal" / base["start_wal"][:8]).glob(base["start_wal"] + ".zst*"))
    segment.unlink()
    r = source.drill("--no-dump")
    assert r.returncode == ExitCode.DRILL_FAILED, r.stderr
    line = error_line(r.stderr)
    assert f"pitr drill of base backup {source.base_id}: restore failed" in line and base["start_wal"] in line, line
    assert_nothing_left(source)

    reports = json_out(arch.cli("list", "--kind", "drill", "--json"))
    assert [r["ok"] for r in reports] == [False, False, False]  # each failure is on record too


def child_named(pid: int, name: str) -> bool:
    """Whether process ``pid`` has a child called ``name`` (pg_restore: the drill is mid-restore)."""
    return bool(children_named(pid, name))


def sigterm_drill(
    args: list[str], env: dict[str, str], ready: Callable[[int], bool], what: str, settle: float = 0.0
) -> tuple[int, str]:
    """Run ``drill *args``, send it SIGTERM once ``ready(pid)`` holds (and still holds ``settle`` s
    later); its exit status and stderr."""
    drill = subprocess.Popen(
        [sys.executable, "-m", "p88backup", "--log-format", "json", "drill", *args],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ready(drill.pid):
            assert drill.poll() is None, f"the drill ended before {what}: {drill.communicate()}"
            assert time.monotonic() < deadline, f"{what} never started"
            time.sleep(0.05)
        if settle:
            time.sleep(settle)
            assert ready(drill.pid)
        drill.send_signal(signal.SIGTERM)
        _, err = drill.communicate(timeout=120)
    finally:
        if drill.poll() is None:
            drill.kill()
            drill.communicate()
    return drill.returncode, err


@pytest.mark.timeout(600)
def test_sigterm_in_the_middle_of_a_restore_cleans_up_and_exits_16(
    pg_factory: Callable[..., PgCluster], tmp_path: Path
) -> None:
    pg = pg_factory("src")
    pg.start()
    low = free_port()
    config = tmp_path / "p88backup.toml"
    drill_config(config, f"file://{tmp_path}/store", (low, low + 5))
    env = cli_env(tmp_path, P88_CONFIG=str(config), P88_DATABASE_URL=pg.url("postgres"))
    init_storage(env)
    pg.sql("CREATE DATABASE app")
    subprocess.run(pg.client("pgbench", "-i", "-s", "8", "-q", "app"), check=True, capture_output=True, timeout=300)
    ok(run_cli(["dump", "--database", "app"], env))
    src = Source(
        Archived(pg, env, config, tmp_path), "", "", datetime.now(), databases(pg), (low, low + 5)
    )  # no base backup: the dump drill only
    # well inside the restore (pg_restore still running 0.3 s after it started): the data is being copied
    returncode, err = sigterm_drill([], env, lambda pid: child_named(pid, "pg_restore"), "its restore", settle=0.3)
    assert returncode == ExitCode.INTERRUPTED, err
    assert "drill stopped by SIGTERM" in error_line(err)
    assert_nothing_left(src)
    assert json.loads(ok(run_cli(["list", "--kind", "drill", "--json"], env)).stdout) == []  # no report of it


@pytest.mark.timeout(600)
def test_sigterm_while_the_copy_replays_wal_stops_its_server_and_exits_16(
    pg_factory: Callable[..., PgCluster], tmp_path: Path
) -> None:
    """The PITR copy's postmaster is detached (pg_ctl starts it in its own session): still stopped."""
    store = f"file://{tmp_path}/store"
    arch = make_archived(pg_factory, tmp_path, store, "push")
    low = free_port()
    drill_config(arch.config, store, (low, low + 5))
    pg = arch.pg
    pg.sql("CREATE DATABASE app")
    base_id = json_out(arch.cli("basebackup", "--json", "--wal-timeout", "120"))["id"]
    # WAL to replay after the base backup: a few hundred MB, seconds of recovery
    subprocess.run(pg.client("pgbench", "-i", "-s", "15", "-q", "app"), check=True, capture_output=True, timeout=300)
    arch.switch_and_wait()
    src = Source(arch, "", base_id, datetime.now(), databases(pg), (low, low + 5))
    work = tmp_path / "work"
    extra = () if program_runs(pg.bindir / "pg_verifybackup") else ("--no-verify",)
    returncode, err = sigterm_drill(
        ["--no-dump", *extra],
        arch.env,
        lambda _pid: any("postgres: startup" in p for p in scratch_processes(work)),
        "the copy's recovery",
    )
    assert returncode == ExitCode.INTERRUPTED, err
    assert "drill stopped by SIGTERM" in error_line(err)
    assert_nothing_left(src)


@pytest.mark.timeout(600)
def test_a_drill_whose_owner_has_no_group_of_its_name_restores_both(source: Source) -> None:
    """Before: the PITR drill ran pg_ctl through run_tool(user='nobody'), which asked for a group
    'nobody' (Debian's nobody is in 'nogroup'): a KeyError traceback, exit 1, no report. The dump
    drill's own runner used the user's group and passed: two runners, two behaviours."""
    # The copy's restore_command (wal-fetch) runs as the owner and reads the file:// archive, which the
    # source's archive_command wrote as postgres with the postmaster's umask (0077): let others read it,
    # as an archive on S3 would be readable to whoever has the credentials.
    subprocess.run(["chmod", "-R", "o+rX", str(source.arch.tmp / "store")], check=True, timeout=60)
    report = json_out(source.drill("--owner", "nobody", "--json"))
    assert [(d["kind"], d["ok"], d["error"]) for d in report["drills"]] == [("dump", True, None), ("pitr", True, None)]
    assert_nothing_left(source)


class PortThief:
    """``in_use`` for the drill runner: the first port it is asked about is free, and is taken right
    after (a listener on the IPv4 and IPv6 loopback), as by another program between the drill's pick
    and its server's start. Every later answer is the real one."""

    def __init__(self) -> None:
        self.stolen: int | None = None
        self.sockets: list[socket.socket] = []

    def __call__(self, port: int) -> bool:
        from p88backup.core.drill.scratch import port_in_use

        if self.stolen is None and not port_in_use(port):
            self.stolen = port
            for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.bind((host, port))
                sock.listen()
                self.sockets.append(sock)
            return False
        return port_in_use(port)

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.mark.timeout(600)
@pytest.mark.parametrize("kind", ["dump", "pitr"])
def test_a_port_taken_between_the_pick_and_the_start_is_tried_once_more_on_another(
    source: Source, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: the dump drill's cluster.start() failing aborted the whole run (PgToolError, exit 7, no
    report); the PITR drill recorded a failed drill. Now each starts once more on the next free port."""
    import shlex

    from p88backup.core.drill.run import DrillOptions, DrillRunner
    from p88backup.pg.conn import ConnInfo
    from p88backup.storage import open_storage
    from p88backup.stream import Codec
    from tests.harness.archiving import P88
    from tests.harness.postgres import tools_search_path

    arch = source.arch
    store = f"file://{arch.tmp}/store"
    restore_command = " ".join(
        shlex.quote(p) for p in ["env", f"P88_STORAGE_URL={store}", P88, "--config", str(arch.config), "wal-fetch"]
    )
    options = DrillOptions(
        work_dir=arch.tmp / "work",
        restore_command=restore_command + " %f %p",
        dump=kind == "dump",
        pitr=kind == "pitr",
        port_range=source.port_range,
        pg_bin_dir=Path(tools_search_path()),
        verify=program_runs(arch.pg.bindir / "pg_verifybackup"),
    )
    thief = PortThief()
    try:
        with caplog.at_level("WARNING", logger="p88backup.core.drill"):
            report = DrillRunner(
                open_storage(store),
                Codec(),
                options,
                source=ConnInfo.from_url(arch.env["P88_DATABASE_URL"]),
                in_use=thief,
            ).run()
        (run,) = report.drills
        assert (run.kind, run.ok, run.error) == (kind, True, None)
        assert thief.stolen == source.port_range[0] and run.port == thief.stolen + 1
        said = [r.getMessage() for r in caplog.records]
        assert any(m.startswith("drill: the scratch port was taken before the server could listen on it") for m in said)
    finally:
        thief.close()
    assert_nothing_left(source)
