"""Prometheus metrics: one registry, the documented series, written where they are read.

Every series p88backup exports is defined here, once. One-shot commands
record what they did (:func:`job_finished`, :func:`drill_result`, ...) and,
when ``metrics_textfile`` is set, the registry is written to that file for
node-exporter's textfile collector; ``schedule`` serves the same registry on
``/metrics``.

prometheus-client is imported on first use, never at import time: the
archive fast path must not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

_STATE: dict[str, Any] = {}


def registry() -> CollectorRegistry:
    """The process-wide registry with every p88backup series defined (created on first use)."""
    if "registry" not in _STATE:
        from prometheus_client import CollectorRegistry, Counter, Gauge

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
    registry_: CollectorRegistry = _STATE["registry"]
    return registry_


def job_finished(
    job: str, *, ok: bool, seconds: float, stored_bytes: int | None = None, now: float | None = None
) -> None:
    """Record one run of ``job`` (dump, basebackup, expire, verify, wal-verify, drill, ...)."""
    import time

    registry()
    _STATE["last_duration"].labels(job).set(seconds)
    if ok:
        _STATE["last_success"].labels(job).set(time.time() if now is None else now)
        if stored_bytes is not None:
            _STATE["last_bytes"].labels(job).set(stored_bytes)
    else:
        _STATE["failures"].labels(job).inc()


def drill_result(kind: str, *, ok: bool, rto_seconds: float | None, rpo_seconds: float | None) -> None:
    """Record a drill's outcome (``kind``: dump or pitr)."""
    registry()
    _STATE["drill_success"].labels(kind).set(1 if ok else 0)
    if rto_seconds is not None:
        _STATE["drill_rto"].labels(kind).set(rto_seconds)
    if rpo_seconds is not None:
        _STATE["drill_rpo"].labels(kind).set(rpo_seconds)
