"""Restore points: ``pg_create_restore_point`` plus a record of its LSN in storage, so that
``restore --pitr name:LABEL`` can pick the base backup that precedes it."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from datetime import UTC, datetime

from p88backup.catalog import layout
from p88backup.core.wal import names as walnames
from p88backup.errors import ConflictError, ObjectExistsError, ObjectNotFoundError
from p88backup.pg.conn import ConnInfo
from p88backup.storage import Storage


def create_restore_point(
    ci: ConnInfo, storage: Storage, name: str, clock: Callable[[], datetime] = lambda: datetime.now(UTC)
) -> dict[str, object]:
    """pg_create_restore_point + a record of its LSN, so PITR can pick the right base backup."""
    key = layout.restore_point_key(name)
    try:
        storage.stat(key)
        raise ConflictError(f"restore point {name!r} already exists", hint="restore points need unique names")
    except ObjectNotFoundError:
        pass
    with ci.connect() as conn:
        lsn = conn.execute("SELECT pg_create_restore_point(%s)::text", (name,)).fetchone()[0]
        segment = conn.execute("SELECT pg_walfile_name(%s::pg_lsn)", (lsn,)).fetchone()[0]
        conn.execute("SELECT pg_switch_wal()")  # so the restore point reaches the archive now
    record = {
        "name": name,
        "lsn": lsn,
        "segment": segment,
        "timeline": int(segment[:8], 16),
        "created_at": clock().isoformat(),
    }
    try:
        storage.put(key, io.BytesIO(json.dumps(record, indent=2).encode()), overwrite=False)
    except ObjectExistsError:
        raise ConflictError(f"restore point {name!r} already exists") from None
    return record


def restore_point_lsn(storage: Storage, name: str) -> int | None:
    """The LSN recorded for restore point ``name``, or None if p88backup did not record it."""
    try:
        with storage.open(layout.restore_point_key(name)) as fh:
            return walnames.parse_lsn(json.loads(fh.read())["lsn"])
    except ObjectNotFoundError:
        return None
