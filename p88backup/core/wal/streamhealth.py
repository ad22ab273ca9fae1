"""``wal-stream``'s status file and the judgement of it (DESIGN §3.13: health is progress).

The streamer rewrites ``<spool>/status.json`` every few seconds; the time it
was written says only that the process is alive. Whether it is *archiving*
is a separate field: ``last_progress_at``, the last time the archive was
measured to be within a segment of the server's WAL position (a quiet
database writes no segments for hours, so "shipped something recently"
cannot be the test; being caught up can). A connection that fails is never
progress: ``connected`` is false and ``last_error`` says why.

:func:`judge` is pure (a table of cases in the unit tests); the CLI's
``status --component wal-stream`` reads the file and calls it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

STATUS_FILE = "status.json"
DEFAULT_MAX_AGE = 120.0  # seconds; the streamer measures its lag every 10 s
# The status is rewritten every 5 s by the streamer's own loop: older than this, the loop is stuck
# (or the process gone), whatever the file says.
ALIVE_WITHIN = 60.0


@dataclass(frozen=True)
class Verdict:
    healthy: bool
    reason: str


def default_spool(work_dir: Path) -> Path:
    """The spool of ``wal-stream`` without ``--spool``; ``status --component`` looks there too."""
    return work_dir / "wal-spool"


def read_status(spool: Path) -> dict[str, Any] | None:
    """The status document, or None if there is none (or it is not a JSON object)."""
    try:
        doc = json.loads((spool / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _ago(now: float, then: float) -> str:
    seconds = max(0, int(now - then))
    if seconds < 120:
        return f"{seconds}s ago"
    if seconds < 7200:
        return f"{seconds // 60}m ago"
    return f"{seconds // 3600}h ago"


def _num(doc: Mapping[str, Any], key: str) -> float | None:
    value = doc.get(key)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _lag_text(doc: Mapping[str, Any]) -> str:
    lag = doc.get("lag_bytes")
    if not isinstance(lag, int):
        return "lag unknown"
    return f"{lag} bytes behind the server (archived to {doc.get('archived_lsn')}, server at {doc.get('server_lsn')})"


def judge(doc: Mapping[str, Any] | None, *, now: float, max_age: float = DEFAULT_MAX_AGE) -> Verdict:
    """Healthy only if alive, connected and caught up within the last ``max_age`` seconds.

    Alive: the status was written within ``max_age`` and at most :data:`ALIVE_WITHIN` seconds ago.
    """
    if doc is None:
        return Verdict(False, f"no {STATUS_FILE} in the spool: wal-stream is not running there (or never started)")
    updated = _num(doc, "updated_at")
    if updated is None:
        return Verdict(False, f"{STATUS_FILE} has no updated_at: not written by this wal-stream")
    if doc.get("stopped_at") is not None:
        return Verdict(False, f"wal-stream stopped {_ago(now, float(doc['stopped_at']))}")
    if now - updated > min(max_age, ALIVE_WITHIN):
        return Verdict(False, f"wal-stream is not running: its status was last written {_ago(now, updated)}")
    error = doc.get("last_error")
    error_at = _num(doc, "last_error_at")
    error_text = f"{error} ({_ago(now, error_at)})" if error and error_at is not None else str(error or "")
    if not doc.get("connected"):
        return Verdict(False, "not streaming from PostgreSQL: " + (error_text or "not connected yet"))
    progress = _num(doc, "last_progress_at")
    if progress is None or now - progress > max_age:
        since = "never caught up since it started" if progress is None else f"last caught up {_ago(now, progress)}"
        shipped = doc.get("last_shipped")
        shipped_at = _num(doc, "last_shipped_at")
        parts = [f"not archiving: {_lag_text(doc)}", since]
        if shipped and shipped_at is not None:
            parts.append(f"last shipped {shipped} {_ago(now, shipped_at)}")
        if error_text:
            parts.append(f"last error: {error_text}")
        return Verdict(False, "; ".join(parts))
    return Verdict(
        True,
        f"streaming on timeline {doc.get('timeline')}: {_lag_text(doc)}, caught up {_ago(now, progress)}",
    )
