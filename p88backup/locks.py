"""One run per job kind at a time (DESIGN §3.8), with flock on a lock file.

The kernel drops the lock when the process dies, so a crashed run never
leaves a stale lock behind. The lock file records the holder's pid for the
error message.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from p88backup.errors import LockedError


@contextmanager
def job_lock(
    lock_dir: Path,
    job: str,
    *,
    wait: float = 0.0,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[None]:
    """Hold the lock for ``job``; wait up to ``wait`` seconds, else LockedError."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    path = lock_dir / f"{job}.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
                    raise LockedError(
                        f"another {job} run is in progress (pid {holder}, lock {path})",
                        hint="wait for it to finish, or pass --wait SECONDS",
                    ) from None
                sleep(min(1.0, max(0.05, deadline - time.monotonic())))
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
