"""Prometheus metrics: one registry, the documented series, written where they are read.

Every series p88backup exports is defined here, once (README "Metrics"
lists them). One-shot commands record what they did (:func:`job_finished`,
:func:`drill_result`, :func:`wal_freshness`, :func:`status_report`) and
``cli.main.run`` writes the registry to ``metrics_textfile`` for
node-exporter's textfile collector (:func:`write_textfile`); ``schedule``
serves the same registry on ``/metrics``, with its own verdict
(:func:`verdict_from`) and its status check's (:func:`status_report`,
:func:`status_check_failed`).

Alerts must not go quiet while protection has stopped, so:

- what the catalog says (the newest dump, base backup and drill report) is
  exported by every status check, not only by the process that ran the job:
  a restarted sidecar exports it again within its first check, and a drill
  run on another host counts;
- a status check that could not be made sets what it measures to NaN
  ("unknown", never the last good figure) and
  ``p88backup_status_check_success`` to 0; times (``*_timestamp_seconds``)
  are kept, since they stay true and ``time() - …`` keeps growing;
- "none at all" is a time of 0, so ``time() - …`` alerts on it too;
- a job's failure counter exists at 0 from its first success (and, in
  ``schedule``, from the start for every scheduled job), so that
  ``increase()`` sees the first failure.

The textfile is shared by every job that runs on the host, each a separate
process, so a write merges with what the file holds: series this process
did not touch are kept as they are, gauges it set replace the file's value,
counters add this process's increments to the file's total (a failed dump
after a good one: the failure count grows and the last success stays). The
file is replaced atomically (temp file + rename in its directory, so
node-exporter never reads half a file) under an exclusive lock on
``<textfile>.lock``, so two jobs finishing together cannot lose an update.

prometheus-client is imported on first use, never at import time: the
archive fast path (wal-push/wal-fetch) never imports this module's client.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

    from p88backup.core.status import StatusReport
    from p88backup.core.wal.freshness import WalFreshness

log = logging.getLogger(__name__)

_STATE: dict[str, Any] = {}
# Families this process set a value in: only those are merged into the textfile (an unlabelled
# gauge always has a sample, and an untouched one must not overwrite another job's value).
_TOUCHED: set[str] = set()
# Counter values already added to the textfile by this process (a second write adds only the rest).
_WRITTEN: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}

LOCK_TIMEOUT = 10.0  # seconds: another job's write takes milliseconds; a stuck holder must not hang a backup


def registry() -> CollectorRegistry:
    """The process-wide registry with every p88backup series defined (created on first use)."""
    if "registry" not in _STATE:
        import prometheus_client
        from prometheus_client import CollectorRegistry, Counter, Gauge

        # A *_created sample per counter child only adds noise to a textfile and to alerts.
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        reg = CollectorRegistry()
        _STATE["registry"] = reg
        _STATE["last_success"] = Gauge(
            "p88backup_last_success_timestamp_seconds",
            "Unix time of the last successful run of the job",
            ["job"],
            registry=reg,
        )
        _STATE["last_duration"] = Gauge(
            "p88backup_last_duration_seconds", "Wall time of the last run of the job", ["job"], registry=reg
        )
        _STATE["last_bytes"] = Gauge(
            "p88backup_last_bytes", "Bytes stored by the last successful run of the job", ["job"], registry=reg
        )
        _STATE["failures"] = Counter(
            "p88backup_job_failures", "Failed runs of the job", ["job"], registry=reg
        )  # exported as p88backup_job_failures_total
        _STATE["drill_rto"] = Gauge(
            "p88backup_drill_rto_seconds",
            "Time to restore measured by the last drill (NaN when it failed)",
            ["kind"],
            registry=reg,
        )
        _STATE["drill_rpo"] = Gauge(
            "p88backup_drill_rpo_seconds",
            "Data the last drill could not restore, in seconds (NaN when it failed)",
            ["kind"],
            registry=reg,
        )
        _STATE["drill_success"] = Gauge(
            "p88backup_drill_success", "1 if the last drill of this kind passed, else 0", ["kind"], registry=reg
        )
        # Unlabelled: NaN until measured, so a server that serves the registry never shows a made-up 0.
        _STATE["wal_age"] = Gauge(
            "p88backup_newest_wal_age_seconds",
            "Seconds since the WAL archive last received a file, when last measured (NaN: unknown)",
            registry=reg,
        )
        _STATE["wal_time"] = Gauge(
            "p88backup_newest_wal_timestamp_seconds",
            "Unix time the WAL archive last received a file (0: none; kept when a check fails)",
            registry=reg,
        )
        _STATE["wal_lag"] = Gauge(
            "p88backup_wal_archive_lag_bytes",
            "Bytes of WAL the server has written past the end of the newest archived segment (NaN: unknown)",
            registry=reg,
        )
        _STATE["newest_backup"] = Gauge(
            "p88backup_newest_backup_timestamp_seconds",
            "Unix time the newest complete backup (dump, basebackup) or drill report of the catalog finished (0: none)",
            ["kind"],
            registry=reg,
        )
        _STATE["check_ok"] = Gauge(
            "p88backup_check_ok",
            "1 if the health check passed, 0 if it failed, NaN when it could not be made",
            ["check"],
            registry=reg,
        )
        _STATE["check_success"] = Gauge(
            "p88backup_status_check_success",
            "1 if the last status check could read the catalog and the archive, 0 if it could not",
            registry=reg,
        )
        _STATE["healthy"] = Gauge(
            "p88backup_healthy",
            "1 if the verdict is healthy (schedule: /healthz; status: its exit 0), else 0",
            registry=reg,
        )
        for name in ("wal_age", "wal_time", "wal_lag", "check_success", "healthy"):
            _STATE[name].set(math.nan)
    registry_: CollectorRegistry = _STATE["registry"]
    return registry_


def _set(name: str, family: str, value: float | None, *labels: str) -> None:
    """Set a gauge (None: NaN, unknown) and mark its family for the textfile."""
    gauge = _STATE[name].labels(*labels) if labels else _STATE[name]
    gauge.set(math.nan if value is None else value)
    _TOUCHED.add(family)


def job_finished(
    job: str, *, ok: bool, seconds: float, stored_bytes: int | None = None, now: float | None = None
) -> None:
    """Record one run of ``job`` (dump, basebackup, expire, verify, wal-verify, drill, ...)."""
    registry()
    _set("last_duration", "p88backup_last_duration_seconds", seconds, job)
    if ok:
        _set("last_success", "p88backup_last_success_timestamp_seconds", time.time() if now is None else now, job)
        if stored_bytes is not None:
            _set("last_bytes", "p88backup_last_bytes", stored_bytes, job)
        # The failure counter exists at 0 from now on: a series whose first sample is already 1
        # has no increase, and increase(...) > 0 would miss the job's first failure.
        jobs_known([job])
    else:
        _STATE["failures"].labels(job).inc()
        _TOUCHED.add("p88backup_job_failures")


def jobs_known(jobs: Iterable[str]) -> None:
    """Create the failure counter of each of ``jobs`` (at 0, or as it is): ``schedule`` at start."""
    registry()
    for job in jobs:
        _STATE["failures"].labels(job)
    _TOUCHED.add("p88backup_job_failures")


def drill_result(kind: str, *, ok: bool, rto_seconds: float | None, rpo_seconds: float | None) -> None:
    """Record a drill's outcome (``kind``: dump or pitr).

    RTO and RPO are the last drill's: NaN when it failed (whatever it measured on the way) or did
    not measure them, never an earlier drill's figure that no longer holds.
    """
    registry()
    _set("drill_success", "p88backup_drill_success", 1 if ok else 0, kind)
    _set("drill_rto", "p88backup_drill_rto_seconds", rto_seconds if ok else None, kind)
    _set("drill_rpo", "p88backup_drill_rpo_seconds", rpo_seconds if ok else None, kind)


def wal_freshness(fresh: WalFreshness) -> None:
    """Record the WAL archive's freshness (``status``, ``wal-verify``, the daemon's status check)."""
    registry()
    newest = fresh.newest_archived_at
    _set("wal_age", "p88backup_newest_wal_age_seconds", fresh.age_seconds)
    _set("wal_time", "p88backup_newest_wal_timestamp_seconds", newest.timestamp() if newest is not None else 0.0)
    _set("wal_lag", "p88backup_wal_archive_lag_bytes", fresh.lag_bytes)


def status_report(report: StatusReport) -> None:
    """Record what a status check found: each check's verdict, the catalog's newest backups and
    drill report, the WAL archive's freshness; the check itself succeeded."""
    registry()
    facts = report.facts
    for kind, newest in (("dump", facts.dump), ("basebackup", facts.basebackup), ("drill", facts.drill)):
        when = newest.finished_at.timestamp() if newest is not None else 0.0
        _set("newest_backup", "p88backup_newest_backup_timestamp_seconds", when, kind)
    for check in report.verdict.checks:
        _set("check_ok", "p88backup_check_ok", 1 if check.ok else 0, check.name)
    wal_freshness(facts.wal)
    _set("check_success", "p88backup_status_check_success", 1)


def status_check_failed() -> None:
    """A status check could not be made (storage unreachable...): what it measures is unknown now.

    The checks' verdicts, the WAL age and the lag become NaN, so no alert reads an old "fine"
    from them; the times are kept (the archive did receive that file; ``time() - …`` grows).
    """
    from p88backup.core.health import CHECKS

    registry()
    for name in CHECKS:
        _set("check_ok", "p88backup_check_ok", None, name)
    _set("wal_age", "p88backup_newest_wal_age_seconds", None)
    _set("wal_lag", "p88backup_wal_archive_lag_bytes", None)
    _set("check_success", "p88backup_status_check_success", 0)


def verdict(healthy: bool) -> None:
    """Record a one-shot verdict (``status``)."""
    registry()
    _set("healthy", "p88backup_healthy", 1 if healthy else 0)


def verdict_from(healthy: Callable[[], bool], checks: Mapping[str, Callable[[], bool]] | None = None) -> None:
    """``schedule``: ``p88backup_healthy`` (and ``p88backup_check_ok`` of each of ``checks``) are
    asked at each scrape, so /metrics says what /healthz would say at that moment."""
    registry()

    def value(ask: Callable[[], bool]) -> Callable[[], float]:
        def get() -> float:
            try:
                return 1.0 if ask() else 0.0
            except Exception:  # a scrape must not fail; unknown is NaN
                log.debug("verdict for /metrics failed", exc_info=True)
                return math.nan

        return get

    _STATE["healthy"].set_function(value(healthy))
    for name, ask in (checks or {}).items():
        _STATE["check_ok"].labels(name).set_function(value(ask))


def pending() -> bool:
    """Did this process record anything (is there anything to write)?"""
    return bool(_TOUCHED)


# -- the textfile ----------------------------------------------------------------------------

SampleKey = tuple[str, tuple[tuple[str, str], ...]]


def _key(name: str, labels: Mapping[str, str]) -> SampleKey:
    return name, tuple(sorted(labels.items()))


def merge(existing: Iterable[Metric], ours: Iterable[Metric], written: Mapping[SampleKey, float]) -> list[Metric]:
    """The families to write: ``existing`` (parsed from the file) updated with ``ours``.

    A counter's ``_total`` sample adds what this process counted since it last
    wrote (its value minus ``written``); every other sample of ours replaces
    the file's. Families and samples of the file that we do not have are kept.
    """
    from prometheus_client.metrics_core import Metric

    merged: dict[str, Metric] = {m.name: m for m in existing}
    for fam in ours:
        if not fam.samples:
            continue
        old = merged.get(fam.name)
        samples = {_key(s.name, s.labels): s for s in old.samples} if old is not None and old.type == fam.type else {}
        for s in fam.samples:
            k = _key(s.name, s.labels)
            value = s.value
            if fam.type == "counter" and s.name.endswith("_total"):
                value = value - written.get(k, 0.0) + (samples[k].value if k in samples else 0.0)
            samples[k] = s._replace(value=value)
        out = Metric(fam.name, fam.documentation, fam.type, fam.unit)
        out.samples = [samples[k] for k in sorted(samples)]
        merged[fam.name] = out
    return [merged[name] for name in sorted(merged)]


def render(families: Iterable[Metric]) -> bytes:
    """Prometheus text exposition format (what node-exporter's textfile collector reads)."""
    from prometheus_client import CollectorRegistry, generate_latest

    class _Fixed:
        def collect(self) -> Iterable[Metric]:
            return families

    reg = CollectorRegistry(auto_describe=False)
    reg.register(_Fixed())
    return generate_latest(reg)


def parse(text: str) -> list[Metric]:
    from prometheus_client.parser import text_string_to_metric_families

    return list(text_string_to_metric_families(text))


@contextmanager
def _locked(lock_path: Path, timeout: float) -> Iterator[None]:
    from p88backup.errors import ConfigError
    from p88backup.locks import flock_within, open_lock_file

    # The job locks' opener: root and the service user both write this textfile (cron runs jobs as
    # postgres, an operator as root), so the lock file is 0666 whatever the umask, and one that
    # another user made is opened read-only if need be (flock does not need write access).
    try:
        fd, _writable = open_lock_file(lock_path)
    except ConfigError as exc:
        # Its message is about job locks (P88_LOCK_DIR); say what failed here, with the OS's reason.
        cause = exc.__context__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
        raise PermissionError(f"cannot use the metrics lock {lock_path} (uid {os.geteuid()}): {reason}") from None
    try:
        if not flock_within(fd, timeout):
            raise TimeoutError(f"{lock_path} is held by another process for more than {timeout:g}s")
        yield
    finally:
        os.close(fd)  # releases the lock


def write_textfile(path: Path, *, lock_timeout: float = LOCK_TIMEOUT) -> None:
    """Merge what this process recorded into ``path`` (see the module docstring). Raises OSError,
    TimeoutError (the lock) on failure; the file is then unchanged."""
    reg = registry()
    ours = [fam for fam in reg.collect() if fam.name in _TOUCHED]
    with _locked(path.with_name(path.name + ".lock"), lock_timeout):
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        try:
            existing = parse(text)
        except ValueError as exc:
            # Ours to rewrite: a file that cannot be parsed must not stop every later job's metrics.
            log.warning(
                "metrics textfile unreadable, starting it afresh", extra={"p88": {"path": str(path), "error": str(exc)}}
            )
            existing = []
        body = render(merge(existing, ours, _WRITTEN))
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # not *.prom: node-exporter skips it
        try:
            with open(tmp, "wb") as fh:
                fh.write(body)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)  # node-exporter runs as another user
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    for fam in ours:
        if fam.type == "counter":
            for s in fam.samples:
                if s.name.endswith("_total"):
                    _WRITTEN[_key(s.name, s.labels)] = s.value


def reset() -> None:
    """Forget everything recorded (tests; one process, several runs)."""
    _STATE.clear()
    _TOUCHED.clear()
    _WRITTEN.clear()
