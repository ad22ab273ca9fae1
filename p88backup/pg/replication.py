"""The few replication-protocol commands ``wal-stream`` needs, over psycopg.

A physical replication connection (``replication=true``) is what the backup
role is allowed (REPLICATION, not superuser), and it answers the questions
``pg_receivewal`` cannot be asked: which timeline the server is on, that
timeline's history file (where it forked), where a slot's WAL begins, and
the segment size. It also creates the slot with ``RESERVE_WAL``, so WAL is
kept from the moment the slot exists, not from its first use.

A walsender speaks only the simple query protocol, and its text columns
arrive without a client encoding; the commands go through libpq's
``PQexec`` (``pgconn.exec_``) and values are read as raw bytes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from p88backup.errors import DatabaseError
from p88backup.pg.conn import ConnInfo

DUPLICATE_OBJECT = "42710"
_SLOT_RE = re.compile(r"[a-z0-9_]{1,63}")
_SIZE_RE = re.compile(r"(\d+)\s*(B|kB|MB|GB)?")
_UNITS = {None: 1, "B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3}


class ReplicationCommandError(DatabaseError):
    """The server refused a replication command; ``sqlstate`` says why."""

    def __init__(self, message: str, sqlstate: str | None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.sqlstate = sqlstate


@dataclass(frozen=True)
class SystemInfo:
    """``IDENTIFY_SYSTEM``: the server's current timeline and WAL flush position."""

    system_identifier: str
    timeline: int
    flush_lsn: str


@dataclass(frozen=True)
class SlotInfo:
    """``READ_REPLICATION_SLOT``: where a slot's retained WAL begins (None: not yet reserved)."""

    restart_lsn: str | None
    restart_timeline: int | None


class ReplicationSession:
    """One replication connection; use :func:`replication_session`."""

    def __init__(self, conn: Any, ci: ConnInfo) -> None:
        self.conn, self.ci = conn, ci

    @property
    def server_version_num(self) -> int:
        return int(self.conn.info.server_version)

    def _rows(self, command: str) -> list[list[bytes | None]]:
        import psycopg
        from psycopg import pq

        try:
            res = self.conn.pgconn.exec_(command.encode())
        except psycopg.Error as exc:  # the connection itself failed (libpq returned no result)
            raise ReplicationCommandError(f"{command.split()[0]} failed on {self.ci.describe()}: {exc}", None) from None
        if res.status not in (pq.ExecStatus.TUPLES_OK, pq.ExecStatus.COMMAND_OK):
            raw = res.error_field(pq.DiagnosticField.SQLSTATE)
            message = (res.error_message or b"").decode(errors="replace").strip().splitlines()
            raise ReplicationCommandError(
                f"{command.split()[0]} failed on {self.ci.describe()}: {message[0] if message else 'no message'}",
                raw.decode() if raw else None,
            )
        return [[res.get_value(r, c) for c in range(res.nfields)] for r in range(res.ntuples)]

    def identify_system(self) -> SystemInfo:
        row = self._rows("IDENTIFY_SYSTEM")[0]
        return SystemInfo(_text(row[0]), int(_text(row[1])), _text(row[2]))

    def timeline_history(self, timeline: int) -> str:
        """The text of ``timeline``'s history file (timeline 1 has none: empty)."""
        if timeline == 1:
            return ""
        return _text(self._rows(f"TIMELINE_HISTORY {int(timeline)}")[0][1])

    def segment_size(self) -> int:
        """``wal_segment_size`` in bytes (the walsender answers SHOW)."""
        text = _text(self._rows("SHOW wal_segment_size")[0][0])
        m = _SIZE_RE.fullmatch(text.strip())
        if m is None:
            raise DatabaseError(f"unexpected wal_segment_size from {self.ci.describe()}: {text!r}")
        return int(m[1]) * _UNITS[m[2]]

    def create_physical_slot(self, name: str) -> bool:
        """Create slot ``name`` reserving WAL now; False if it already exists."""
        if _SLOT_RE.fullmatch(name) is None:
            raise DatabaseError(f"invalid replication slot name {name!r} (lower-case letters, digits, _)")
        try:
            self._rows(f'CREATE_REPLICATION_SLOT "{name}" PHYSICAL RESERVE_WAL')
        except ReplicationCommandError as exc:
            if exc.sqlstate == DUPLICATE_OBJECT:
                return False
            raise DatabaseError(
                f"cannot create replication slot {name!r}: {exc}",
                hint="the role needs the REPLICATION attribute and max_replication_slots must leave room",
            ) from None
        return True

    def drop_slot(self, name: str) -> None:
        """Drop slot ``name`` (it must not be in use)."""
        if _SLOT_RE.fullmatch(name) is None:
            raise DatabaseError(f"invalid replication slot name {name!r} (lower-case letters, digits, _)")
        try:
            self._rows(f'DROP_REPLICATION_SLOT "{name}"')
        except ReplicationCommandError as exc:
            raise DatabaseError(f"cannot drop replication slot {name!r}: {exc}") from None

    def read_slot(self, name: str) -> SlotInfo | None:
        """Where the slot's WAL begins (PostgreSQL 15 and later; None before, or if absent)."""
        if self.server_version_num < 150000:
            return None
        rows = self._rows(f'READ_REPLICATION_SLOT "{name}"')
        if not rows or rows[0][0] is None:
            return None
        lsn, tli = rows[0][1], rows[0][2]
        return SlotInfo(_text(lsn) if lsn is not None else None, int(_text(tli)) if tli is not None else None)


@contextmanager
def replication_session(ci: ConnInfo) -> Iterator[ReplicationSession]:
    """A physical replication connection (needs REPLICATION and a ``replication`` line in pg_hba.conf)."""
    conn = ci.connect(replication="true")
    try:
        yield ReplicationSession(conn, ci)
    finally:
        conn.close()


def _text(value: bytes | None) -> str:
    if value is None:
        raise DatabaseError("a replication command returned NULL where a value was expected")
    return value.decode()
