"""Where things live in storage (pure functions, no I/O).

::

    p88backup.json                         the storage marker, written once by ``p88backup init``
    dumps/<id>/manifest.json               written last: a backup exists once this does
    dumps/<id>/globals.sql.zst[.age]       pg_dumpall --globals-only
    dumps/<id>/<db>.pgdump.zst[.age]       pg_dump custom format
    dumps/<id>/<db>.dir/<file>.zst[.age]   pg_dump directory format, file by file
    basebackups/<id>/manifest.json
    basebackups/<id>/base.tar.zst[.age]    pg_basebackup tar
    basebackups/<id>/backup_manifest.zst[.age]  PostgreSQL's backup_manifest, also on its own
    wal/<timeline>/<segment>.zst[.age]     archived WAL, one object per file
    wal/<timeline>/<segment>.digest.json   SHA-256 of an encrypted WAL file's raw bytes
    restorepoints/<name>.json              restore points (LSN, time) for --pitr name:
    drills/<id>/report.json                a restore drill's report (written once, at its end)

Every key p88backup writes is built here. Standard library only, and
``urllib`` only when a name needs encoding: the archive fast path
(``wal-push``, once per WAL segment) builds its keys here too.

Backup ids are UTC timestamps, ``20261127T021500Z``: they sort by time and a
person can read them. Two backups in the same second get ``-01``, ``-02``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

Kind = Literal["dump", "basebackup"]
WAL_PREFIX = "wal/"
WAL_SUFFIXES = (".zst", ".zst.age")
WAL_DIGEST_SUFFIX = ".digest.json"
KIND_DIRS: dict[str, str] = {"dump": "dumps", "basebackup": "basebackups"}
MANIFEST = "manifest.json"
ID_RE = re.compile(r"^\d{8}T\d{6}Z(-\d{2})?$")
# Its presence says "this is p88backup's storage, set up on purpose": writers and readers
# refuse a root or prefix without it (an unmounted volume, a wrong prefix). See storage/base.py.
STORAGE_MARKER = "p88backup.json"
# Drill reports are not backups: their own folder and file name, so nothing that lists
# backups (list, expire's orphan scan, retention) ever mistakes a drill for one.
DRILLS_PREFIX = "drills/"
DRILL_REPORT = "report.json"


def backup_id(when: datetime, taken: set[str] | frozenset[str] = frozenset()) -> str:
    """A sortable UTC id for ``when``, unique among ``taken``."""
    base = when.astimezone(UTC).strftime("%Y%m%dT%H%M%SZ")
    if base not in taken:
        return base
    for n in range(1, 100):
        candidate = f"{base}-{n:02d}"
        if candidate not in taken:
            return candidate
    raise ValueError(f"more than 99 backups in the second {base}")


def id_time(backup_id: str) -> datetime:
    """The UTC time encoded in a backup id."""
    return datetime.strptime(backup_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def is_backup_id(text: str) -> bool:
    return bool(ID_RE.match(text))


def backup_dir(kind: Kind, bid: str) -> str:
    return f"{KIND_DIRS[kind]}/{bid}/"


def manifest_key(kind: Kind, bid: str) -> str:
    return f"{KIND_DIRS[kind]}/{bid}/{MANIFEST}"


def parse_manifest_key(key: str) -> tuple[Kind, str] | None:
    """``dumps/<id>/manifest.json`` -> ("dump", id); anything else -> None."""
    parts = key.split("/")
    if len(parts) != 3 or parts[2] != MANIFEST or not is_backup_id(parts[1]):
        return None
    for kind, d in KIND_DIRS.items():
        if parts[0] == d:
            return kind, parts[1]  # type: ignore[return-value]
    return None


def drill_report_key(drill_id: str) -> str:
    """``drills/<id>/report.json``: the report of drill ``drill_id`` (ids are backup-style timestamps)."""
    return f"{DRILLS_PREFIX}{drill_id}/{DRILL_REPORT}"


def parse_drill_report_key(key: str) -> str | None:
    """``drills/<id>/report.json`` -> id; anything else -> None."""
    parts = key.split("/")
    if len(parts) != 3 or f"{parts[0]}/" != DRILLS_PREFIX or parts[2] != DRILL_REPORT:
        return None
    return parts[1] if is_backup_id(parts[1]) else None


def db_slug(name: str) -> str:
    """Database names may hold any character; keys may not. Percent-encode."""
    from urllib.parse import quote

    return quote(name, safe="").replace("%", "=") or "="


def db_from_slug(slug: str) -> str:
    from urllib.parse import unquote

    return unquote(slug.replace("=", "%"))


def dump_key(bid: str, database: str, suffix: str) -> str:
    return f"dumps/{bid}/{db_slug(database)}.pgdump{suffix}"


def dump_dir_key(bid: str, database: str, filename: str, suffix: str) -> str:
    return f"dumps/{bid}/{db_slug(database)}.dir/{filename}{suffix}"


def globals_key(bid: str, suffix: str) -> str:
    return f"dumps/{bid}/globals.sql{suffix}"


def restore_point_key(name: str) -> str:
    return f"restorepoints/{db_slug(name)}.json"


def base_tar_key(bid: str, suffix: str) -> str:
    return f"{backup_dir('basebackup', bid)}base.tar{suffix}"


def backup_manifest_key(bid: str, suffix: str) -> str:
    """PostgreSQL's own ``backup_manifest`` of a base backup, stored beside its tar."""
    return f"{backup_dir('basebackup', bid)}backup_manifest{suffix}"


def wal_key(name: str, suffix: str) -> str:
    """``wal/<timeline>/<name><suffix>`` for a WAL archive file name (segment, history, ...)."""
    return f"{WAL_PREFIX}{name[:8]}/{name}{suffix}"


def wal_digest_key(name: str) -> str:
    """The digest record stored beside an encrypted WAL file (see ``core/wal/archive.py``)."""
    return f"{WAL_PREFIX}{name[:8]}/{name}{WAL_DIGEST_SUFFIX}"


def wal_file_keys(name: str) -> list[str]:
    """Every key that may belong to WAL file ``name``, in the order to delete them.

    The stored file in either encoding first, its digest record last: an
    interrupted delete then leaves at worst a digest without its file, which
    only makes a later push of *different* content under that name fail.
    """
    return [wal_key(name, suffix) for suffix in WAL_SUFFIXES] + [wal_digest_key(name)]


def wal_name_of_key(key: str) -> str | None:
    """The WAL file name a key under ``wal/`` stores, or None for anything else (digest records too)."""
    base = key.rsplit("/", 1)[-1]
    for suffix in sorted(WAL_SUFFIXES, key=len, reverse=True):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return None
