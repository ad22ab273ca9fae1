"""SIGTERM and SIGINT during a drill: stop what runs, clean up, exit 16.

While :class:`Interrupts` is active, the first signal raises
:class:`DrillInterrupt` in the main thread, wherever it is (waiting for
pg_restore, for WAL replay, for a query), so the drill's ``finally`` blocks
remove the scratch clusters; the drill turns it into
:class:`~p88backup.errors.InterruptedRunError` (exit 16) once they are gone.
It is a ``KeyboardInterrupt``, not an ``Exception``: no ``except Exception``
on the way (a check recording its own failure, a probe of production) can
mistake it for a failure of its own and carry on, and libraries that cancel
a running query on Ctrl-C (psycopg) do so for it too. Inside :meth:`Interrupts.shield`
(the cleanup itself) a signal is only noted and raised once the shield ends:
a second ``docker stop`` must not cut a cleanup in half. Later signals are
logged and ignored; the cleanup is bounded and already under way.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class DrillInterrupt(KeyboardInterrupt):
    """A signal asked the drill to stop (``str()``: the signal's name)."""


class Interrupts:
    def __init__(self) -> None:
        self.received: str | None = None
        self._raised = False
        self._shield = 0
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> Interrupts:
        # Signal handlers belong to the main thread; elsewhere (a scheduler's worker) the caller stops us.
        if threading.current_thread() is threading.main_thread():
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _error(self) -> DrillInterrupt:
        self._raised = True
        return DrillInterrupt(self.received or "a signal")

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.received is not None:
            log.warning("already stopping: signal ignored", extra={"p88": {"signal": name}})
            return
        self.received = name
        log.warning("drill interrupted: cleaning up", extra={"p88": {"signal": name}})
        if not self._shield:
            raise self._error()

    @contextmanager
    def shield(self) -> Iterator[None]:
        """Run a cleanup to its end; a signal received meanwhile is raised afterwards."""
        self._shield += 1
        try:
            yield
        finally:
            self._shield -= 1
        if not self._shield and self.received is not None and not self._raised:
            raise self._error()
