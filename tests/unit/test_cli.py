"""The CLI contract: help, config with secrets redacted, exit codes for bad settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from p88backup.cli.main import COMMANDS
from p88backup.errors import EXIT_CODE_HELP, ExitCode
from tests.harness.helpers import REPO, cli_env, log_lines, run_cli

SECRET = "pa$$w0rd-that-must-not-leak"
URL = f"postgresql://backup:{SECRET.replace('$', '%24')}@db.internal:5432/p88"


def test_help_lists_every_command(tmp_path: Path) -> None:
    r = run_cli(["--help"], cli_env(tmp_path))
    assert r.returncode == 0
    for cmd in COMMANDS:
        assert f"  {cmd} " in r.stdout


# Libraries --help never needs: a command's help must not pay for them (boto3 alone costs ~240 ms).
HEAVY = {"boto3", "botocore", "psycopg", "opensearchpy", "pydantic_settings", "apscheduler"}


@pytest.mark.parametrize("cmd", list(COMMANDS))
def test_each_command_has_help(tmp_path: Path, cmd: str) -> None:
    """Every command the CLI has (taken from the CLI itself, so a new one is covered)."""
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "p88backup", cmd, "--help"],
        env=cli_env(tmp_path, P88_RETENTION__KEEP_DAILY="broken", P88_STORAGE_URL="s3://bucket/prefix"),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr  # help works even when the settings are broken
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"Usage: p88backup {cmd} ")
    description = next(ln for ln in lines[1:] if ln.strip())
    assert description.startswith("  ") and len(description.split()) >= 3, r.stdout
    imported = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    assert not {m.split(".")[0] for m in imported} & HEAVY


def test_module_entry_point_and_version() -> None:
    r = subprocess.run([sys.executable, "-m", "p88backup", "--version"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0 and r.stdout.startswith("p88backup, version ")


def test_config_redacts_the_password(tmp_path: Path) -> None:
    env = cli_env(tmp_path, P88_DATABASE_URL=URL, P88_STORAGE_URL="s3://bucket/prefix")
    for args in (["config"], ["config", "--json"], ["-v", "config"]):
        r = run_cli(args, env)
        assert r.returncode == 0, r.stderr
        assert SECRET not in r.stdout + r.stderr
        assert "pa%24%24" not in r.stdout + r.stderr
    data = json.loads(run_cli(["config", "--json"], env).stdout)
    assert data["database_url"] == "postgresql://backup:***@db.internal:5432/p88"
    assert data["storage_url"] == "s3://bucket/prefix"


def test_config_file_via_option_and_env(tmp_path: Path) -> None:
    cfg = tmp_path / "p88.toml"
    cfg.write_text('storage_url = "file:///srv/p88"\n[retention]\nkeep_daily = 2\n')
    for args, extra in (
        (["--config", str(cfg), "config", "--json"], {}),
        (["config", "--json"], {"P88_CONFIG": str(cfg)}),
    ):
        data = json.loads(run_cli(args, cli_env(tmp_path, **extra)).stdout)
        assert data["storage_url"] == "file:///srv/p88" and data["retention"]["keep_daily"] == 2


def test_bad_setting_exit_code_and_one_line(tmp_path: Path) -> None:
    r = run_cli(["config"], cli_env(tmp_path, P88_RETENTION__KEEP_DAILY="lots"))
    assert r.returncode == ExitCode.CONFIG == 3
    lines = log_lines(r.stderr)
    assert len(lines) == 1 and lines[0]["level"] == "error" and lines[0]["exit_code"] == 3
    assert "retention.keep_daily" in lines[0]["msg"] and "P88_RETENTION__KEEP_DAILY" in lines[0]["msg"]
    assert "Traceback" not in r.stderr


def test_bad_database_url_never_echoes_the_password(tmp_path: Path) -> None:
    r = run_cli(["dump"], cli_env(tmp_path, P88_DATABASE_URL=URL.replace("postgresql", "mysql")))
    assert r.returncode == ExitCode.CONFIG
    assert SECRET not in r.stderr and "pa%24%24" not in r.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    r = run_cli(["--config", str(tmp_path / "nope.toml"), "config"], cli_env(tmp_path))
    assert r.returncode == ExitCode.CONFIG
    assert "config file not found" in r.stderr


def test_usage_errors_are_click_code_2(tmp_path: Path) -> None:
    assert run_cli(["restore"], cli_env(tmp_path)).returncode == 2
    assert run_cli(["dump", "--jobs", "0"], cli_env(tmp_path)).returncode == 2
    assert run_cli(["no-such-command"], cli_env(tmp_path)).returncode == 2


# restore's two modes each take only their own options (issue 11 §2): anything typed for the other
# mode is a usage error naming the mode it belongs to, even when it repeats that option's default.
OTHER_MODE = [
    (
        ["--dump", "latest", "--target-db", "x", "--force"],
        [
            "--force belongs to restore --pitr (replace the contents of a non-empty --target-dir);"
            " restore --dump uses --clean"
        ],
    ),
    (
        ["--pitr", "latest", "--target-dir", "{tmp}/pg", "--jobs", "2"],
        ["--jobs belongs to restore --dump (", "restore --pitr does not take it"],
    ),
    (
        ["--pitr", "latest", "--target-dir", "{tmp}/pg", "--jobs", "1"],  # the default, but typed
        ["--jobs belongs to restore --dump ("],
    ),
    (
        ["--pitr", "latest", "--target-dir", "{tmp}/pg", "--clean", "--target-db", "x"],
        ["--clean belongs to restore --dump (", "restore --pitr uses --force", "--target-db belongs to restore --dump"],
    ),
    (
        ["--dump", "latest", "--target-db", "x", "--archive-mode", "off", "--set", "a=b", "--start", "--timeout", "5"],
        ["--archive-mode belongs to restore --pitr", "--set belongs", "--start belongs", "--timeout belongs"],
    ),
    (["--dump", "latest", "--target-db", "x", "--no-verify"], ["--no-verify belongs to restore --pitr"]),
    (["--pitr", "latest", "--target-dir", "{tmp}/pg", "--no-globals"], ["--no-globals belongs to restore --dump"]),
    (["--dump", "latest", "--pitr", "latest"], ["--dump and --pitr are two different restores"]),
    (["--dump", "latest"], ["restore --dump needs --target-db NAME"]),
    (["--pitr", "latest"], ["restore --pitr needs --target-dir DIR"]),
]


@pytest.mark.parametrize("args, messages", OTHER_MODE, ids=[" ".join(a) for a, _ in OTHER_MODE])
def test_restore_rejects_options_of_the_other_mode(tmp_path: Path, args: list[str], messages: list[str]) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = run_cli(["restore", *args], cli_env(tmp_path, P88_STORAGE_URL=f"file://{tmp_path}/store"))
    assert r.returncode == ExitCode.USAGE, r.stderr
    for message in messages:
        assert message in r.stderr
    assert not (tmp_path / "pg").exists()


@pytest.mark.parametrize(
    "args",
    [
        ["--dump", "latest", "--target-db", "x", "--jobs", "2", "--clean", "--no-globals", "--no-check", "--json"],
        ["--pitr", "latest", "--target-dir", "{tmp}/pg", "--force", "--archive-mode", "on", "--set", "a=b", "--json"],
    ],
    ids=["dump", "pitr"],
)
def test_restore_takes_its_own_options(tmp_path: Path, args: list[str]) -> None:
    """Past the command line: the restore goes on until the storage (never set up here) stops it."""
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    r = run_cli(["restore", *args], cli_env(tmp_path, P88_STORAGE_URL=f"file://{tmp_path}/store"))
    assert r.returncode == ExitCode.STORAGE, r.stderr
    assert "belongs to" not in r.stderr


def test_restore_help_lists_each_modes_options_under_it(tmp_path: Path) -> None:
    out = run_cli(["restore", "--help"], cli_env(tmp_path)).stdout
    dump = out.index("Restore a dump (--dump ID|latest --target-db NAME):")
    pitr = out.index("Point-in-time recovery (--pitr TARGET --target-dir DIR):")
    common = out.index("\nOptions:")
    for option in ("--target-db", "--database", "--jobs", "--clean", "--no-globals", "--no-check"):
        assert out.index(f"\n  {option} ", dump) < pitr, option
    for option in (
        "--target-dir",
        "--start",
        "--stop",
        "--port",
        "--force",
        "--timeline",
        "--base-backup",
        "--owner",
        "--archive-mode",
        "--set",
        "--no-verify",
        "--timeout",
    ):
        assert pitr < out.index(f"\n  {option} ", dump) < common, option
    assert common < out.index("\n  --json ", dump)


def test_restore_results_show_their_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    """What a restore did not do is printed, a line each (and kept in --json: the same fields)."""
    from p88backup.cli.restore import show_dump, show_pitr
    from p88backup.core.logical.globals_filter import Skipped
    from p88backup.core.logical.restore import RestoreResult
    from p88backup.core.pitr.restore import PitrResult

    grant = "GRANT p88_team TO p88_reader WITH ADMIN OPTION GRANTED BY postgres;"
    show_dump(
        RestoreResult("20261127T021500Z", "p88", "copy", 2.0, globals_skipped=[Skipped(grant, "it would change x")])
    )
    show_pitr(
        PitrResult("20261127T021500Z", "latest", "/srv/pg", 1, 3, 1.0, warnings=["one", "two"]), archive_mode=True
    )
    out = capsys.readouterr().out.splitlines()
    assert f"warning: not applied, it would change x: {grant}  (apply it by hand if it is wanted)" in out
    assert "warning: one" in out and "warning: two" in out


def test_exit_codes_are_documented(tmp_path: Path) -> None:
    r = run_cli(["exit-codes"], cli_env(tmp_path))
    assert r.returncode == 0
    for code in ExitCode:
        assert EXIT_CODE_HELP[code] in r.stdout
    assert all(code >= 3 for code in ExitCode if code not in (0, 1, 2))


def test_console_log_format(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-m", "p88backup", "--log-format", "console", "config"],
        env=cli_env(tmp_path, P88_STORAGE_URL="ftp://x"),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert r.returncode == 3
    assert r.stderr.startswith("error   invalid setting storage_url")


def test_leave_finishes_threads_and_output_before_it_exits(tmp_path: Path) -> None:
    """entry.leave skips interpreter teardown: it must still wait for non-daemon
    threads, flush log handlers and stdio, and keep the exit status."""
    marker = tmp_path / "written-by-thread"
    script = f"""
import logging, sys, threading, time
from p88backup.entry import leave
logging.basicConfig(stream=sys.stderr, level=logging.INFO)
def late():
    time.sleep(0.2)
    open({str(marker)!r}, "w").write("done")
threading.Thread(target=late).start()
sys.stdout.write("x" * 300000 + "END")
logging.getLogger("t").info("last log line")
leave(5)
"""
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 5
    assert r.stdout.endswith("END") and len(r.stdout) == 300003
    assert "last log line" in r.stderr
    assert marker.read_text() == "done"
