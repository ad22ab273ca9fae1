from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from p88backup.errors import ExitCode, LockedError
from p88backup.locks import job_lock
from tests.harness.helpers import REPO, cli_env, other_user
from tests.harness.procs import make_traversable, run_as


def test_second_holder_is_refused_then_admitted(tmp_path: Path) -> None:
    with job_lock(tmp_path, "dump"):
        with pytest.raises(LockedError, match=f"another dump run is in progress \\(pid {os.getpid()}"):
            with job_lock(tmp_path, "dump"):
                pass
        with job_lock(tmp_path, "expire"):  # other job kinds are independent
            pass
    with job_lock(tmp_path, "dump"):
        pass


def test_wait_uses_the_injected_sleep(tmp_path: Path) -> None:
    slept: list[float] = []
    with job_lock(tmp_path, "dump"), pytest.raises(LockedError):
        with job_lock(tmp_path, "dump", wait=0.3, sleep=slept.append):
            pass
    assert slept and sum(slept) > 0


def test_lock_dies_with_its_process(tmp_path: Path) -> None:
    code = (
        "import os, pathlib\nfrom p88backup.locks import job_lock\n"
        f"with job_lock(pathlib.Path({str(tmp_path)!r}), 'dump'):\n    os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with job_lock(tmp_path, "dump"):  # no stale lock after the holder died
        pass


# -- several users, one deployment (issue 10 item 18) ---------------------------------------------
# As root, with the service user (postgres) as the other user: cron runs jobs as postgres, an
# operator once ran the same job as root.


def as_user(user: str, code: str) -> subprocess.CompletedProcess[str]:
    prelude = "import pathlib, sys\nfrom p88backup.locks import job_lock\n"
    return run_as(user, [sys.executable, "-c", prelude + code], cwd=REPO)


def take(lock_dir: Path, job: str) -> str:
    return f"with job_lock(pathlib.Path({str(lock_dir)!r}), {job!r}):\n    print('held')\n"


@pytest.fixture
def shared(tmp_path: Path) -> Path:
    """A place both users can reach; the lock directory itself does not exist yet."""
    os.chmod(tmp_path, 0o777)
    make_traversable(tmp_path)
    return tmp_path / "locks"


def test_root_made_locks_serve_the_service_user(shared: Path) -> None:
    user = other_user()
    old = os.umask(0o077)  # a strict umask must not make the lock private
    try:
        with job_lock(shared, "dump"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777
    assert stat.S_IMODE((shared / "dump.lock").stat().st_mode) == 0o666
    for job in ("dump", "expire"):  # the root-made file, and a new one in the root-made directory
        r = as_user(user, take(shared, job))
        assert r.returncode == 0 and r.stdout == "held\n", r.stderr
    with job_lock(shared, "dump"):  # and root again after them
        pass


def test_service_user_made_locks_serve_root(shared: Path) -> None:
    user = other_user()
    r = as_user(user, take(shared, "dump"))
    assert r.returncode == 0, r.stderr
    assert shared.stat().st_uid == (shared / "dump.lock").stat().st_uid != 0
    with job_lock(shared, "dump"), job_lock(shared, "basebackup"):
        pass
    r = as_user(user, take(shared, "dump") + take(shared, "basebackup"))
    assert r.returncode == 0 and r.stdout == "held\nheld\n", r.stderr


def test_a_lock_file_the_user_cannot_write_still_excludes(shared: Path) -> None:
    """A root-owned 0644 lock file (as earlier releases left it) is locked through a read-only fd."""
    user = other_user()
    shared.mkdir(mode=0o1777)
    os.chmod(shared, 0o1777)
    (shared / "dump.lock").write_text("")
    os.chmod(shared / "dump.lock", 0o644)
    with job_lock(shared, "dump"):
        r = as_user(user, take(shared, "dump"))
        assert r.returncode != 0 and f"another dump run is in progress (pid {os.getpid()}" in r.stderr
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from p88backup.locks import job_lock\nimport pathlib, sys\n"
            f"{take(shared, 'dump')}    sys.stdout.flush(); sys.stdin.readline()",
        ],
        user=user,
        group=user,
        extra_groups=[],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(LockedError, match="another dump run is in progress"):
            with job_lock(shared, "dump"):
                pass
    finally:
        holder.communicate("\n", timeout=30)
    assert holder.returncode == 0
    with job_lock(shared, "dump"):
        pass


@pytest.mark.parametrize(
    "parent_mode, dir_mode, file_mode, unusable, fix",
    [
        (0o777, 0o755, None, "locks", "chmod 1777 "),  # a directory an earlier release made as root
        (0o777, 0o700, None, "locks", "chmod 1777 "),  # one the user cannot even enter
        (0o777, 0o1777, 0o600, "locks/dump.lock", "chmod 666 "),  # a file it can neither write nor read
        (0o755, None, None, "locks", "mkdir -m 1777 "),  # a directory it cannot create
        (0o700, None, None, "locks", "mkdir -m 1777 "),  # nor even look for
    ],
)
def test_unusable_lock_is_one_line_with_the_fix(
    shared: Path, parent_mode: int, dir_mode: int | None, file_mode: int | None, unusable: str, fix: str
) -> None:
    user = other_user()
    parent = shared.parent
    os.chmod(parent, parent_mode)
    if dir_mode is not None:
        shared.mkdir()
        os.chmod(shared, dir_mode)
    if file_mode is not None:
        (shared / "dump.lock").write_text("")
        os.chmod(shared / "dump.lock", file_mode)
    r = run_as(
        user,
        [sys.executable, "-m", "p88backup", "--log-format", "console", "dump"],
        cwd=REPO,
        env=cli_env(parent, P88_LOCK_DIR=str(shared)),
    )
    assert r.returncode == ExitCode.CONFIG, r.stderr
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert f"cannot use lock {'file' if file_mode else 'directory'} {parent / unusable}:" in r.stderr
    assert fix + str(parent / unusable) in r.stderr and "P88_LOCK_DIR" in r.stderr


def test_expire_checks_other_users_job_locks_without_a_traceback(shared: Path) -> None:
    """expire probes the dump and basebackup locks (to spare a running job's objects)."""
    user = other_user()

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        env = cli_env(shared.parent, P88_LOCK_DIR=str(shared), P88_STORAGE_URL=f"file://{shared.parent}/store")
        return run_as(user, [sys.executable, "-m", "p88backup", "--log-format", "console", *args], cwd=REPO, env=env)

    assert run("init").returncode == 0
    shared.mkdir(mode=0o1777)
    os.chmod(shared, 0o1777)
    for job in ("dump", "basebackup"):  # as an earlier release left them after a run as root
        (shared / f"{job}.lock").write_text("")
        os.chmod(shared / f"{job}.lock", 0o644)
    r = run("expire", "--dry-run")
    assert r.returncode == 0, r.stderr
    os.chmod(shared / "dump.lock", 0o600)
    r = run("expire", "--dry-run")
    assert r.returncode == ExitCode.CONFIG and "Traceback" not in r.stderr, r.stderr
    assert f"cannot use lock file {shared / 'dump.lock'}" in r.stderr and "chmod 666" in r.stderr
