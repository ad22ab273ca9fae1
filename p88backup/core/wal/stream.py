"""``wal-stream``: continuous archiving over the replication protocol.

``pg_receivewal`` (with a replication slot, so the server keeps WAL until we
have it) writes segments into a local spool directory; each *completed*
file is pushed with exactly the guarantees of ``wal-push`` and only then
deleted from the spool. A crash at any point loses nothing: the spool keeps
what was not yet stored, and a re-push of an already stored file is an
identical-content no-op. This is how the compose sidecar archives without
changing the database image's ``archive_command``.

Before each start of ``pg_receivewal`` the streamer asks the server (over a
replication connection) for its timeline and that timeline's history, and
makes the spool agree with it (:mod:`p88backup.core.wal.spool`): after a
promotion - a restored cluster taking over the address, or a standby
promoted - files of the abandoned branch are moved to ``<spool>/abandoned/``
(never deleted), the new timeline's ``.history`` file is archived before any
of its segments, and streaming starts at the fork point, so the new timeline
is archived from where it began (DESIGN §3.11). The slot is created with
``RESERVE_WAL``: the server keeps WAL from the moment the slot exists.

``<spool>/status.json`` (:mod:`p88backup.core.wal.streamhealth`) separates
"alive" from "archiving": see ``p88backup status --component wal-stream``.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from p88backup.core.wal import names as walnames
from p88backup.core.wal.archive import WalArchive
from p88backup.core.wal.spool import SpoolPlan, archived_position, caught_up, plan_spool
from p88backup.core.wal.streamhealth import STATUS_FILE
from p88backup.errors import ArchivingError, DatabaseError, P88Error, PgToolError, StorageError
from p88backup.pg.conn import ConnInfo
from p88backup.pg.proc import ToolProcess
from p88backup.pg.replication import replication_session
from p88backup.pg.tools import client_for

log = logging.getLogger(__name__)

ABANDONED_DIR = "abandoned"
HEARTBEAT_SECONDS = 5.0
# pg_receivewal's messages when the connection, not the tool, is the problem.
_CONNECTION_TROUBLE = (
    "connection to server",
    "could not connect",
    "server closed the connection",
    "terminated before stop point",
    "unexpected termination of replication stream",
    "could not receive data",
    "no pg_hba.conf entry",
    "authentication failed",
    "the database system is",  # starting up / shutting down / in recovery mode
)


@dataclass
class StreamStatus:
    """The fields of ``status.json`` (plus ``updated_at`` and ``pid``, added when written)."""

    started_at: float = field(default_factory=time.time)
    stopped_at: float | None = None
    connected: bool = False
    timeline: int | None = None
    streaming_from: str | None = None  # "0/4000000 on timeline 2": where this connection started
    server_lsn: str | None = None
    archived_lsn: str | None = None
    lag_bytes: int | None = None
    lag_measured_at: float | None = None
    last_progress_at: float | None = None  # last time the archive was within a segment of the server
    shipped: int = 0
    last_shipped: str | None = None
    last_shipped_at: float | None = None
    set_aside: list[str] = field(default_factory=list)  # files moved to <spool>/abandoned by this run
    restarts: int = 0
    last_error: str | None = None
    last_error_at: float | None = None
    last_error_code: int | None = None


def receivewal_failure(rc: int, stderr: str) -> P88Error:
    """The error for a ``pg_receivewal`` that exited with ``rc``; ``stderr`` is its last lines."""
    what = f"pg_receivewal exited with status {rc}" + (f": {stderr}" if stderr else "")
    if "not in this server's history" in stderr:
        return ArchivingError(
            what,
            hint="the server changed timelines; wal-stream compares the spool with its history again",
        )
    if "has already been removed" in stderr:
        return ArchivingError(
            what,
            hint="that WAL is gone from the server, so the archive has a gap: move the WAL files of the spool "
            "into its abandoned/ folder (wal-stream then streams from the server's current position) and take "
            "a base backup (p88backup basebackup)",
        )
    if any(s in stderr for s in _CONNECTION_TROUBLE):
        return DatabaseError(what, hint="is the server up, and may this role make replication connections?")
    return PgToolError(what)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class WalStreamer:
    def __init__(
        self,
        ci: ConnInfo,
        archive: WalArchive,
        spool: Path,
        *,
        slot: str,
        pg_bin_dir: Path | None = None,
        poll: float = 0.5,
        lag_every: float = 10.0,
        max_backoff: float = 60.0,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.ci, self.archive, self.spool, self.slot = ci, archive, spool, slot
        self.pg_bin_dir, self.poll, self.lag_every, self.max_backoff = pg_bin_dir, poll, lag_every, max_backoff
        self.stop = stop or threading.Event()
        self.sleep = sleep or (lambda s: self.stop.wait(s))
        self.status = StreamStatus()
        self.segment_size = walnames.DEFAULT_SEGMENT_SIZE
        self._baseline: int | None = None  # where the current pg_receivewal started: stored before it
        self._shipped_end: int | None = None  # end of the newest segment it completed and we stored
        self._last_write = 0.0

    # -- the loop -------------------------------------------------------------

    def run(self) -> StreamStatus:
        """Stream until ``stop`` is set (SIGTERM); reconnect with backoff."""
        self.spool.mkdir(parents=True, exist_ok=True)
        backoff = 1.0
        while not self.stop.is_set():
            began = time.monotonic()
            try:
                self.ship()  # leftovers of a previous run, and what the last pg_receivewal completed
                tool = self.prepare()
                self._stream_once(tool)
            except P88Error as exc:
                self._failed(exc, backoff)
            except OSError as exc:  # the spool: full, read-only, permissions
                self._failed(StorageError(f"spool {self.spool}: {exc}"), backoff)
            if self.stop.is_set():
                break
            if time.monotonic() - began > 30:
                backoff = 1.0  # it worked for a while: this is a new problem, retry soon
            self.status.restarts += 1
            self._pause(backoff)
            backoff = min(backoff * 2, self.max_backoff)
        self.status.connected = False
        try:
            self.ship()
        finally:
            self.status.stopped_at = time.time()
            self.write_status()
        log.info("wal-stream stopped", extra={"p88": {"shipped": self.status.shipped}})
        return self.status

    def _failed(self, exc: P88Error, retry_in: float) -> None:
        self.status.connected = False
        self.status.last_error, self.status.last_error_at = str(exc), time.time()
        self.status.last_error_code = int(exc.exit_code)
        extra: dict[str, object] = {"error": str(exc), "exit_code": int(exc.exit_code), "in_seconds": retry_in}
        if exc.hint:
            extra["hint"] = exc.hint
        log.error("wal-stream problem, will retry", extra={"p88": extra})
        self.write_status()

    def _pause(self, seconds: float) -> None:
        """Sleep, keeping the heartbeat going (a long backoff must not look like a dead process)."""
        deadline = time.monotonic() + seconds
        while not self.stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self.sleep(min(left, HEARTBEAT_SECONDS))
            self._heartbeat()

    # -- before each start of pg_receivewal -----------------------------------

    def prepare(self) -> str:
        """Ask the server where it is, make the spool agree, ensure the slot; return pg_receivewal's path."""
        lost = self._slot_lost()
        with replication_session(self.ci) as rs:
            info = rs.identify_system()
            history_text = rs.timeline_history(info.timeline)
            self.segment_size = rs.segment_size()
            if lost:
                rs.drop_slot(self.slot)
            if rs.create_physical_slot(self.slot):
                log.info("replication slot created, reserving WAL from now", extra={"p88": {"slot": self.slot}})
            slot = rs.read_slot(self.slot)
            major = rs.server_version_num // 10000
        tool = str(client_for("pg_receivewal", major, self.pg_bin_dir).path)
        try:
            history = walnames.parse_history(history_text)
        except walnames.WalNameError as exc:
            raise DatabaseError(f"the server's timeline history is not valid: {exc}") from None
        self.status.timeline = info.timeline

        archived = True
        if info.timeline > 1:
            # The new timeline's history goes to the archive before any of its segments: without it,
            # `latest` cannot follow this timeline and would replay the abandoned one.
            name = f"{info.timeline:08X}.history"
            archived = self.archive.find(name) is not None
            if not archived:
                tmp = self.spool / f".{name}.tmp"
                tmp.write_text(history_text)
                os.replace(tmp, self.spool / name)
                self.ship()

        if lost:
            self._after_lost_slot()
        plan = plan_spool(
            self._spool_names(),
            timeline=info.timeline,
            history=history,
            server_lsn=walnames.parse_lsn(info.flush_lsn),
            slot_lsn=walnames.parse_lsn(slot.restart_lsn) if slot and slot.restart_lsn else None,
            timeline_archived=archived,
            segment_size=self.segment_size,
        )
        self._apply(plan)
        return tool

    def _slot_lost(self) -> bool:
        """Was our slot invalidated (``max_slot_wal_keep_size``)? It then holds no WAL for us any more."""
        try:
            with self.ci.connect() as conn:
                row = conn.execute(
                    "SELECT wal_status FROM pg_replication_slots WHERE slot_name = %s", (self.slot,)
                ).fetchone()
        except Exception as exc:  # the replication connection that follows reports real trouble
            log.debug("cannot read the slot's state", extra={"p88": {"error": str(exc)}})
            return False
        return bool(row and row[0] == "lost")

    def _after_lost_slot(self) -> None:
        """The server removed WAL before it was archived: say so loudly, keep what the spool holds,
        and stream again from the server's position (the recreated slot's)."""
        names = [n for n in self._spool_names() if walnames.is_wal_name(n, None) and not n.endswith(".history")]
        if names:
            self._set_aside(names, "before an invalidated slot")
        message = (
            f"replication slot {self.slot!r} was invalidated: the server removed WAL before it was archived "
            "(max_slot_wal_keep_size), so the archive has a gap; the slot was recreated and archiving goes on "
            "from the server's current position"
        )
        log.error(message, extra={"p88": {"slot": self.slot, "set_aside": names}})
        self.status.last_error = message + ": take a new base backup now (p88backup basebackup)"
        self.status.last_error_at = time.time()
        self.status.last_error_code = int(ArchivingError.exit_code)

    def _set_aside(self, names: list[str], reason: str) -> None:
        for name in names:
            dest = self._move_aside(name)
            log.warning("spool file set aside", extra={"p88": {"file": name, "reason": reason, "moved_to": str(dest)}})
        _fsync_dir(self.spool / ABANDONED_DIR)
        _fsync_dir(self.spool)

    def _move_aside(self, name: str) -> Path:
        """Move a spool file into ``abandoned/``, never replacing an earlier one: each may hold WAL
        found nowhere else."""
        aside = self.spool / ABANDONED_DIR
        aside.mkdir(exist_ok=True)
        dest = aside / name
        n = 0
        while dest.exists():
            n += 1
            dest = aside / f"{name}.{n}"
        os.rename(self.spool / name, dest)
        self.status.set_aside.append(name)
        return dest

    def _spool_names(self) -> list[str]:
        return sorted(p.name for p in self.spool.iterdir() if p.is_file())

    def _apply(self, plan: SpoolPlan) -> None:
        if plan.set_aside:
            for item in plan.set_aside:
                dest = self._move_aside(item.name)
                log.warning(
                    "spool file set aside: not on the server's timeline history"
                    if item.reason == "off-history"
                    else "spool file set aside: a parent timeline's tail, superseded by the child's copy",
                    extra={
                        "p88": {
                            "file": item.name,
                            "reason": item.reason,
                            "moved_to": str(dest),
                            "server_timeline": self.status.timeline,
                            "fork_lsn": walnames.format_lsn(plan.fork_lsn) if plan.fork_lsn is not None else None,
                        }
                    },
                )
            _fsync_dir(self.spool / ABANDONED_DIR)
        if plan.seed is not None and not (self.spool / plan.seed).exists():
            # An empty file is one pg_receivewal fills from its start: this is where it will begin.
            (self.spool / plan.seed).touch()
        if plan.set_aside or plan.seed is not None:
            _fsync_dir(self.spool)
        # Positions are compared along the server's history: what an earlier connection shipped may lie
        # on a branch the server has left, so only this connection's start and shipments count.
        self._baseline, self._shipped_end = plan.start_lsn, None
        self.status.streaming_from = f"{walnames.format_lsn(plan.start_lsn)} on timeline {plan.start_timeline}"
        log.info(
            "streaming WAL",
            extra={"p88": {"from": self.status.streaming_from, "slot": self.slot, "spool": str(self.spool)}},
        )

    # -- one run of pg_receivewal ---------------------------------------------

    def _argv(self, tool: str) -> list[str]:
        return [
            tool,
            f"--directory={self.spool}",
            f"--slot={self.slot}",
            "--no-loop",
            "--no-password",
            "--synchronous",
            f"--dbname={self.ci.dsn()}",
        ]

    def _stream_once(self, tool: str) -> None:
        """Run pg_receivewal until it fails (raise) or ``stop`` is set (return)."""
        last_lag = float("-inf")
        with ToolProcess(self._argv(tool), env=self.ci.env(), stdout=subprocess.DEVNULL, what="pg_receivewal") as proc:
            self.status.connected = True
            self.write_status()
            while proc.proc.poll() is None and not self.stop.is_set():
                self.ship()
                now = time.monotonic()
                if now - last_lag >= self.lag_every:
                    self.measure_lag()
                    last_lag = now
                self._heartbeat()
                self.sleep(self.poll)
            if proc.proc.poll() is None:
                proc.proc.send_signal(signal.SIGINT)  # pg_receivewal's clean stop in every version
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                return
            rc = proc.wait()
        self.status.connected = False
        self.ship()
        raise receivewal_failure(rc, proc.stderr_text(3))

    # -- shipping and status --------------------------------------------------

    def ship(self) -> int:
        """Push every completed file in the spool, oldest first; delete each once stored."""
        shipped = 0
        for path in sorted(self.spool.iterdir()) if self.spool.exists() else []:
            try:
                f = walnames.classify(path.name, self.segment_size)
            except walnames.WalNameError:
                continue  # temp files, the status file, abandoned/
            if f.kind not in ("segment", "history"):
                continue  # .partial: the segment being received
            result = self.archive.push(path)
            path.unlink()
            shipped += 1
            now = time.time()
            self.status.shipped += 1
            self.status.last_shipped, self.status.last_shipped_at = path.name, now
            if f.segno is not None:
                end = (f.segno + 1) * self.segment_size
                self._shipped_end = max(end, self._shipped_end or 0)
            log.info(
                "archived" if not result.already_archived else "already archived (identical)",
                extra={"p88": {"file": path.name, "stored_bytes": result.stored_size}},
            )
            self._heartbeat()
        return shipped

    def measure_lag(self) -> None:
        """Bytes between the server's WAL position and what is archived; progress if within a segment."""
        try:
            with replication_session(self.ci) as rs:
                info = rs.identify_system()
        except P88Error as exc:
            log.warning("cannot measure lag", extra={"p88": {"error": str(exc)}})
            return
        now = time.time()
        server = walnames.parse_lsn(info.flush_lsn)
        archived = archived_position(
            self._spool_names(), shipped_end=self._shipped_end, baseline=self._baseline, segment_size=self.segment_size
        )
        was_caught_up = caught_up(self.status.lag_bytes, self.segment_size)
        self.status.timeline = info.timeline
        self.status.server_lsn = info.flush_lsn
        self.status.archived_lsn = walnames.format_lsn(archived) if archived is not None else None
        self.status.lag_bytes = max(0, server - archived) if archived is not None else None
        self.status.lag_measured_at = now
        is_caught_up = caught_up(self.status.lag_bytes, self.segment_size)
        if is_caught_up and self.status.connected:
            self.status.last_progress_at = now
        level = logging.INFO if is_caught_up else logging.WARNING
        if is_caught_up != was_caught_up or not is_caught_up:
            log.log(
                level,
                "wal-stream lag",
                extra={
                    "p88": {
                        "lag_bytes": self.status.lag_bytes,
                        "archived_lsn": self.status.archived_lsn,
                        "server_lsn": info.flush_lsn,
                    }
                },
            )
        self.write_status()

    def _heartbeat(self) -> None:
        if time.monotonic() - self._last_write >= HEARTBEAT_SECONDS:
            self.write_status()

    def write_status(self) -> None:
        """``<spool>/status.json``: a heartbeat (``updated_at``) plus what the streamer has achieved."""
        self._last_write = time.monotonic()
        doc = {"updated_at": time.time(), "pid": os.getpid(), **asdict(self.status)}
        tmp = self.spool / f".{STATUS_FILE}.tmp"
        try:
            tmp.write_text(json.dumps(doc))
            os.replace(tmp, self.spool / STATUS_FILE)
        except OSError as exc:  # a full disk must not stop archiving; the healthcheck will see a stale file
            log.warning("cannot write the status file", extra={"p88": {"error": str(exc)}})
