"""``wal-stream`` for the daemon's whole life: started at once, restarted with backoff, never fatal.

``p88backup wal-stream`` already reconnects to PostgreSQL and retries storage
by itself; it exits only when it cannot start at all (settings, the lock of
another streamer, a crash). Whatever the reason, the supervisor logs it and
starts it again after a pause that doubles from 1 s up to a minute, and
starts short again once a run has lasted a while (a new problem, retry soon).
On stop it sends SIGTERM: wal-stream stops pg_receivewal and stores what is
complete before it exits (the rest stays in its spool for the next start).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Sequence

from p88backup.schedule.children import Children, send
from p88backup.schedule.jobs import result_name

log = logging.getLogger(__name__)

MIN_BACKOFF = 1.0
MAX_BACKOFF = 60.0
STEADY_AFTER = 60.0  # seconds: a run that lasted this long resets the backoff


def next_backoff(current: float, ran_for: float, *, low: float = MIN_BACKOFF, high: float = MAX_BACKOFF) -> float:
    """The pause before the next start, given the last pause and how long the last run lasted."""
    if ran_for >= STEADY_AFTER:
        return low
    return min(max(current * 2, low), high)


class WalStreamSupervisor:
    def __init__(
        self,
        children: Children,
        argv: Sequence[str],
        *,
        min_backoff: float = MIN_BACKOFF,
        max_backoff: float = MAX_BACKOFF,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children, self.argv = children, list(argv)
        self.min_backoff, self.max_backoff = min_backoff, max_backoff
        self.clock = clock
        self.stopping = threading.Event()
        self.starts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="wal-stream-supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> subprocess.Popen[bytes] | None:
        """Stop restarting it and ask the running one to finish (SIGTERM); return it, to wait for."""
        self.stopping.set()
        proc = self._proc
        if proc is not None:
            send(proc, signal.SIGTERM)
        return proc

    def join(self, timeout: float) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def _loop(self) -> None:
        pause = 0.0
        while not self.stopping.is_set():
            started = self.clock()
            try:
                proc = self.children.spawn(self.argv, role="wal-stream")
            except OSError as exc:  # no process could be made (EAGAIN, EMFILE...): try again later
                pause = next_backoff(pause, 0.0, low=self.min_backoff, high=self.max_backoff)
                log.error("cannot start wal-stream", extra={"p88": {"error": str(exc), "in_seconds": pause}})
                self.stopping.wait(pause)
                continue
            if proc is None:
                return  # the daemon is stopping
            self._proc = proc
            self.starts += 1
            if self.stopping.is_set():  # stop() ran between the spawn and the line above
                send(proc, signal.SIGTERM)
            log.info("wal-stream started", extra={"p88": {"pid": proc.pid, "start": self.starts}})
            rc = proc.wait()
            self.children.reap(proc)
            ran_for = self.clock() - started
            if self.stopping.is_set():
                level = logging.INFO if rc == 0 else logging.WARNING
                log.log(level, "wal-stream stopped", extra={"p88": {"exit_code": rc, "result": result_name(rc)}})
                return
            pause = next_backoff(pause, ran_for, low=self.min_backoff, high=self.max_backoff)
            log.error(
                "wal-stream exited, restarting it",
                extra={
                    "p88": {
                        "exit_code": rc,
                        "result": result_name(rc),
                        "ran_seconds": round(ran_for, 1),
                        "in_seconds": pause,
                    }
                },
            )
            self.stopping.wait(pause)
