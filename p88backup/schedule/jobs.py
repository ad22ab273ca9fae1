"""What each ``[schedule]`` job runs, and one run of it: child processes, a log line at each
start and end, the job metrics.

A job is one ``p88backup`` command (``dump`` is followed by ``verify`` of the
dump it made, as the cron files do). Each runs as a child process rather
than in the daemon's threads (see :mod:`p88backup.schedule.scheduler` for
why), with its stderr going where the daemon's goes, so its own log lines
reach the container log; its stdout (``--json`` where the command has it) is
read here for the dump's id, the bytes stored and a drill's results.

The stdout goes to an unlinked temporary file, not a pipe, and the run ends
when the child itself has exited. With a pipe, the run would end only when
*every* holder of the pipe's write end had closed it: a tool the child
started in its own session (pg_dump, a server) that inherited it and
outlived a killed child would keep the job "running" (its next runs skipped
as overruns) for as long as that process lived.

The job lock of each command (``dump``, ``basebackup``, ``expire``,
``drill``, ``reindex-*``) keeps a second run out even when it comes from
outside the daemon (an operator, a cron line left behind): that run ends
with exit 4, reported like any other failure.
"""

from __future__ import annotations

import json
import logging
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from p88backup.errors import ExitCode
from p88backup.schedule.children import Children

log = logging.getLogger(__name__)

# Schedule key ([schedule] in the config) -> the command it runs. Keys follow the settings
# (wal_verify), commands and the job label of the metrics follow the CLI (wal-verify).
JOBS: dict[str, tuple[str, ...]] = {
    "dump": ("dump", "--json"),
    "basebackup": ("basebackup", "--json"),
    "expire": ("expire",),
    "wal_verify": ("wal-verify",),
    "drill": ("drill", "--json"),
    "reindex": ("reindex",),
}
# A job's stdout is its --json document (a drill report is the largest, some kB); more is not read.
MAX_STDOUT = 16 * 1024 * 1024


@dataclass(frozen=True)
class Outcome:
    """One finished command of a job."""

    command: str
    returncode: int
    seconds: float
    stdout: bytes = b""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def result(self) -> str:
        return result_name(self.returncode)

    def document(self) -> dict[str, Any] | None:
        """The command's ``--json`` output, or None when there is none (or it is not a JSON object)."""
        try:
            doc = json.loads(self.stdout)
        except ValueError:
            return None
        return doc if isinstance(doc, dict) else None


def result_name(returncode: int) -> str:
    """``ok``, the exit code's name (``locked``, ``interrupted``, ``storage``...) or how it was killed."""
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    try:
        return ExitCode(returncode).name.lower().replace("_", "-")
    except ValueError:
        return f"exit {returncode}"


def follow_up(key: str, outcome: Outcome) -> tuple[str, ...] | None:
    """The command that follows a successful one: ``verify`` of the dump just made."""
    if key != "dump" or not outcome.ok:
        return None
    doc = outcome.document() or {}
    backup_id = doc.get("id")
    return ("verify", "--kind", "dump", backup_id if isinstance(backup_id, str) and backup_id else "latest")


def stored_bytes(outcome: Outcome) -> int | None:
    """What a dump or base backup stored (their ``--json`` says)."""
    value = (outcome.document() or {}).get("stored_bytes")
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def drill_results(outcome: Outcome) -> list[tuple[str, bool, float | None, float | None]]:
    """(kind, ok, RTO, RPO) of each drill in a ``drill --json`` report (also printed when a drill failed)."""
    out: list[tuple[str, bool, float | None, float | None]] = []
    for run in (outcome.document() or {}).get("drills") or []:
        if not isinstance(run, dict) or run.get("kind") not in ("dump", "pitr"):
            continue

        def number(name: str, run: dict[str, Any] = run) -> float | None:
            value = run.get(name)
            return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

        out.append((run["kind"], run.get("ok") is True, number("rto_seconds"), number("rpo_seconds")))
    return out


class JobRunner:
    """Runs jobs (called from the scheduler's worker threads) and knows which are running since when."""

    def __init__(
        self,
        children: Children,
        base_argv: Sequence[str],
        *,
        on_finished: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.children, self.base_argv = children, list(base_argv)
        self.on_finished = on_finished
        self.clock = clock
        self._lock = threading.Lock()
        self._since: dict[str, float] = {}

    def running_since(self, key: str) -> float | None:
        """When (monotonic) the running run of ``key`` started, or None."""
        with self._lock:
            return self._since.get(key)

    def running(self) -> list[str]:
        with self._lock:
            return sorted(self._since)

    def run(self, key: str) -> None:
        """One run of the job ``key``: its command, then the follow-up if there is one."""
        with self._lock:
            self._since[key] = self.clock()
        try:
            outcome = self._command(key, JOBS[key])
            follow = follow_up(key, outcome) if outcome is not None else None
            if follow is not None:
                self._command(key, follow)
        finally:
            with self._lock:
                self._since.pop(key, None)
            if self.on_finished is not None:
                self.on_finished(key)

    def _command(self, key: str, args: tuple[str, ...]) -> Outcome | None:
        command = args[0]
        try:
            out = tempfile.TemporaryFile(prefix="p88backup-job-")  # noqa: SIM115  # closed by the with below
        except OSError as exc:  # no room for its output ($TMPDIR full or read-only)
            self._not_started(key, command, exc)
            return None
        with out:
            try:
                proc = self.children.spawn([*self.base_argv, *args], role=command, stdout=out)
            except OSError as exc:  # no process could be made (EAGAIN, EMFILE...)
                self._not_started(key, command, exc)
                return None
            if proc is None:
                log.info("job not started: the scheduler is stopping", extra={"p88": {"job": command, "schedule": key}})
                return None
            started = self.clock()
            log.info(
                "job started",
                extra={"p88": {"job": command, "schedule": key, "pid": proc.pid, "args": list(args[1:])}},
            )
            try:
                returncode = proc.wait()  # the child itself: whatever it left behind holds no pipe of ours
            finally:
                self.children.reap(proc)
            seconds = self.clock() - started
            out.seek(0)
            stdout = out.read(MAX_STDOUT)
        outcome = Outcome(command, returncode, seconds, stdout)
        self._record(key, outcome, proc.pid)
        return outcome

    def _not_started(self, key: str, command: str, exc: OSError) -> None:
        """A run that could not even start: a failed run, said so."""
        from p88backup import metrics

        metrics.job_finished(command, ok=False, seconds=0.0)
        log.error("job could not start", extra={"p88": {"job": command, "schedule": key, "error": str(exc)}})

    def _record(self, key: str, outcome: Outcome, pid: int) -> None:
        from p88backup import metrics

        size = stored_bytes(outcome)
        metrics.job_finished(outcome.command, ok=outcome.ok, seconds=outcome.seconds, stored_bytes=size)
        if outcome.command == "drill":
            for kind, ok, rto, rpo in drill_results(outcome):
                metrics.drill_result(kind, ok=ok, rto_seconds=rto, rpo_seconds=rpo)
        fields: dict[str, Any] = {
            "job": outcome.command,
            "schedule": key,
            "pid": pid,
            "seconds": round(outcome.seconds, 2),
            "result": outcome.result,
            "exit_code": outcome.returncode,
        }
        doc = outcome.document() or {}
        if outcome.command in ("dump", "basebackup") and isinstance(doc.get("id"), str):
            fields["id"] = doc["id"]
        if size is not None:
            fields["stored_bytes"] = size
        if outcome.ok:
            level = logging.INFO
        elif outcome.returncode in (ExitCode.INTERRUPTED, -signal.SIGKILL) and self.children.closed:
            level = logging.WARNING  # aborted by our own stop: said, not an alarm
        else:
            level = logging.ERROR
        log.log(level, "job finished", extra={"p88": fields})
