"""Small process helpers shared by the service launchers."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    """Downloads and builds live here, outside the clone: ``$P88_CACHE`` or ~/.cache/p88backup."""
    env = os.environ.get("P88_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "p88backup"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(check: Callable[[], bool], timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # the service is not up yet
            last = exc
        time.sleep(interval)
    raise TimeoutError(f"{what} not ready after {timeout:.0f}s (last error: {last})")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def service_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run servers as ``postgres``."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        raise RuntimeError("running as root needs the 'postgres' user (apt install postgresql)") from None
    return "postgres"


def chown_for_service(path: Path) -> None:
    user = service_user()
    if user:
        shutil.chown(path, user, user)


def make_traversable(path: Path) -> None:
    """As root, let the service user reach ``path`` (pytest's temp root is 0700)."""
    if service_user() is None:
        return
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            os.chmod(parent, (mode & 0o7777) | 0o001)


def run_as(
    user: str, argv: list[str], *, cwd: Path | str = "/", env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` as ``user`` with that user's own group only (as cron runs the sidecar's jobs)."""
    return subprocess.run(
        argv,
        user=user,
        group=user,
        extra_groups=[],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def service_user_cannot_run(argvs: list[list[str]], timeout: float = 60) -> str | None:
    """Why the service user cannot run one of these commands (each a quick ``--version``), or None.

    As root, test servers run as ``postgres``; a program they call (archive_command) or are (the
    wheel's servers inside the venv) must be reachable by that user, which a 0700 parent directory
    such as root's home on a fresh machine prevents.
    """
    user = service_user()
    if user is None:
        return None
    for argv in argvs:
        try:
            r = run_as(user, argv, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"{argv[0]}: {exc}"
        if r.returncode != 0:
            return f"{argv[0]}: exit {r.returncode}: {(r.stderr or r.stdout).strip()[-500:]}"
    return None


def ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def children_named(parent: int, name: str) -> list[int]:
    """Pids of ``parent``'s live children named ``name`` (e.g. pg_restore, pg_dump) doing work.

    Left out: ``--version`` probes, and exited children not yet reaped (a zombie keeps its name
    but has no command line, so a probe that just ended would look like the real run).
    """
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
        if (
            fields.get("PPid", "").strip() == str(parent)
            and fields.get("Name", "").strip() == name
            and not fields.get("State", "").startswith("Z")
            and argv != [b""]
            and b"--version" not in argv
        ):
            found.append(int(entry.name))
    return found
