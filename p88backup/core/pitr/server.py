"""The server of a restored data directory: start it, wait until recovery has
reached its target and promoted, stop it cleanly.

PostgreSQL refuses to run as root, so as root every ``pg_ctl`` runs as the
data directory's owner. Each start writes its own server log,
``log/p88backup-restore-<time>.log`` inside the data directory, and only
that file is read: logs of earlier restores travel inside base backups, and
an old "recovery stopping" line must never be reported as this run's.
"""

from __future__ import annotations

import logging
import os
import pwd
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from p88backup.core.wal import names as walnames
from p88backup.errors import PitrTargetError
from p88backup.pg.conn import ConnInfo, first_line
from p88backup.pg.proc import run_tool, stderr_tail
from p88backup.pg.tools import server_for

log = logging.getLogger(__name__)


# Connection errors that waiting will not cure (the others mean: starting up, still in recovery).
_NEVER_LETS_US_IN = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",  # role or database
    "authentication failed",
)


@dataclass
class Promotion:
    """What the promoted server says about the end of its recovery."""

    last_replayed_transaction: str | None
    lsn: str
    timeline: int
    stop_reason: str | None
    switchpoint: int | None = None  # where recovery ended and the new timeline began
    segment_size: int | None = None


class RestoredServer:
    def __init__(
        self,
        datadir: Path,
        *,
        owner: str | None,
        env: dict[str, str],
        port: int | None,
        pg_bin_dir: Path | None = None,
        timeout: float = 3600.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.datadir, self.owner, self.env, self.port = datadir, owner, env, port
        self.timeout, self.sleep = timeout, sleep
        major = int((datadir / "PG_VERSION").read_text().strip())
        self.pg_ctl = server_for("pg_ctl", major, pg_bin_dir).path
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S.%fZ")
        self.logfile = datadir / "log" / f"p88backup-restore-{stamp}.log"

    def _run(self, *args: str) -> subprocess.CompletedProcess[bytes]:
        """pg_ctl as the data directory's owner (when we are root: the server refuses to run as root)."""
        # pg_ctl's own -t bounds its wait; this bounds pg_ctl itself (DESIGN §3.13: every wait is bounded).
        return run_tool(
            [str(self.pg_ctl), *args], env=self.env, user=self.owner, check=False, timeout=self.timeout + 60
        )

    def start(self) -> None:
        self.logfile.parent.mkdir(exist_ok=True)
        self.logfile.touch()
        if self.owner:
            pw = pwd.getpwnam(self.owner)
            os.chown(self.logfile.parent, pw.pw_uid, pw.pw_gid)
            os.chown(self.logfile, pw.pw_uid, pw.pw_gid)
        r = self._run("-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", str(int(self.timeout)), "start")
        if r.returncode != 0:
            raise PitrTargetError(f"the restored server did not start: {self.log_problem() or stderr_tail(r.stderr)}")

    def wait_promoted(self, conninfo: ConnInfo | None) -> Promotion:
        """Poll until the server has left recovery; raise if it stops or the timeout passes."""
        ci = (conninfo or ConnInfo({"user": "postgres"})).with_db("postgres")
        ci = ConnInfo({**ci.params, "host": "localhost", "port": str(self.port or 5432)}, ci.password)
        deadline = time.monotonic() + self.timeout
        while True:
            if not (self.datadir / "postmaster.pid").exists():
                problem = self.log_problem() or "the server stopped"
                hint = f"see {self.logfile}"
                if "before configured recovery target was reached" in problem:
                    hint = (
                        "the archive holds no WAL past the target yet: wait until the WAL after it is "
                        "archived (or run SELECT pg_switch_wal() on the primary), or restore to --pitr latest; " + hint
                    )
                raise PitrTargetError(f"recovery failed: {problem}", hint=hint)
            try:
                with ci.connect() as conn:
                    if not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]:
                        row = conn.execute(
                            "SELECT pg_last_xact_replay_timestamp(), pg_current_wal_lsn()::text,"
                            " ('x' || substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8))::bit(32)::int,"
                            " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
                        ).fetchone()
                        return Promotion(
                            last_replayed_transaction=row[0].isoformat() if row[0] else None,
                            lsn=row[1],
                            timeline=row[2],
                            stop_reason=self.log_line("recovery stopping")
                            or self.log_line("last completed transaction"),
                            switchpoint=self.switchpoint(row[2]),
                            segment_size=int(row[3]),
                        )
            except Exception as exc:  # not accepting connections yet, unless it can never let us in
                if any(s in str(exc) for s in _NEVER_LETS_US_IN):
                    raise PitrTargetError(
                        f"the restored server refuses our connection: {first_line(exc)}",
                        hint="the restore connects to it as database_url's user (its pg_hba.conf and roles are "
                        f"the backup's); the server keeps running, see {self.logfile}",
                    ) from None
                log.debug("waiting for the restored server", extra={"p88": {"error": first_line(exc)}})
            if time.monotonic() > deadline:
                raise PitrTargetError(f"recovery did not finish within {self.timeout:.0f}s", hint=f"see {self.logfile}")
            self.sleep(0.5)

    def stop(self) -> None:
        """A fast shutdown (with its checkpoint); raise if it does not stop cleanly."""
        r = self._run("-D", str(self.datadir), "-m", "fast", "-w", "-t", str(int(min(self.timeout, 600))), "stop")
        if r.returncode != 0:
            raise PitrTargetError(f"the restored server did not stop cleanly: {stderr_tail(r.stderr)}")

    def switchpoint(self, timeline: int) -> int | None:
        """Where ``timeline`` began (the end of recovery), from its history file in pg_wal."""
        try:
            history = walnames.parse_history((self.datadir / "pg_wal" / f"{timeline:08X}.history").read_text())
        except (OSError, ValueError):
            return None
        return history[-1].switchpoint if history else None

    def log_line(self, needle: str) -> str | None:
        """The last server log line containing ``needle`` (its message part)."""
        try:
            lines = self.logfile.read_text(errors="replace").splitlines()
        except OSError:
            return None
        hits = [ln.split(":  ", 1)[-1] for ln in lines if needle in ln]
        return hits[-1] if hits else None

    def log_problem(self) -> str | None:
        return self.log_line("FATAL:") or self.log_line("PANIC:")
