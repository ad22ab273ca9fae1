"""One run per job kind at a time (DESIGN §3.8), with flock on a lock file.

The kernel drops the lock when the process dies, so a crashed run never
leaves a stale lock behind. The lock file records the holder's pid for the
error message.

Several users share one deployment's lock directory (cron runs ``dump`` as
postgres, an operator once ran it as root): a directory we create is
world-writable with the sticky bit (like /tmp), a lock file we create is
0666 whatever the umask, and an existing lock file we may not write is
locked through a read-only descriptor (flock does not need write access).
When none of that is possible the run stops with one line naming the path
and the fix, never a traceback.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from p88backup.errors import ConfigError, LockedError

DIR_MODE = 0o1777  # every user of the deployment may add lock files; none may remove another's
FILE_MODE = 0o666


def _unusable(path: Path, what: str, exc: OSError, fix: str) -> ConfigError:
    reason = exc.strerror or type(exc).__name__
    return ConfigError(
        f"cannot use lock {what} {path}: {reason} (uid {os.geteuid()}); fix: {fix}, or set P88_LOCK_DIR "
        "to a directory every user that runs p88backup can write"
    )


def _dir_fix(lock_dir: Path) -> str:
    return f"chmod 1777 {lock_dir} (or chown it to the user that runs p88backup)"


def ensure_lock_dir(lock_dir: Path) -> None:
    """Create ``lock_dir`` shared by every user (mode 1777) if it is missing.

    An existing directory keeps its mode: the operator may have chosen a
    group-writable one on purpose.
    """
    try:
        if lock_dir.is_dir():
            return
        lock_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            lock_dir.mkdir()
        except FileExistsError:
            return  # another run made it first (it set the mode), or it is a file: open() says so
        # mkdir's mode is filtered by the umask; chmod is not.
        os.chmod(lock_dir, DIR_MODE)
    except OSError as exc:
        raise _unusable(lock_dir, "directory", exc, f"mkdir -m 1777 {lock_dir}") from None


def open_lock_file(path: Path) -> tuple[int, bool]:
    """An fd of the lock file at ``path`` and whether it is writable.

    Never follows a symlink (the directory is world-writable). Opens an
    existing file without O_CREAT, which fs.protected_regular refuses for
    other users' files in sticky directories.
    """
    flags = os.O_NOFOLLOW | os.O_CLOEXEC
    for _ in range(10):
        try:
            return os.open(path, os.O_RDWR | flags), True
        except FileNotFoundError:
            pass
        except PermissionError:
            try:
                return os.open(path, os.O_RDONLY | flags), False
            except OSError as exc:
                if not os.access(path.parent, os.X_OK, effective_ids=os.access in os.supports_effective_ids):
                    raise _unusable(path.parent, "directory", exc, _dir_fix(path.parent)) from None
                fix = f"chmod 666 {path} (or remove it while no run holds it)"
                raise _unusable(path, "file", exc, fix) from None
        except OSError as exc:
            raise _unusable(path, "file", exc, f"remove {path} (it must be a regular file)") from None
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | flags, FILE_MODE)
        except FileExistsError:
            continue  # another run created it between our two opens: open theirs
        except OSError as exc:
            raise _unusable(path.parent, "directory", exc, _dir_fix(path.parent)) from None
        os.fchmod(fd, FILE_MODE)  # the umask took bits off at creation
        return fd, True
    raise ConfigError(f"cannot open lock file {path}: it keeps appearing and disappearing")


def flock_within(fd: int, wait: float, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Take an exclusive flock on ``fd``, waiting up to ``wait`` seconds; False if it stayed held."""
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                return False
            sleep(min(1.0, max(0.02, deadline - time.monotonic())))


@contextmanager
def job_lock(
    lock_dir: Path,
    job: str,
    *,
    wait: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Hold the lock for ``job``; wait up to ``wait`` seconds, else LockedError.

    ConfigError (one line, with the fix) when the lock directory or file
    cannot be used by this user.
    """
    ensure_lock_dir(lock_dir)
    path = lock_dir / f"{job}.lock"
    fd, writable = open_lock_file(path)
    try:
        if not flock_within(fd, wait, sleep):
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise LockedError(
                f"another {job} run is in progress (pid {holder}, lock {path})",
                hint="wait for it to finish, or pass --wait SECONDS",
            )
        if writable:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        try:
            yield
        finally:
            if writable:
                # Empty while nobody holds it, so a holder that could only read
                # the file never shows an earlier run's pid.
                os.ftruncate(fd, 0)
    finally:
        os.close(fd)
