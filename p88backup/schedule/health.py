"""``/healthz``: healthy only while WAL is being archived and ``status`` finds nothing too old.

Two verdicts, both from code that already judges them (DESIGN §3.13: health
is progress, not liveness):

- ``wal_stream``: :func:`p88backup.core.wal.streamhealth.judge` on the
  streamer's ``status.json`` (connected, and caught up with the server
  within the last two minutes). Read on every request: it is one small file.
- ``status``: :func:`p88backup.core.health.judge` through
  :func:`p88backup.core.status.collect`, the verdict of ``p88backup status``
  with the ``[status]`` limits. It lists the catalog and the WAL archive, so
  :class:`HealthMonitor` refreshes it in the background (every
  ``interval`` seconds, soon after each job, and sooner after a check that
  could not be made) and a request reads the last result. A check that
  failed (storage unreachable) or that has not finished for too long is
  unhealthy, with the reason: a probe never waits on storage.

:func:`assess` combines them (pure; a table of cases in the unit tests).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

INTERVAL = 60.0  # seconds between status checks (and after each job, at once)
RETRY_AFTER_ERROR = 15.0  # seconds: a check that could not be made (storage down) is tried again sooner


@dataclass(frozen=True)
class StatusResult:
    """One run of the status check: when it finished, and its verdict or why it could not be made."""

    checked_at: float
    healthy: bool
    failures: tuple[str, ...] = ()
    """``name: reason`` of each failed check."""
    error: str | None = None
    """The check itself failed (storage unreachable...): not healthy, and this says why."""
    checks: tuple[dict[str, Any], ...] = field(default=())


@dataclass(frozen=True)
class Assessment:
    healthy: bool
    body: dict[str, Any]


def assess(
    stream: tuple[bool, str] | None,
    status: StatusResult | None,
    *,
    now: float,
    stale_after: float,
    started_at: float,
) -> Assessment:
    """The ``/healthz`` answer.

    ``stream``: wal-stream's (healthy, reason), or None when the daemon runs
    no streamer (``--no-wal-stream``: archive_command ships WAL, and the status
    check's ``wal_age`` judges it). ``status``: the newest status check, or
    None before the first one finished. ``stale_after``: a status result (or,
    before the first, the daemon's start) older than this is unhealthy.
    """
    reasons: list[str] = []
    body: dict[str, Any] = {}
    if stream is not None:
        ok, why = stream
        body["wal_stream"] = {"healthy": ok, "reason": why}
        if not ok:
            reasons.append(f"wal-stream: {why}")
    if status is None:
        waited = now - started_at
        body["status"] = {"healthy": False, "checked_at": None, "reason": "not checked yet"}
        reasons.append(
            f"status: not checked for {waited:.0f}s since start" if waited > stale_after else "status: not checked yet"
        )
    else:
        age = now - status.checked_at
        section: dict[str, Any] = {"healthy": status.healthy, "checked_at": status.checked_at}
        if status.checks:
            section["checks"] = list(status.checks)
        if status.error is not None:
            section["error"] = status.error
            reasons.append(f"status: cannot check: {status.error}")
        else:
            reasons.extend(f"status: {f}" for f in status.failures)
        if age > stale_after:
            section["healthy"] = False
            reasons.append(f"status: last checked {age:.0f}s ago (a check is stuck)")
        body["status"] = section
    healthy = not reasons
    return Assessment(healthy, {"healthy": healthy, "reasons": reasons, **body})


class HealthMonitor:
    """Runs the status check in a thread and keeps the last result."""

    def __init__(
        self,
        check_status: Callable[[], StatusResult],
        *,
        spool: Path | None,
        interval: float = INTERVAL,
        retry_after_error: float = RETRY_AFTER_ERROR,
        stream_max_age: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.check_status, self.spool, self.interval = check_status, spool, interval
        self.retry_after_error = min(retry_after_error, interval)
        self.stream_max_age = stream_max_age
        self.clock = clock
        self.started_at = clock()
        self._last: StatusResult | None = None
        self._poke = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def stale_after(self) -> float:
        # Two missed checks plus the longest a check may take (storage retries, a database timeout).
        return 2 * self.interval + 120

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="health-monitor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._poke.set()

    def poke(self) -> None:
        """Check again soon (a job just finished: a dump may have made a stale verdict healthy)."""
        self._poke.set()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._poke.clear()
            self._last = self._run_check()
            self._poke.wait(self.interval if self._last.error is None else self.retry_after_error)

    def _run_check(self) -> StatusResult:
        try:
            result = self.check_status()
        except Exception as exc:  # anything: the monitor must go on, and /healthz must say why
            from p88backup.errors import P88Error

            if not isinstance(exc, P88Error):
                log.debug("status check failed", exc_info=True)
            result = StatusResult(self.clock(), False, error=str(exc) or type(exc).__name__)
        if self._last is None or result.healthy != self._last.healthy or result.error != self._last.error:
            fields = {"healthy": result.healthy, "failures": list(result.failures), "error": result.error}
            log.log(logging.INFO if result.healthy else logging.WARNING, "status check", extra={"p88": fields})
        return result

    def stream_verdict(self) -> tuple[bool, str] | None:
        if self.spool is None:
            return None
        from p88backup.core.wal import streamhealth

        kw = {} if self.stream_max_age is None else {"max_age": self.stream_max_age}
        verdict = streamhealth.judge(streamhealth.read_status(self.spool), now=self.clock(), **kw)
        return verdict.healthy, verdict.reason

    def assessment(self) -> Assessment:
        return assess(
            self.stream_verdict(),
            self._last,
            now=self.clock(),
            stale_after=self.stale_after,
            started_at=self.started_at,
        )
