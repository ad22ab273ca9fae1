"""How fresh the WAL archive is: when it last received a file, and how far the server is ahead of it.

"Nothing archived for an hour" means one of two things: a quiet server that
wrote no WAL (healthy), or an archiver that stopped while the server kept
writing (DESIGN §3.13: unhealthy). Only the server's position tells them
apart, so when the database is reachable its ``pg_current_wal_lsn()`` is
compared with the end of the newest archived segment *on the server's
timeline history* (after a point-in-time restore the abandoned timeline's
segments may lie further ahead than the live one, and must not count).
Without a connection only the age is known, and the report says so.

:func:`newest_on_history` and :func:`archive_lag` are pure; :func:`measure`
combines a listing with an optional :func:`server_position`. ``status`` and
``wal-verify`` both report what :func:`measure` returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from p88backup.core.wal import names as walnames
from p88backup.errors import DatabaseError, P88Error

if TYPE_CHECKING:
    from p88backup.core.wal.archive import WalArchive
    from p88backup.pg.conn import ConnInfo
    from p88backup.storage.base import ObjectInfo


@dataclass(frozen=True)
class ServerPosition:
    """Where the server writes WAL now."""

    lsn: int
    timeline: int
    segment_size: int


@dataclass(frozen=True)
class WalFreshness:
    """The archive's newest file and, when the server was asked, how far behind it the archive is."""

    checked_at: datetime
    files: int
    """WAL files in the archive (segments, histories, partial and backup files)."""
    newest_archived_at: datetime | None
    """When the archive last received a file (the storage's time of the most recent one)."""
    newest_segment: str | None
    """Newest segment by position: on the server's history when the server was asked, else overall."""
    server: ServerPosition | None = None
    server_error: str | None = None
    """Why the server's position is unknown (no database configured, unreachable, a standby...)."""
    archived_lsn: int | None = None
    """End of ``newest_segment`` (0 when nothing on the server's history is archived)."""
    lag_bytes: int | None = None
    lag_segments: int | None = None
    """Segments the server has finished that are not in the archive."""

    @property
    def age_seconds(self) -> float | None:
        if self.newest_archived_at is None:
            return None
        return max(0.0, (self.checked_at - self.newest_archived_at).total_seconds())

    def as_dict(self) -> dict[str, object]:
        age = self.age_seconds
        return {
            "files": self.files,
            "newest_segment": self.newest_segment,
            "newest_archived_at": self.newest_archived_at.isoformat() if self.newest_archived_at else None,
            "newest_age_seconds": None if age is None else round(age),
            "server_lsn": walnames.format_lsn(self.server.lsn) if self.server else None,
            "server_timeline": self.server.timeline if self.server else None,
            "segment_size": self.server.segment_size if self.server else None,
            "archived_lsn": walnames.format_lsn(self.archived_lsn) if self.archived_lsn is not None else None,
            "lag_bytes": self.lag_bytes,
            "lag_segments": self.lag_segments,
            "server_error": self.server_error,
        }


def newest_on_history(
    segments: Iterable[str], history: list[walnames.HistoryEntry], timeline: int, segment_size: int
) -> str | None:
    """The newest of ``segments`` that recovery following ``timeline`` would read, or None.

    ``history`` is ``timeline``'s parsed ``.history`` (empty for timeline 1,
    or when it is not archived: then only ``timeline``'s own segments count).
    Names that do not fit ``segment_size`` are not this server's and are skipped.
    """
    best: tuple[int, str] | None = None
    for name in segments:
        try:
            tli, segno = walnames.parse_segment_name(name[:24], segment_size)
        except walnames.WalNameError:
            continue
        if tli > timeline or (best is not None and segno <= best[0]):
            continue
        read_from = walnames.timeline_of_segment_at(
            history, timeline, walnames.segment_start_lsn(segno, segment_size), segment_size
        )
        if read_from == tli:
            best = (segno, name[:24])
    return None if best is None else best[1]


def archive_lag(newest: str | None, server: ServerPosition) -> tuple[int, int, int]:
    """``(archived_lsn, lag_bytes, lag_segments)``: the end of ``newest`` and how far the server is past it.

    ``lag_segments`` counts the segments the server has finished and the
    archive lacks: 0 while the server writes the segment right after the
    newest archived one (a quiet server, or archiving keeping up).
    """
    size = server.segment_size
    if newest is None:
        archived, last_segno = 0, -1
    else:
        last_segno = walnames.parse_segment_name(newest, size)[1]
        archived = walnames.segment_start_lsn(last_segno + 1, size)
    server_segno = walnames.lsn_to_segno(server.lsn, size)
    return archived, max(0, server.lsn - archived), max(0, server_segno - last_segno - 1)


def server_position(conninfo: ConnInfo) -> ServerPosition:
    """The server's current WAL position (any role may ask). DatabaseError if unreachable or a standby."""
    import psycopg

    from p88backup.pg.conn import first_line

    with conninfo.connect() as conn:
        try:
            row: Any = conn.execute(
                "SELECT pg_is_in_recovery(),"
                " CASE WHEN NOT pg_is_in_recovery() THEN pg_current_wal_lsn()::text END,"
                " CASE WHEN NOT pg_is_in_recovery() THEN pg_walfile_name(pg_current_wal_lsn()) END,"
                " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
            ).fetchone()
        except psycopg.Error as exc:  # e.g. a statement_timeout: the position is unknown, not a crash
            raise DatabaseError(f"cannot read the WAL position of {conninfo.describe()}: {first_line(exc)}") from None
    in_recovery, lsn, walfile, segment_size = row
    if in_recovery:
        raise DatabaseError(f"{conninfo.describe()} is in recovery (a standby): it does not archive its own WAL")
    return ServerPosition(walnames.parse_lsn(lsn), int(walfile[:8], 16), int(segment_size))


def measure(
    archive: WalArchive,
    listing: Iterable[tuple[str, ObjectInfo]],
    *,
    now: datetime,
    conninfo: ConnInfo | None,
    no_server_reason: str = "no database_url configured",
) -> WalFreshness:
    """The archive's freshness from ``listing`` (``archive.objects()``), with the server's lag when
    ``conninfo`` is given and answers. A server that cannot be asked is not an error here: the
    report carries why, and callers judge by age alone."""
    files = list(listing)
    times = [obj.modified for _, obj in files if obj.modified is not None]
    segments = [name for name, _ in files if len(name) == 24]
    overall = max(segments, key=walnames.segment_sort_key) if segments else None
    newest_at = max(times, default=None)
    if conninfo is None:
        return WalFreshness(now, len(files), newest_at, overall, server_error=no_server_reason)
    try:
        server = server_position(conninfo)
    except P88Error as exc:
        return WalFreshness(now, len(files), newest_at, overall, server_error=str(exc))
    newest = newest_on_history(
        segments, _history(archive, files, server.timeline), server.timeline, server.segment_size
    )
    archived, lag_bytes, lag_segments = archive_lag(newest, server)
    return WalFreshness(
        now,
        len(files),
        newest_at,
        newest,
        server=server,
        archived_lsn=archived,
        lag_bytes=lag_bytes,
        lag_segments=lag_segments,
    )


def _history(archive: WalArchive, files: list[tuple[str, ObjectInfo]], timeline: int) -> list[walnames.HistoryEntry]:
    """``timeline``'s archived history, or [] when it has none we can read (then only its own segments count)."""
    if timeline == 1:
        return []
    wanted = f"{timeline:08X}.history"
    try:
        history = archive.histories([(n, o) for n, o in files if n == wanted]).get(timeline, [])
        walnames.timeline_of_lsn(history, timeline, 0)  # the same checks newest_on_history's lookups make
    except (P88Error, walnames.WalNameError):
        return []  # e.g. encrypted and no identity on this host, or not a history of this timeline
    return history
