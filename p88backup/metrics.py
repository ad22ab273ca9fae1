"""Prometheus metrics: one registry, the documented series, written where they are read.

Every series p88backup exports is defined here, once (README "Metrics"
lists them). One-shot commands record what they did (:func:`job_finished`,
:func:`drill_result`, :func:`wal_freshness`) and ``cli.main.run`` writes the
registry to ``metrics_textfile`` for node-exporter's textfile collector
(:func:`write_textfile`); ``schedule`` serves the same registry on
``/metrics``.

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
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.metrics_core import Metric

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
            "p88backup_drill_rto_seconds", "Time to restore measured by the last drill", ["kind"], registry=reg
        )
        _STATE["drill_rpo"] = Gauge(
            "p88backup_drill_rpo_seconds", "Data the last drill could not restore, in seconds", ["kind"], registry=reg
        )
        _STATE["drill_success"] = Gauge(
            "p88backup_drill_success", "1 if the last drill of this kind passed, else 0", ["kind"], registry=reg
        )
        # Unlabelled: NaN until measured, so a server that serves the registry never shows a made-up 0.
        _STATE["wal_age"] = Gauge(
            "p88backup_newest_wal_age_seconds",
            "Seconds since the WAL archive last received a file, when last measured",
            registry=reg,
        )
        _STATE["wal_time"] = Gauge(
            "p88backup_newest_wal_timestamp_seconds",
            "Unix time the WAL archive last received a file (stays true in a textfile that is not rewritten)",
            registry=reg,
        )
        _STATE["wal_lag"] = Gauge(
            "p88backup_wal_archive_lag_bytes",
            "Bytes of WAL the server has written past the end of the newest archived segment (NaN: unknown)",
            registry=reg,
        )
        for name in ("wal_age", "wal_time", "wal_lag"):
            _STATE[name].set(math.nan)
    registry_: CollectorRegistry = _STATE["registry"]
    return registry_


def job_finished(
    job: str, *, ok: bool, seconds: float, stored_bytes: int | None = None, now: float | None = None
) -> None:
    """Record one run of ``job`` (dump, basebackup, expire, verify, wal-verify, drill, ...)."""
    registry()
    _STATE["last_duration"].labels(job).set(seconds)
    _TOUCHED.add("p88backup_last_duration_seconds")
    if ok:
        _STATE["last_success"].labels(job).set(time.time() if now is None else now)
        _TOUCHED.add("p88backup_last_success_timestamp_seconds")
        if stored_bytes is not None:
            _STATE["last_bytes"].labels(job).set(stored_bytes)
            _TOUCHED.add("p88backup_last_bytes")
    else:
        _STATE["failures"].labels(job).inc()
        _TOUCHED.add("p88backup_job_failures")


def drill_result(kind: str, *, ok: bool, rto_seconds: float | None, rpo_seconds: float | None) -> None:
    """Record a drill's outcome (``kind``: dump or pitr)."""
    registry()
    _STATE["drill_success"].labels(kind).set(1 if ok else 0)
    _TOUCHED.add("p88backup_drill_success")
    if rto_seconds is not None:
        _STATE["drill_rto"].labels(kind).set(rto_seconds)
        _TOUCHED.add("p88backup_drill_rto_seconds")
    if rpo_seconds is not None:
        _STATE["drill_rpo"].labels(kind).set(rpo_seconds)
        _TOUCHED.add("p88backup_drill_rpo_seconds")


def wal_freshness(*, age_seconds: float | None, newest_at: float | None, lag_bytes: int | None) -> None:
    """Record the WAL archive's freshness (``status``, ``wal-verify``); None: unknown (NaN)."""
    registry()
    for name, family, value in (
        ("wal_age", "p88backup_newest_wal_age_seconds", age_seconds),
        ("wal_time", "p88backup_newest_wal_timestamp_seconds", newest_at),
        ("wal_lag", "p88backup_wal_archive_lag_bytes", lag_bytes),
    ):
        _STATE[name].set(math.nan if value is None else value)
        _TOUCHED.add(family)


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
    import fcntl

    # Read-only is enough for flock, and works for a lock file another user created.
    fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{lock_path} is held by another process for more than {timeout:g}s") from None
                time.sleep(0.02)
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
