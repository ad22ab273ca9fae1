"""scripts/stack_restore.py without Docker: the steps and their order, the stack read from a
compose model, the docker command lines (no secret on them), the shell that keeps the old data
directory, and a sequence that stops at the first failed step."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.harness.deploy import cli_parse_error, p88backup_argv
from tests.harness.helpers import REPO


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("stack_restore", REPO / "scripts" / "stack_restore.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["stack_restore"] = module
    spec.loader.exec_module(module)
    return module


sr = _load()
PGDATA = "/var/lib/postgresql/data/pgdata"
SECRET = "superuser-secret-pw"


def model(**db_env: str | None) -> dict[str, Any]:
    env = {"POSTGRES_USER": "p88", "POSTGRES_PASSWORD": SECRET, "POSTGRES_DB": "p88", "PGDATA": PGDATA}
    env.update(db_env)  # type: ignore[arg-type]
    return {
        "name": "p88",
        "services": {
            "db": {
                "environment": {k: v for k, v in env.items() if v is not None},
                "volumes": [
                    {"type": "volume", "source": "db_data", "target": "/var/lib/postgresql/data"},
                    {"type": "bind", "source": "/srv/p88/compose/initdb", "target": "/docker-entrypoint-initdb.d"},
                ],
            },
            "backup": {},
            "web": {},
            "worker": {},
        },
        "volumes": {"db_data": {"name": "p88_db_data"}},
    }


def test_the_stack_is_read_from_the_compose_model() -> None:
    stack = sr.stack_of(model())
    assert (stack.pgdata, stack.volume_key, stack.volume_name) == (PGDATA, "db_data", "p88_db_data")
    assert (stack.superuser, stack.database) == ("p88", "p88")
    assert SECRET not in repr(stack)


@pytest.mark.parametrize(
    ("change", "refusal"),
    [
        ({"PGDATA": None}, "volume root"),  # the image's default: the cluster is the volume
        ({"PGDATA": "/var/lib/postgresql/data"}, "not a directory directly inside a named volume"),
        ({"PGDATA": "/srv/elsewhere/pgdata"}, "not a directory directly inside a named volume"),
        ({"POSTGRES_PASSWORD": None}, "POSTGRES_PASSWORD"),
    ],
)
def test_layouts_the_restore_cannot_keep_are_refused(change: dict[str, str | None], refusal: str) -> None:
    with pytest.raises(sr.StackRestoreError, match=refusal):
        sr.stack_of(model(**change))


def test_a_project_without_the_services_is_refused() -> None:
    m = model()
    del m["services"]["backup"]
    with pytest.raises(sr.StackRestoreError, match="no service 'backup'"):
        sr.stack_of(m)


def _actions(steps: list[Any]) -> list[tuple[str, tuple[str, ...]]]:
    return [(s.action, s.args[:2]) for s in steps]


def test_pitr_steps_are_in_the_supported_order() -> None:
    """The app stops first; then the last WAL is archived while the sidecar still runs (it never
    stores the segment being written); only then the sidecar stops. Before: app and sidecar were
    stopped together, and the commits since the last segment switch never reached the archive."""
    steps = sr.pitr_steps("latest", PGDATA, PGDATA + ".before-X", point="before-stack-restore-X")
    assert _actions(steps) == [
        ("stop", ("web", "worker")),
        ("archive_last_wal", ("before-stack-restore-X", "600")),
        ("stop", ("backup",)),
        ("stop", ("db",)),
        ("set_aside", (PGDATA, PGDATA + ".before-X")),
        ("restore_in_volume", ("restore", "--pitr")),
        ("start", ("db",)),
        ("start", ("backup",)),
        ("p88backup", ("basebackup", "--wal-timeout")),
        ("p88backup", ("wal-verify",)),
        ("p88backup", ("reindex",)),
        ("start", ("web", "worker")),
        ("p88backup", ("status",)),
    ]
    assert steps[0].args == ("web", "worker")
    assert steps[1].tolerate == {13}  # the database is gone (§3): warned, the restore goes on
    assert steps[5].args == ("restore", "--pitr", "latest", "--target-dir", PGDATA, "--start", "--stop")
    default = sr.pitr_steps("latest", PGDATA, "x")[1].args[0]
    assert default.startswith("before-stack-restore-") and cli_parse_error(["restore-point", default]) is None


def test_a_timeline_is_passed_to_the_restore() -> None:
    steps = sr.pitr_steps("latest", PGDATA, "x", timeline=1)
    restore = next(s for s in steps if s.action == "restore_in_volume")
    assert restore.args == (
        "restore",
        "--pitr",
        "latest",
        "--timeline",
        "1",
        "--target-dir",
        PGDATA,
        "--start",
        "--stop",
    )
    assert cli_parse_error(restore.args) is None
    with pytest.raises(SystemExit):
        sr.parse_args(["--dump", "latest", "--timeline", "1"])


def test_dump_steps_swap_the_restored_database_in() -> None:
    steps = sr.dump_steps("latest", "p88", "p88_restored_x", "p88_before_x")
    assert [s.action for s in steps] == [
        "stop",
        "p88backup_superuser",
        "swap",
        "start",
        "p88backup",
        "p88backup",
        "start",
        "p88backup",
    ]
    assert steps[1].args == ("restore", "--dump", "latest", "--target-db", "p88_restored_x")


@pytest.mark.parametrize("steps", [sr.pitr_steps("latest", PGDATA, "x"), sr.dump_steps("latest", "p88", "a", "b")])
def test_every_p88backup_command_of_the_steps_parses_with_the_real_cli(steps: list[Any]) -> None:
    argvs = [s.args for s in steps if s.action.startswith(("p88backup", "restore"))]
    assert argvs
    for argv in argvs:
        assert cli_parse_error(argv) is None, argv


class Recorder:
    """A runner that records calls and answers p88backup steps with given exit codes."""

    def __init__(self, codes: dict[str, int] | None = None) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.codes = codes or {}

    def __getattr__(self, action: str) -> Any:
        def call(*args: str) -> int:
            self.calls.append((action, args))
            return self.codes.get(args[0], 0) if action.startswith(("p88backup", "restore", "archive")) else 0

        return call


def test_a_failed_step_stops_the_sequence_and_names_what_is_left() -> None:
    runner = Recorder({"basebackup": 17})
    said: list[str] = []
    with pytest.raises(sr.StackRestoreError) as err:
        sr.run(sr.pitr_steps("latest", PGDATA, "x"), runner, said.append)
    assert len(runner.calls) == 9 and runner.calls[-1][1][0] == "basebackup"
    assert "exit 17" in str(err.value) and "nothing was deleted" in str(err.value)
    assert "[10] check the WAL archive" in str(err.value)
    assert said[0].startswith("[1/13] stop the app")


def test_reindex_without_configuration_and_an_unhealthy_status_only_warn() -> None:
    runner = Recorder({"reindex": 3, "status": 18})
    said: list[str] = []
    sr.run(sr.pitr_steps("latest", PGDATA, "x"), runner, said.append)
    assert len(runner.calls) == 13
    assert sum("warning: exit" in line for line in said) == 2
    with pytest.raises(sr.StackRestoreError):
        sr.run(sr.pitr_steps("latest", PGDATA, "x"), Recorder({"reindex": 14}), said.append)


def test_the_last_wal_not_archived_in_time_stops_before_the_sidecar_and_the_database() -> None:
    runner = Recorder({"before-stack-restore-X": 17})
    with pytest.raises(sr.StackRestoreError) as err:
        sr.run(sr.pitr_steps("latest", PGDATA, "x", point="before-stack-restore-X"), runner, [].append)
    assert [a for a, _ in runner.calls] == ["stop", "archive_last_wal"]  # nothing but the app stopped
    assert "step 2 failed with exit 17" in str(err.value) and "[3] stop the sidecar" in str(err.value)


def test_a_database_that_is_gone_only_warns_and_the_restore_goes_on() -> None:
    runner = Recorder({"before-stack-restore-X": 13})
    said: list[str] = []
    sr.run(sr.pitr_steps("latest", PGDATA, "x", point="before-stack-restore-X"), runner, said.append)
    assert len(runner.calls) == 13
    assert any("warning: exit 13" in line and "not in the archive" in line for line in said)


# -- waiting for the last WAL ------------------------------------------------------------------

POINT = {"name": "p", "lsn": "0/5000060", "segment": "000000010000000000000005", "timeline": 1}


@pytest.mark.parametrize(
    ("wal", "archived"),
    [
        # the server answered: the end of the newest archived segment on its history decides
        ({"archived_lsn": "0/5000000", "server_timeline": 1, "newest_segment": "000000010000000000000004"}, False),
        ({"archived_lsn": "0/6000000", "server_timeline": 1, "newest_segment": "000000010000000000000005"}, True),
        ({"archived_lsn": "1/0", "server_timeline": 1, "newest_segment": "000000010000000100000000"}, True),
        # an abandoned timeline further ahead is not this server's: archived_lsn ignores it
        ({"archived_lsn": "0/5000000", "server_timeline": 1, "newest_segment": "000000020000000000000009"}, False),
        # the server did not answer: the newest segment's name, on the point's timeline only
        ({"archived_lsn": None, "server_timeline": None, "newest_segment": "000000010000000000000005"}, True),
        ({"archived_lsn": None, "server_timeline": None, "newest_segment": "000000010000000000000004"}, False),
        ({"archived_lsn": None, "server_timeline": None, "newest_segment": "000000020000000000000009"}, False),
        ({"archived_lsn": None, "server_timeline": None, "newest_segment": None}, False),
    ],
)
def test_point_archived_table(wal: dict[str, Any], archived: bool) -> None:
    assert sr.point_archived(POINT, wal) is archived


@pytest.mark.parametrize(
    ("text", "value"), [("0/0", 0), ("0/5000060", 0x5000060), ("1/0", 1 << 32), ("A/FF", (10 << 32) | 255)]
)
def test_parse_lsn_table(text: str, value: int) -> None:
    assert sr.parse_lsn(text) == value


class FakeP88:
    """p88backup as archive_last_wal sees it: restore-point, then status answers in turn; a clock
    that advances only when the wait sleeps."""

    def __init__(self, point_rc: int = 0, statuses: list[tuple[int, str | None]] | None = None) -> None:
        self.point_rc, self.statuses = point_rc, list(statuses or [])
        self.calls: list[tuple[str, ...]] = []
        self.now = 0.0

    def __call__(self, *argv: str) -> tuple[int, str]:
        self.calls.append(argv)
        if argv[0] == "restore-point":
            return self.point_rc, json.dumps(POINT) if self.point_rc == 0 else ""
        rc, newest = self.statuses.pop(0) if len(self.statuses) > 1 else self.statuses[0]
        wal = {"archived_lsn": None, "server_timeline": None, "newest_segment": newest}
        return rc, json.dumps({"wal": wal, "healthy": rc == 0})

    def sleep(self, seconds: float) -> None:
        self.now += seconds

    def wait(self, timeout: float = 10) -> int:
        return sr.archive_last_wal(
            self, "p", timeout, say=lambda _: None, poll=2, clock=lambda: self.now, sleep=self.sleep
        )


def test_the_wait_ends_once_the_restore_points_segment_is_archived() -> None:
    p88 = FakeP88(statuses=[(0, "000000010000000000000004"), (18, "000000010000000000000004"), (18, POINT["segment"])])
    assert p88.wait() == 0
    assert p88.calls == [
        ("restore-point", "--json", "p"),
        ("status", "--json"),
        ("status", "--json"),
        ("status", "--json"),
    ]
    assert p88.now == 4  # polled, not busy-waited


def test_the_wait_is_bounded() -> None:
    p88 = FakeP88(statuses=[(0, "000000010000000000000004")])
    assert p88.wait(timeout=10) == 17
    assert p88.now == 10 and len(p88.calls) == 7  # restore-point, then a look every 2 s for 10 s


@pytest.mark.parametrize(("point_rc", "status_rc", "expected", "calls"), [(13, 0, 13, 1), (0, 8, 8, 2), (0, 3, 3, 2)])
def test_a_failed_command_ends_the_wait_with_its_exit(point_rc: int, status_rc: int, expected: int, calls: int) -> None:
    p88 = FakeP88(point_rc, [(status_rc, None)])
    assert p88.wait() == expected and len(p88.calls) == calls


def test_a_command_without_json_is_a_clear_failure() -> None:
    with pytest.raises(sr.StackRestoreError, match="restore-point --json printed no JSON"):
        sr.archive_last_wal(lambda *argv: (0, "restore point 'p' at 0/1"), "p", 5, say=lambda _: None)


def test_compose_command_lines() -> None:
    """--no-deps on every run (a plain run of the sidecar would start the db it depends on), the db
    volume by its compose key at the db's own path, the superuser's password never on argv."""
    said: list[str] = []
    stack = sr.stack_of(model())
    runner = sr.ComposeRunner(stack, ["docker", "compose"], "/root/k.age", dry_run=True, say=said.append)
    sr.run(sr.pitr_steps("latest", PGDATA, PGDATA + ".before-X", point="before-stack-restore-X"), runner, said.append)
    sr.run(sr.dump_steps("latest", "p88", "p88_restored_x", "p88_before_x"), runner, said.append)
    commands = [line.strip().removeprefix("$ ") for line in said if line.strip().startswith("$ ")]
    assert commands[:3] == [
        "docker compose stop web worker",
        "docker compose run --rm --no-deps -T -v /root/k.age:/run/secrets/p88backup.age:ro"
        " -e P88_AGE_IDENTITY_FILE=/run/secrets/p88backup.age backup restore-point --json before-stack-restore-X",
        "docker compose run --rm --no-deps -T -v /root/k.age:/run/secrets/p88backup.age:ro"
        " -e P88_AGE_IDENTITY_FILE=/run/secrets/p88backup.age backup status --json",
    ]
    assert commands[3] == "docker compose stop backup"
    assert "docker compose stop web worker backup" in commands  # --dump: nothing may hold the database
    restore = next(c for c in commands if "--pitr" in c)
    assert restore.startswith("docker compose run --rm --no-deps -T -v db_data:/var/lib/postgresql/data -v ")
    assert "P88_AGE_IDENTITY_FILE=/run/secrets/p88backup.age" in restore
    assert restore.endswith(f"backup restore --pitr latest --target-dir {PGDATA} --start --stop")
    assert "docker compose up -d --wait --no-deps db" in commands
    assert "docker compose up -d --no-deps backup" in commands
    for c in commands:
        assert SECRET not in c
        if " run " in c:
            assert "--no-deps" in c, c
    dump = next(c for c in commands if "--dump" in c)
    assert "-e P88_DATABASE_URL=postgresql://p88@db:5432/postgres -e PGPASSWORD " in dump
    assert p88backup_argv(dump.split()) == ["restore", "--dump", "latest", "--target-db", "p88_restored_x"]
    swap = next(c for c in commands if " exec " in c)
    assert swap == "docker compose exec -T db psql -X -v ON_ERROR_STOP=1 -U p88 -d postgres <<'EOF'"
    aside = next(c for c in commands if "--entrypoint sh" in c)
    assert aside.endswith(f"--entrypoint sh db -s -- {PGDATA} {PGDATA}.before-X postgres:postgres <<'EOF'")
    assert any('mv "$data" "$aside"' in entry for entry in said)  # the script is shown with its command


def test_swap_sql_quotes_names() -> None:
    sql = sr.swap_sql('p"88', "p88_restored_x", "p88_before_x")
    assert 'ALTER DATABASE "p""88" RENAME TO "p88_before_x";' in sql
    assert "WHERE datname = 'p\"88'" in sql


# -- the shell that keeps the old data directory -----------------------------------------------


def set_aside(volume: Path, *, aside: str = "pgdata.before-X") -> subprocess.CompletedProcess[str]:
    owner = f"{os.getuid()}:{os.getgid()}"
    return subprocess.run(
        ["sh", "-s", "--", str(volume / "pgdata"), str(volume / aside), owner],
        input=sr.SET_ASIDE_SH,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_the_old_data_directory_is_renamed_aside_and_an_empty_one_made(tmp_path: Path) -> None:
    (tmp_path / "pgdata" / "base").mkdir(parents=True)
    (tmp_path / "pgdata" / "PG_VERSION").write_text("16\n")
    r = set_aside(tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "pgdata.before-X" / "PG_VERSION").read_text() == "16\n"
    assert list((tmp_path / "pgdata").iterdir()) == []
    assert (tmp_path / "pgdata").stat().st_mode & 0o777 == 0o700


def test_a_new_volume_has_nothing_to_keep(tmp_path: Path) -> None:
    r = set_aside(tmp_path)
    assert r.returncode == 0 and "nothing to keep" in r.stdout
    assert (tmp_path / "pgdata").is_dir() and not (tmp_path / "pgdata.before-X").exists()


def test_a_cluster_at_the_volume_root_is_refused(tmp_path: Path) -> None:
    (tmp_path / "PG_VERSION").write_text("16\n")
    r = set_aside(tmp_path)
    assert r.returncode == 3 and "volume root" in r.stderr
    assert not (tmp_path / "pgdata").exists()


def test_an_existing_aside_is_never_replaced(tmp_path: Path) -> None:
    (tmp_path / "pgdata").mkdir()
    (tmp_path / "pgdata" / "PG_VERSION").write_text("16\n")
    (tmp_path / "pgdata.before-X").mkdir()
    r = set_aside(tmp_path)
    assert r.returncode == 3 and "exists already" in r.stderr
    assert (tmp_path / "pgdata" / "PG_VERSION").exists()


def test_nothing_runs_without_a_target_or_without_confirmation(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(SystemExit) as exit_:
        sr.parse_args([])
    assert exit_.value.code == 2
    with pytest.raises(SystemExit):
        sr.parse_args(["--pitr", " "])
    ran: list[list[str]] = []
    monkeypatch.setattr(sr, "compose_config", lambda compose: model())
    monkeypatch.setattr(sr.subprocess, "run", lambda argv, **kw: ran.append(argv))  # type: ignore[arg-type]
    assert sr.main(["--pitr", "latest"], confirm=lambda prompt: "no") == 1
    assert ran == []
