"""The supported in-stack restore (issue 13, acceptance 3 and 4), without Docker: the steps of
scripts/stack_restore.py, carried out against real services - a production cluster (the ``db``
service), a real ``p88backup wal-stream`` process with its spool (the sidecar), file:// storage -
by a runner that does for each step what the compose runner has Docker do: the same p88backup
command lines, the same shell that keeps the old data directory, the same swap SQL.

PITR: before anything stops but the app, the sequence makes a restore point and waits until the
sidecar has archived its segment, so the commits made since the last segment switch (which
wal-stream holds only as a ``.partial``) are in the archive: ``--pitr latest`` of a running
database keeps its last commit. The restore goes into the *same* data directory path the
database uses (the old one kept beside it), the database starts there on a new timeline, the
sidecar, restarted with the same spool, archives that timeline by itself, the new base backup is
on it and wal-verify passes.
Reindex has no OpenSearch here: the step is allowed to report "not configured" (exit 3), which
is what the stack's sidecar says today too (no [[reindex]] definitions in compose/).

Dump: restored as the database superuser into a new database and swapped in by name; the
``backup`` role of compose/initdb (the sidecar's login) is refused, as the runbook says.

And the compose runner's command lines against the real Compose CLI's model of compose/ (no
engine needed for ``config``).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.harness.archiving import Archived, make_archived
from tests.harness.compose import run_initdb_script
from tests.harness.deploy import cli_parse_error, p88backup_argv, split_commands
from tests.harness.helpers import REPO, json_out, ok, run_cli, table_checksums
from tests.harness.postgres import PgCluster, program_runs
from tests.harness.procs import service_user, stop_process
from tests.integration.test_compose import PROD_VALUES, compose_cli, prod_project  # noqa: F401 - fixtures
from tests.unit.test_stack_restore_plan import sr


class LocalRunner:
    """The stack's services as test processes; each method does what ComposeRunner's does."""

    def __init__(self, arch: Archived, spool: Path, log: Path) -> None:
        self.arch, self.spool, self.log = arch, spool, log
        self.streamer: subprocess.Popen[bytes] | None = None
        self.superuser_url = arch.pg.url("postgres")

    # services
    def stop(self, *services: str) -> None:
        for name in services:
            if name == sr.SIDECAR and self.streamer is not None:
                stop_process(self.streamer, timeout=60)  # SIGTERM, as docker compose stop sends
                assert self.streamer.returncode == 0, self.log.read_text()[-3000:]
                self.streamer = None
            elif name == sr.DB:
                self.arch.pg.stop()  # fast shutdown, as the image's SIGINT
                assert not (self.arch.pg.datadir / "postmaster.pid").exists()

    def start(self, *services: str) -> None:
        for name in services:
            if name == sr.DB:
                self.arch.pg.start()
            elif name == sr.SIDECAR and self.streamer is None:
                with self.log.open("ab") as out:
                    self.streamer = subprocess.Popen(
                        [sys.executable, "-m", "p88backup", "--log-format", "json", "wal-stream"]
                        + ["--spool", str(self.spool), "--max-backoff", "2"],
                        env=self.arch.env,
                        cwd=REPO,
                        stdout=subprocess.DEVNULL,
                        stderr=out,
                    )

    def set_aside(self, pgdata: str, aside: str) -> None:
        user = service_user() or str(os.getuid())
        r = subprocess.run(
            ["sh", "-s", "--", pgdata, aside, f"{user}:{user}"],  # as the db container runs it
            input=sr.SET_ASIDE_SH,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        print(r.stdout + r.stderr)
        assert r.returncode == 0, r.stderr

    # p88backup
    def _cli(self, argv: tuple[str, ...], env: dict[str, str]) -> int:
        r = run_cli(list(argv), env, timeout=600)
        print(f"p88backup {' '.join(argv)} -> {r.returncode}\n{r.stdout}{r.stderr[-2000:]}")
        return r.returncode

    def restore_in_volume(self, *argv: str) -> int:
        if not program_runs(self.arch.pg.bindir / "pg_verifybackup"):  # the wheel's 18 crashes (harness)
            argv = (*argv, "--no-verify")
        return self._cli(argv, self.arch.env)

    def archive_last_wal(self, point: str, timeout: str) -> int:
        rc = sr.archive_last_wal(self._capture, point, float(timeout), poll=0.5)
        if rc == 0:
            self._wal_after_the_switch()
        return rc

    def _wal_after_the_switch(self) -> None:
        """What a production server does within seconds of the switch, before the sidecar stops: write
        a little WAL (bgwriter's running-xacts record, a checkpoint) that the sidecar receives into
        the next segment's .partial, which then starts exactly where ``latest`` will end."""
        pg = self.arch.pg
        pg.sql("CHECKPOINT")
        partial = self.spool / f"{pg.scalar('SELECT pg_walfile_name(pg_current_wal_lsn())')}.partial"
        deadline = time.monotonic() + 60
        while not partial.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert partial.exists(), sorted(p.name for p in self.spool.iterdir())

    def _capture(self, *argv: str) -> tuple[int, str]:
        r = run_cli(list(argv), self.arch.env, timeout=120)
        if r.returncode not in (0, sr.STATUS_UNHEALTHY):
            print(f"p88backup {' '.join(argv)} -> {r.returncode}\n{r.stderr[-2000:]}")
        return r.returncode, r.stdout

    def p88backup(self, *argv: str) -> int:
        return self._cli(argv, self.arch.env)

    def p88backup_superuser(self, *argv: str) -> int:
        return self._cli(argv, self.arch.env | {"P88_DATABASE_URL": self.superuser_url})

    def swap(self, database: str, restored: str, aside: str) -> None:
        pg = self.arch.pg
        r = subprocess.run(
            [str(pg.bindir / "psql"), "-X", "-v", "ON_ERROR_STOP=1", "-d", self.superuser_url],
            input=sr.swap_sql(database, restored, aside),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert r.returncode == 0, r.stderr


@pytest.fixture
def stack(pg_factory: Callable[..., PgCluster], tmp_path: Path) -> Iterator[LocalRunner]:
    arch = make_archived(pg_factory, tmp_path, f"file://{tmp_path}/store", "none")
    runner = LocalRunner(arch, tmp_path / "spool", tmp_path / "wal-stream.log")
    runner.start(sr.SIDECAR)
    try:
        yield runner
    finally:
        if runner.streamer is not None:
            runner.streamer.send_signal(signal.SIGTERM)
            try:
                runner.streamer.wait(60)
            except subprocess.TimeoutExpired:
                runner.streamer.kill()


def newest_segment(env: dict[str, str]) -> str:
    return str(json_out(run_cli(["wal-verify", "--json"], env)).get("newest_segment") or "")


def switch_and_wait(runner: LocalRunner) -> str:
    """Close the current segment; wait until the sidecar has stored it (on the server's timeline)."""
    pg = runner.arch.pg
    seg = pg.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())")
    pg.sql("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        newest = newest_segment(runner.arch.env)
        if newest[:8] == seg[:8] and newest >= seg:
            return seg
        time.sleep(0.5)
    raise AssertionError(f"{seg} never reached the archive\n{runner.log.read_text()[-3000:]}")


def commit_after_the_last_switch(runner: LocalRunner, note: str) -> Path:
    """Commit 100 rows into orders and wait until the sidecar's spool holds them in the .partial of
    the segment being written (nothing is archived yet: the premise of a restore losing them)."""
    pg = runner.arch.pg
    pg.sql("INSERT INTO orders (note) SELECT %s FROM generate_series(1, 100)", "p88", params=(note,))
    seg = pg.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())")  # where the commit record ends
    partial = runner.spool / f"{seg}.partial"
    deadline = time.monotonic() + 60
    while not partial.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert partial.exists(), sorted(p.name for p in runner.spool.iterdir())
    assert newest_segment(runner.arch.env) < seg, "already archived: the premise does not hold"
    return partial


@pytest.mark.matrix
@pytest.mark.timeout(600)
def test_pitr_into_the_same_directory_and_the_sidecar_archives_the_new_timeline(stack: LocalRunner) -> None:
    pg, env = stack.arch.pg, stack.arch.env
    pg.sql("CREATE DATABASE p88")
    pg.sql("CREATE TABLE orders (id bigserial PRIMARY KEY, note text)", "p88")
    pg.sql("INSERT INTO orders (note) SELECT md5(g::text) FROM generate_series(1, 2000) g", "p88")
    before = json_out(run_cli(["basebackup", "--json", "--wal-timeout", "120"], env))
    assert before["timeline"] == 1
    pg.sql("INSERT INTO orders (note) SELECT 'after the base backup' FROM generate_series(1, 50)", "p88")
    time.sleep(0.3)
    target = datetime.now(UTC)
    at_target = table_checksums(pg, "p88")
    time.sleep(1.2)
    pg.sql("DELETE FROM orders WHERE id % 3 = 0", "p88")  # the incident
    switch_and_wait(stack)
    # production goes on after the last segment switch: these commits are only in the segment the
    # server is writing, which the sidecar holds as a .partial and never stores by itself
    partial = commit_after_the_last_switch(stack, "after the last switch")
    last_on_timeline_1 = table_checksums(pg, "p88")

    pgdata = str(pg.datadir)
    aside = f"{pgdata}.before-{sr.stamp()}"
    point = sr.restore_point_name(sr.stamp())
    said: list[str] = []
    sr.run(sr.pitr_steps(target.isoformat(), pgdata, aside, wal_timeout=120, point=point), stack, said.append)
    print("\n".join(said))

    # the database runs in its own directory, restored, on a new timeline; the old one is kept
    assert table_checksums(pg, "p88") == at_target
    assert pg.scalar("SELECT timeline_id FROM pg_control_checkpoint()") == 2
    assert (Path(aside) / "PG_VERSION").exists() and (Path(aside) / "base").is_dir()
    assert not (pg.datadir / "recovery.signal").exists()
    # before the sidecar stopped, the segment those last commits were in was completed and stored,
    # with the restore point that marks the moment before the restore
    store = stack.arch.tmp / "store"
    assert (store / "wal" / "00000001" / f"{partial.name.removesuffix('.partial')}.zst").exists()
    assert not (stack.spool / partial.name).exists() and not (stack.spool / "abandoned" / partial.name).exists()
    assert json.loads((store / "restorepoints" / f"{point}.json").read_text())["timeline"] == 1
    # the sidecar followed the promotion by itself: the new timeline's history archived first, its
    # segments after it
    assert (store / "wal" / "00000002" / "00000002.history.zst").exists()
    backups = json_out(run_cli(["list", "--kind", "basebackup", "--json"], env))
    assert [b["timeline"] for b in backups] == [1, 2] and backups[0]["id"] == before["id"]
    assert any("warning: exit 3" in line for line in said)  # reindex: no OpenSearch configured here

    # and it keeps archiving the new timeline as production writes
    pg.sql("INSERT INTO orders (note) SELECT 'on timeline 2' FROM generate_series(1, 100)", "p88")
    seg = switch_and_wait(stack)
    assert seg.startswith("00000002")
    report = json_out(run_cli(["wal-verify", "--json"], env))
    assert report["ok"] is True and report["newest_timeline"] == 2, report
    r = run_cli(["status", "--component", "wal-stream", "--spool", str(stack.spool), "--json"], env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert stack.streamer is not None and stack.streamer.poll() is None

    # The restore was the wrong call: back to the newest archived point of timeline 1, the runbook's
    # way (a second restore, --timeline 1), from a stack that is itself a restored one. Timeline 1
    # is there up to its last commit before the first restore stopped it (before the archive step:
    # without the 100 rows made after the last switch, which only the old spool's .partial held).
    aside2 = f"{pgdata}.before-{sr.stamp()}-2"
    sr.run(sr.pitr_steps("latest", pgdata, aside2, wal_timeout=120, timeline=1, point=point + "-2"), stack, print)
    assert table_checksums(pg, "p88") == last_on_timeline_1
    assert pg.scalar("SELECT timeline_id FROM pg_control_checkpoint()") == 3
    assert json_out(run_cli(["wal-verify", "--json"], env))["newest_timeline"] == 3
    assert [b["timeline"] for b in json_out(run_cli(["list", "--kind", "basebackup", "--json"], env))] == [1, 2, 3]

    # --pitr latest of the running database (the third generation): its last commit, made after the
    # last segment switch, is in the restored cluster
    commit_after_the_last_switch(stack, "the last commit before the restore")
    last = table_checksums(pg, "p88")
    aside3 = f"{pgdata}.before-{sr.stamp()}-3"
    sr.run(sr.pitr_steps("latest", pgdata, aside3, wal_timeout=120, point=point + "-3"), stack, print)
    assert table_checksums(pg, "p88") == last
    assert pg.scalar("SELECT timeline_id FROM pg_control_checkpoint()") == 4
    note = "SELECT count(*) FROM orders WHERE note = 'the last commit before the restore'"
    assert pg.scalar(note, "p88") == 100


@pytest.mark.timeout(600)
def test_dump_swapped_in_as_the_superuser_not_as_the_backup_role(stack: LocalRunner) -> None:
    pg = stack.arch.pg
    pg.sql("CREATE DATABASE p88")
    run_initdb_script(pg, "p88", {"P88_BACKUP_PASSWORD": "backup-pw", "P88_MONITOR_PASSWORD": "monitor-pw"})
    pg.sql("CREATE TABLE orders (id int PRIMARY KEY, note text)", "p88")
    pg.sql("INSERT INTO orders SELECT g, md5(g::text) FROM generate_series(1, 3000) g", "p88")
    good = table_checksums(pg, "p88")
    # the nightly dump, as the sidecar takes it: as the backup role
    as_backup = stack.arch.env | {"P88_DATABASE_URL": f"postgresql://backup@127.0.0.1:{pg.port}/p88"}
    ok(run_cli(["dump"], as_backup))
    pg.sql("UPDATE orders SET note = 'garbled'", "p88")  # the incident
    broken = table_checksums(pg, "p88")

    when = sr.stamp().lower()
    restored, aside = f"p88_restored_{when}", f"p88_before_{when}"
    steps = sr.dump_steps("latest", "p88", restored, aside)

    # the sidecar's own role may read everything but create no database: refused, nothing changed
    stack.superuser_url = f"postgresql://backup@127.0.0.1:{pg.port}/postgres"
    with pytest.raises(sr.StackRestoreError, match="step 2 failed with exit 13"):
        sr.run(steps, stack)
    assert table_checksums(pg, "p88") == broken
    assert not pg.sql("SELECT 1 FROM pg_database WHERE datname = %s", params=(restored,))

    # as the runbook says: the database superuser
    stack.superuser_url = pg.url("postgres")
    said: list[str] = []
    sr.run(steps, stack, said.append)
    assert table_checksums(pg, "p88") == good
    row = pg.sql("SELECT datallowconn FROM pg_database WHERE datname = %s", params=(aside,))
    assert row == [(False,)], "the old database is kept, closed to connections"
    pg.sql(f'ALTER DATABASE "{aside}" WITH ALLOW_CONNECTIONS true')
    assert table_checksums(pg, aside) == broken
    assert json_out(run_cli(["wal-verify", "--json"], stack.arch.env))["ok"] is True
    assert stack.streamer is not None and stack.streamer.poll() is None


# -- the compose runner on the real Compose CLI's model -----------------------------------------


def _dry_run(cli: Path, project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "stack_restore.py"), "--dry-run", "--compose", str(cli), *args],
        cwd=project,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(project)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_dry_run_on_the_prod_model_of_compose(compose_cli: Path, prod_project: Path) -> None:  # noqa: F811
    r = _dry_run(compose_cli, prod_project, "--pitr", "2026-11-27T14:04:00+01:00", "--identity", "/root/k.age")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "into /var/lib/postgresql/data/pgdata (volume p88_db_data)" in out
    commands = [ln.strip()[2:] for ln in out.splitlines() if ln.strip().startswith("$ ")]
    assert commands[0].endswith(" stop web worker")
    assert " backup restore-point --json before-stack-restore-" in commands[1]
    assert commands[2].endswith(" backup status --json") and commands[3].endswith(" stop backup")
    runs = [c for c in commands if " run " in c]
    assert runs and all("--no-deps" in c for c in runs)
    for c in commands:
        argv = p88backup_argv(split_commands(c.replace(str(compose_cli), "docker compose"))[0])
        if argv:
            assert cli_parse_error(argv) is None, c
    for secret in PROD_VALUES.values():
        if "password" in secret:
            assert secret not in out + r.stderr

    dump = _dry_run(compose_cli, prod_project, "--dump", "latest")
    assert dump.returncode == 0, dump.stderr
    assert "-e PGPASSWORD backup restore --dump latest --target-db p88_restored_" in dump.stdout
    assert PROD_VALUES["POSTGRES_PASSWORD"] not in dump.stdout + dump.stderr


def test_a_root_layout_volume_is_refused_before_anything_runs(compose_cli: Path, prod_project: Path) -> None:  # noqa: F811
    compose = prod_project / "docker-compose.yml"
    compose.write_text(re.sub(r"(?m)^\s*PGDATA: .*\n", "", compose.read_text()))
    r = _dry_run(compose_cli, prod_project, "--pitr", "latest")
    assert r.returncode == 1 and "volume root" in r.stderr
    assert "$ " not in r.stdout
