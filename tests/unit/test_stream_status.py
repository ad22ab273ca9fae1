"""Table tests for judging wal-stream's status file (core.wal.streamhealth): health means progress."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from p88backup.core.wal.streamhealth import judge, read_status

NOW = 1_800_000_000.0


def doc(**kw: Any) -> dict[str, Any]:
    """A streamer that is alive, connected and caught up 5 s ago, unless told otherwise."""
    base: dict[str, Any] = {
        "updated_at": NOW - 2,
        "pid": 42,
        "started_at": NOW - 3600,
        "stopped_at": None,
        "connected": True,
        "timeline": 2,
        "server_lsn": "0/9000100",
        "archived_lsn": "0/9000000",
        "lag_bytes": 256,
        "last_progress_at": NOW - 5,
        "last_shipped": "000000020000000000000008",
        "last_shipped_at": NOW - 600,
        "last_error": None,
        "last_error_at": None,
    }
    base.update(kw)
    return base


@pytest.mark.parametrize(
    ("status", "healthy", "says"),
    [
        pytest.param(doc(), True, "streaming on timeline 2: 256 bytes behind", id="caught-up"),
        # Quiet database: nothing shipped for hours, but the archive is within a segment of the server.
        pytest.param(doc(last_shipped_at=NOW - 7 * 3600), True, "caught up 5s ago", id="quiet-database"),
        pytest.param(None, False, "no status.json", id="no-file"),
        pytest.param({"connected": True}, False, "no updated_at", id="foreign-file"),
        pytest.param(doc(updated_at=NOW - 600), False, "last written 10m ago", id="process-dead"),
        # Its loop writes every 5 s: a minute without a write is a stuck loop, even if max_age is larger.
        pytest.param(doc(updated_at=NOW - 90), False, "last written 90s ago", id="loop-stuck"),
        pytest.param(doc(stopped_at=NOW - 30, connected=False), False, "stopped 30s ago", id="stopped"),
        # Issue 3: alive (heartbeat fresh) but every connection fails: not healthy.
        pytest.param(
            doc(
                connected=False,
                last_error="cannot connect to PostgreSQL at 127.0.0.1:9/postgres: Connection refused",
                last_error_at=NOW - 3,
            ),
            False,
            "not streaming from PostgreSQL: cannot connect",
            id="refused-but-alive",
        ),
        pytest.param(doc(connected=False, last_progress_at=None), False, "not connected yet", id="never-connected"),
        # Connected, shipping now and then, but falling behind for longer than max_age.
        pytest.param(
            doc(last_progress_at=NOW - 900, lag_bytes=5 << 30, last_shipped_at=NOW - 20),
            False,
            "not archiving: 5368709120 bytes behind the server",
            id="falling-behind",
        ),
        pytest.param(doc(last_progress_at=None, lag_bytes=None), False, "never caught up", id="not-yet-caught-up"),
        pytest.param(
            doc(last_progress_at=NOW - 300, last_error="pg_receivewal exited", last_error_at=NOW - 290),
            False,
            "last error: pg_receivewal exited",
            id="stuck-with-error",
        ),
    ],
)
def test_judge(status: dict[str, Any] | None, healthy: bool, says: str) -> None:
    verdict = judge(status, now=NOW, max_age=120)
    assert verdict.healthy is healthy
    assert says in verdict.reason


def test_max_age_is_the_progress_window() -> None:
    status = doc(last_progress_at=NOW - 100)
    assert judge(status, now=NOW, max_age=120).healthy
    assert not judge(status, now=NOW, max_age=60).healthy


@pytest.mark.parametrize("content", ["", "{not json", "[1, 2]"])
def test_unreadable_status_file_is_no_status(tmp_path: Path, content: str) -> None:
    (tmp_path / "status.json").write_text(content)
    assert read_status(tmp_path) is None
    assert not judge(read_status(tmp_path), now=NOW).healthy


def test_read_status(tmp_path: Path) -> None:
    (tmp_path / "status.json").write_text(json.dumps(doc()))
    assert read_status(tmp_path) == doc()
