"""``p88backup init`` and what every command does with a storage that was never initialised
(issue 10 item 5, DESIGN §3.12), through the CLI as PostgreSQL and an operator run it.

Before: a put created the missing root (and its parents), so ``wal-push`` into a backup
volume that was not mounted exited 0 with the WAL on the wrong filesystem; ``wal-fetch``
on an empty mount point answered "not found" (exit 1: recovery ends early); ``list`` and
``status`` reported "no backups".
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p88backup.catalog.layout import STORAGE_MARKER
from p88backup.errors import ExitCode
from tests.harness.helpers import SEG, cli_env, json_out, log_lines, ok, run_cli, wal_header

NAME = "000000010000000000000003"


def segment(path: Path) -> Path:
    path.write_bytes(wal_header(3) + b"\0" * (SEG - len(wal_header(3))))
    return path


def env_for(tmp_path: Path, root: Path) -> dict[str, str]:
    return cli_env(tmp_path, P88_STORAGE_URL=f"file://{root}")


def test_init_creates_the_root_once_and_then_does_nothing(tmp_path: Path) -> None:
    root = tmp_path / "srv" / "backups"
    env = env_for(tmp_path, root)
    r = ok(run_cli(["init"], env))
    assert r.stdout.strip() == f"initialised file://{root}"
    marker = json.loads((root / STORAGE_MARKER).read_text())
    assert marker["format_version"] == 1 and marker["created_by"].startswith("p88backup ")
    r = ok(run_cli(["init"], env))
    assert "is already initialised (since " in r.stdout and "nothing to do" in r.stdout
    assert json.loads((root / STORAGE_MARKER).read_text()) == marker  # untouched
    again = json_out(run_cli(["init", "--json"], env))
    assert again == {"storage": f"file://{root}", "outcome": "already", "marker": marker}


def test_init_adopts_backups_made_before_markers(tmp_path: Path) -> None:
    root = tmp_path / "store"
    (root / "dumps" / "20261127T021500Z").mkdir(parents=True)
    (root / "dumps" / "20261127T021500Z" / "p88.pgdump.zst").write_bytes(b"x")
    r = ok(run_cli(["init"], env_for(tmp_path, root)))
    assert "it already held backups, which are kept" in r.stdout
    assert any(line["level"] == "warning" and "adopted" in line["msg"] for line in log_lines(r.stderr))
    assert (root / "dumps" / "20261127T021500Z" / "p88.pgdump.zst").read_bytes() == b"x"


def test_wal_push_to_a_volume_that_is_not_mounted_fails_and_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "mnt" / "backups"
    r = run_cli(["wal-push", str(segment(tmp_path / NAME))], env_for(tmp_path, root))
    assert r.returncode == ExitCode.STORAGE, r.stderr
    assert "does not exist" in r.stderr and "mounted" in r.stderr
    assert not (tmp_path / "mnt").exists()


def test_wal_push_to_an_empty_mount_point_fails_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "mnt"
    root.mkdir()  # what an unmounted volume leaves
    r = run_cli(["wal-push", str(segment(tmp_path / NAME))], env_for(tmp_path, root))
    assert r.returncode == ExitCode.STORAGE, r.stderr
    assert "not initialised" in r.stderr and "p88backup init" in r.stderr
    assert list(root.iterdir()) == []


def test_wal_fetch_from_an_empty_mount_point_aborts_recovery(tmp_path: Path) -> None:
    root = tmp_path / "mnt"
    root.mkdir()
    env = env_for(tmp_path, root)
    r = run_cli(["wal-fetch", NAME, str(tmp_path / "x")], env)
    assert r.returncode == 126, r.stderr  # never 1: PostgreSQL would end recovery and promote
    assert "not initialised" in r.stderr and "is the volume mounted" in r.stderr
    ok(run_cli(["init"], env))
    assert run_cli(["wal-fetch", NAME, str(tmp_path / "x")], env).returncode == 1  # now truly not archived


@pytest.mark.parametrize("command", [["list"], ["list", "--json"], ["status"], ["status", "--json"], ["expire"]])
def test_reads_and_expire_say_not_initialised_not_no_backups(tmp_path: Path, command: list[str]) -> None:
    root = tmp_path / "store"
    root.mkdir()
    r = run_cli(command, env_for(tmp_path, root))
    assert r.returncode == ExitCode.STORAGE, (r.stdout, r.stderr)
    assert r.stdout == "" and "not initialised" in r.stderr
