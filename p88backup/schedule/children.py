"""The daemon's child processes (each job run, and ``wal-stream``), and how they are stopped.

Every child is a ``p88backup`` command in its own session, so only the
daemon decides when it gets a signal: a Ctrl-C at the daemon's terminal
reaches the daemon alone, which then stops each child once, the way that
child stops cleanly (a second signal could interrupt a child's own cleanup).
After :meth:`Children.close` nothing new starts, so a job that was about to
start its next command (``verify`` after ``dump``) cannot slip past a stop.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from typing import IO

log = logging.getLogger(__name__)


class Children:
    """The running children, under one lock with the "closed" flag."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[int, tuple[subprocess.Popen[bytes], str]] = {}
        self._closed = False

    def spawn(
        self, argv: Sequence[str], *, role: str, stdout: int | IO[bytes] | None = subprocess.DEVNULL
    ) -> subprocess.Popen[bytes] | None:
        """Start ``argv`` (stderr: the daemon's, so its log lines go where the daemon's go);
        None once :meth:`close` was called. ``role`` names it in logs (``dump``, ``wal-stream``)."""
        with self._lock:
            if self._closed:
                return None
            proc = subprocess.Popen(
                list(argv), stdin=subprocess.DEVNULL, stdout=stdout, stderr=None, start_new_session=True
            )
            self._running[proc.pid] = (proc, role)
            return proc

    def reap(self, proc: subprocess.Popen[bytes]) -> None:
        """Forget a child that has exited."""
        with self._lock:
            self._running.pop(proc.pid, None)

    def close(self) -> list[tuple[subprocess.Popen[bytes], str]]:
        """Start nothing more; return the children still running, with their roles."""
        with self._lock:
            self._closed = True
            return list(self._running.values())

    @property
    def closed(self) -> bool:
        return self._closed

    def running(self) -> list[tuple[subprocess.Popen[bytes], str]]:
        with self._lock:
            return [(p, r) for p, r in self._running.values() if p.poll() is None]


def send(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Signal one child (not its session: the PostgreSQL tools it runs are its to stop)."""
    if proc.poll() is None:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


def wait_all(procs: Sequence[subprocess.Popen[bytes]], deadline: float) -> list[subprocess.Popen[bytes]]:
    """Wait until every process has exited or ``deadline`` (monotonic) passed; return those still running."""
    while True:
        left = [p for p in procs if p.poll() is None]
        if not left or time.monotonic() >= deadline:
            return left
        time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
