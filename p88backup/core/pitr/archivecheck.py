"""Is WAL reaching the archive? Checks for ``basebackup``, so that it never waits without end.

A base backup taken with ``pg_basebackup --wal-method=none`` is usable only
once the WAL from its start to its end is in the archive, and the server
itself waits, without limit, for that WAL to be archived before it ends the
backup. If ``archive_command`` fails (the server's user cannot run it, the
storage is down) or no ``wal-stream`` ships WAL, that wait never ends. So:

* before the backup, :func:`check_archiving` forces a segment switch and waits
  (bounded) for that segment to arrive in storage, as pgBackRest's ``check``
  does; it fails with what the server's archiver reports;
* while pg_basebackup runs, :class:`BackupWatch` watches the server's
  progress view; once the server waits for WAL archiving it starts a clock,
  and past the timeout it stops pg_basebackup and reports the archiver's
  last failure (``pg_stat_archiver``: failed count, last failed segment and
  time — the error text itself is only in the server log).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from p88backup.core.wal.archive import WalArchive
from p88backup.errors import ArchivingError
from p88backup.pg.conn import ConnInfo, first_line

log = logging.getLogger(__name__)

WAITING_PHASE = "waiting for wal archiving to finish"


@dataclass(frozen=True)
class ArchiverState:
    """``pg_stat_archiver`` plus ``archive_mode``: the server's side of archiving."""

    archive_mode: str
    archived_count: int
    last_archived_wal: str | None
    failed_count: int
    last_failed_wal: str | None
    last_failed_time: datetime | None
    oldest_ready: str | None = None  # the segment the archiver must archive next
    ready_count: int = 0

    @classmethod
    def read(cls, conn: Any) -> ArchiverState:
        row = conn.execute(
            "SELECT current_setting('archive_mode'), archived_count, last_archived_wal, failed_count,"
            " last_failed_wal, last_failed_time FROM pg_stat_archiver"
        ).fetchone()
        oldest, count = None, 0
        try:  # superuser or pg_monitor (the backup role has it)
            oldest, count = conn.execute(
                "SELECT min(name), count(*) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"
            ).fetchone()
        except Exception as exc:
            log.debug("cannot list archive_status", extra={"p88": {"error": first_line(exc)}})
        waiting = oldest.removesuffix(".ready") if oldest else None
        return cls(row[0], int(row[1]), row[2], int(row[3]), row[4], row[5], waiting, int(count or 0))

    def describe(self, since: ArchiverState | None = None) -> str:
        """One sentence on what the archiver did (since ``since``), for error messages."""
        if self.archive_mode == "off":
            return (
                "archive_mode is off on the server, so only p88backup wal-stream can archive: is it running "
                "and connected?"
            )
        failures = self.failed_count - (since.failed_count if since else 0)
        if failures > 0 and self.last_failed_wal:
            when = self.last_failed_time.isoformat() if self.last_failed_time else "?"
            return (
                f"archive_command failed {failures} time(s), last on {self.last_failed_wal} at {when} "
                "(its error is in the server log; is the command runnable by the server's user, is the "
                "storage reachable?)"
            )
        last = self.last_archived_wal or "nothing yet"
        if self.oldest_ready:
            # PostgreSQL restarts the archiver without counting a failure when the shell cannot
            # run the command at all (exit 126/127, or a signal).
            return (
                f"archive_command has not archived {self.oldest_ready} ({self.ready_count} segment(s) waiting; "
                f"last archived: {last}) and pg_stat_archiver counts no failure, which is what happens when "
                "the command cannot be run at all (permission denied, not found: exit 126/127); see the "
                "server log"
            )
        return f"archive_command reports no failure; last archived: {last}"


def _archiver(conn: Any) -> ArchiverState | None:
    try:
        return ArchiverState.read(conn)
    except Exception as exc:  # a role without pg_monitor may not see it: report what we can
        log.debug("cannot read pg_stat_archiver", extra={"p88": {"error": first_line(exc)}})
        return None


def check_archiving(
    ci: ConnInfo,
    archive: WalArchive,
    timeout: float,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> str | None:
    """Force a WAL segment switch and wait until that segment is in the archive.

    Returns the segment's name (None on a standby, where no switch can be
    forced). Raises :class:`ArchivingError` after ``timeout`` seconds.
    """
    with ci.connect() as conn:
        if conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
            log.info("archive check skipped: the server is a standby (no WAL switch can be forced there)")
            return None
        before = _archiver(conn)
        # A commit record, so that the switch below always closes a segment with something in it.
        conn.execute("SELECT txid_current()")
        segment = str(conn.execute("SELECT pg_walfile_name(pg_switch_wal())").fetchone()[0])
        log.info("checking that WAL reaches the archive", extra={"p88": {"segment": segment, "timeout": timeout}})
        deadline = time.monotonic() + timeout
        while archive.find(segment) is None:
            if time.monotonic() >= deadline:
                state = _archiver(conn)
                why = state.describe(before) if state else "pg_stat_archiver is not readable by this role"
                raise ArchivingError(
                    f"archiving does not work: WAL segment {segment} did not reach {archive.storage.url} "
                    f"within {timeout:.0f}s; {why}",
                    hint="fix archiving first (archive_command = 'p88backup wal-push %p', or p88backup wal-stream); "
                    "--no-archive-check skips this check",
                )
            sleep(0.5)
    log.info("archive check passed", extra={"p88": {"segment": segment}})
    return segment


class BackupWatch:
    """Bounds the server's wait for WAL archiving at the end of a base backup.

    Runs beside pg_basebackup (whose connection carries ``application_name``)
    and polls ``pg_stat_progress_basebackup``. Once the backend reports
    :data:`WAITING_PHASE` for longer than ``timeout`` seconds it records the
    reason in :attr:`failure` and calls ``abort`` (which stops pg_basebackup).
    """

    def __init__(
        self,
        ci: ConnInfo,
        application_name: str,
        timeout: float,
        abort: Callable[[], None],
        *,
        poll: float = 1.0,
    ) -> None:
        self.ci, self.app, self.timeout, self.abort, self.poll = ci, application_name, timeout, abort, poll
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="archive-watch", daemon=True)

    def __enter__(self) -> BackupWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        waiting_since: float | None = None
        before: ArchiverState | None = None
        conn: Any = None
        try:
            while not self._stop.wait(self.poll):
                try:
                    if conn is None:
                        conn = self.ci.connect()
                        before = before or _archiver(conn)
                    row = conn.execute(
                        "SELECT p.phase FROM pg_stat_progress_basebackup p JOIN pg_stat_activity a USING (pid)"
                        " WHERE a.application_name = %s",
                        (self.app,),
                    ).fetchone()
                except Exception as exc:  # the watch must never break the backup it watches
                    log.debug("archive watch: query failed", extra={"p88": {"error": first_line(exc)}})
                    if conn is not None:
                        conn.close()
                    conn = None
                    continue
                if row is None or row[0] != WAITING_PHASE:
                    waiting_since = None
                    continue
                now = time.monotonic()
                if waiting_since is None:
                    waiting_since = now
                    log.info("backup data sent; the server waits for its WAL to be archived")
                    continue
                if now - waiting_since >= self.timeout:
                    state = _archiver(conn)
                    why = state.describe(before) if state else "pg_stat_archiver is not readable by this role"
                    self.failure = (
                        f"the server waited {now - waiting_since:.0f}s for this backup's WAL to be archived "
                        f"(--wal-timeout {self.timeout:.0f}); {why}"
                    )
                    log.error("stopping the base backup: its WAL is not being archived")
                    self.abort()
                    return
        finally:
            if conn is not None:
                conn.close()
