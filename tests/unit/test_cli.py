"""The CLI contract: help, config with secrets redacted, exit codes for bad settings."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from p88backup.errors import EXIT_CODE_HELP, ExitCode
from tests.harness.helpers import REPO, cli_env, log_lines, run_cli

SECRET = "pa$$w0rd-that-must-not-leak"
URL = f"postgresql://backup:{SECRET.replace('$', '%24')}@db.internal:5432/p88"


def test_help_lists_every_command(tmp_path: Path) -> None:
    r = run_cli(["--help"], cli_env(tmp_path))
    assert r.returncode == 0
    for cmd in ("dump", "list", "status", "verify", "restore", "expire", "config", "exit-codes"):
        assert f"  {cmd} " in r.stdout


@pytest.mark.parametrize("cmd", ["dump", "list", "status", "verify", "restore", "expire", "config"])
def test_each_command_has_help(tmp_path: Path, cmd: str) -> None:
    r = run_cli([cmd, "--help"], cli_env(tmp_path, P88_RETENTION__KEEP_DAILY="broken"))
    assert r.returncode == 0, r.stderr  # help works even when the settings are broken
    assert "Usage: p88backup " + cmd in r.stdout


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
