"""``wal-stream``: continuous archiving over the replication protocol.

``pg_receivewal`` (with a replication slot, so the server keeps WAL until we
have it) writes segments into a local spool directory; each *completed*
file is pushed with exactly the guarantees of ``wal-push`` and only then
deleted from the spool. A crash at any point loses nothing: the spool keeps
what was not yet stored, and a re-push of an already stored file is an
identical-content no-op. This is how the compose sidecar archives without
changing the database image's ``archive_command``.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from p88backup.core.wal import names as walnames
from p88backup.core.wal.archive import WalArchive
from p88backup.errors import P88Error
from p88backup.pg.conn import ConnInfo, first_line
from p88backup.pg.proc import ToolProcess
from p88backup.pg.tools import client_for

log = logging.getLogger(__name__)


@dataclass
class StreamStatus:
    shipped: int = 0
    last_shipped: str | None = None
    last_shipped_at: float | None = None
    lag_bytes: int | None = None
    restarts: int = 0
    errors: list[str] = field(default_factory=list)


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
        lag_every: float = 30.0,
        max_backoff: float = 60.0,
        stop: threading.Event | None = None,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        self.ci, self.archive, self.spool, self.slot = ci, archive, spool, slot
        self.pg_bin_dir, self.poll, self.lag_every, self.max_backoff = pg_bin_dir, poll, lag_every, max_backoff
        self.stop = stop or threading.Event()
        self.sleep = sleep or (lambda s: self.stop.wait(s))
        self.status = StreamStatus()

    def _tool(self) -> str:
        with self.ci.connect() as conn:
            major = int(conn.execute("SHOW server_version_num").fetchone()[0]) // 10000
        return str(client_for("pg_receivewal", major, self.pg_bin_dir).path)

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

    def ensure_slot(self, tool: str) -> None:
        r = subprocess.run(
            [
                tool,
                "--create-slot",
                "--if-not-exists",
                f"--slot={self.slot}",
                "--no-password",
                f"--dbname={self.ci.dsn()}",
            ],
            capture_output=True,
            text=True,
            env=self.ci.env(),
        )
        if r.returncode != 0:
            raise P88Error(
                f"cannot create replication slot {self.slot!r}: {r.stderr.strip()}",
                hint="the role needs REPLICATION and pg_hba.conf must allow replication connections",
            )

    def run(self) -> StreamStatus:
        """Stream until ``stop`` is set (SIGTERM); reconnect with backoff."""
        self.spool.mkdir(parents=True, exist_ok=True)
        backoff = 1.0
        tool: str | None = None
        self.ship()  # leftovers of a previous run first
        while not self.stop.is_set():
            try:
                tool = tool or self._tool()
                self.ensure_slot(tool)
                log.info("wal-stream connected", extra={"p88": {"slot": self.slot, "spool": str(self.spool)}})
                ran_for = self._stream_once(tool)
                if ran_for > 30:
                    backoff = 1.0
            except P88Error as exc:
                self.status.errors = [*self.status.errors, str(exc)][-10:]
                log.error("wal-stream problem, will retry", extra={"p88": {"error": str(exc), "in_seconds": backoff}})
            if self.stop.is_set():
                break
            self.write_status(False)
            self.status.restarts += 1
            self.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff)
        self.ship()
        log.info("wal-stream stopped", extra={"p88": {"shipped": self.status.shipped}})
        return self.status

    def write_status(self, connected: bool) -> None:
        """``<spool>/status.json``, rewritten every few seconds: a heartbeat for healthchecks."""
        doc = {"updated_at": time.time(), "connected": connected, "pid": os.getpid(), **asdict(self.status)}
        tmp = self.spool / ".status.json.tmp"
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.spool / "status.json")

    def _stream_once(self, tool: str) -> float:
        started = time.monotonic()
        last_lag = last_status = 0.0
        with ToolProcess(self._argv(tool), env=self.ci.env(), stdout=subprocess.DEVNULL, what="pg_receivewal") as proc:
            while proc.proc.poll() is None and not self.stop.is_set():
                self.ship()
                now = time.monotonic()
                if now - last_lag >= self.lag_every:
                    self.report_lag()
                    last_lag = now
                if now - last_status >= 5:
                    self.write_status(True)
                    last_status = now
                self.sleep(self.poll)
            if proc.proc.poll() is None:
                proc.proc.terminate()  # pg_receivewal flushes and exits cleanly on SIGTERM
                proc.wait(30)
                return time.monotonic() - started
            rc = proc.wait()
        self.ship()
        raise P88Error(f"pg_receivewal exited with status {rc}: {proc.stderr_text(3)}")

    def ship(self) -> int:
        """Push every completed file in the spool, oldest first; delete each once stored."""
        shipped = 0
        for path in sorted(self.spool.iterdir()) if self.spool.exists() else []:
            try:
                kind = walnames.classify(path.name).kind
            except walnames.WalNameError:
                continue  # .partial of the segment being received, temp files
            if kind not in ("segment", "history"):
                continue
            result = self.archive.push(path)
            path.unlink()
            shipped += 1
            self.status.shipped += 1
            self.status.last_shipped, self.status.last_shipped_at = path.name, time.time()
            log.info(
                "archived" if not result.already_archived else "already archived (identical)",
                extra={"p88": {"file": path.name, "stored_bytes": result.stored_size}},
            )
        return shipped

    def report_lag(self) -> None:
        """Bytes between the server's current WAL position and what is archived."""
        if self.status.last_shipped is None or len(self.status.last_shipped) != 24:
            return
        try:
            with self.ci.connect() as conn:
                current = walnames.parse_lsn(
                    conn.execute(
                        "SELECT CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() "
                        "ELSE pg_current_wal_lsn() END::text"
                    ).fetchone()[0]
                )
        except P88Error as exc:
            log.warning("cannot measure lag", extra={"p88": {"error": str(exc)}})
            return
        except Exception as exc:
            log.warning("cannot measure lag", extra={"p88": {"error": first_line(exc)}})
            return
        _, segno = walnames.parse_segment_name(self.status.last_shipped)
        archived_to = walnames.segment_start_lsn(segno + 1)
        self.status.lag_bytes = max(0, current - archived_to)
        log.info(
            "wal-stream lag",
            extra={"p88": {"lag_bytes": self.status.lag_bytes, "last_archived": self.status.last_shipped}},
        )
