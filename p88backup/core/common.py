"""What every backup kind shares: server facts, storing an encoded object,
and the manifest fields common to dumps and base backups."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from p88backup import __version__
from p88backup.catalog.models import Encoding, StoredObject
from p88backup.pg.tools import major_of
from p88backup.storage import Readable, Storage
from p88backup.stream import Codec, CountingReader, HashingReader, encode


@dataclass
class ServerInfo:
    version: str
    version_num: int
    system_identifier: str | None
    superuser: bool

    @property
    def major(self) -> int:
        return major_of(self.version_num)


def store(storage: Storage, key: str, src: Readable, codec: Codec) -> StoredObject:
    """Encode ``src`` into ``key``; return what the manifest records about it."""
    raw = CountingReader(src)
    stored = HashingReader(encode(raw, codec))
    storage.put(key, stored, overwrite=False)
    return StoredObject(key=key, size=stored.size, sha256=stored.hexdigest(), raw_size=raw.size)


def server_info(conn: Any) -> ServerInfo:
    row = conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int,"
        " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
    ).fetchone()
    sysid: str | None = None
    try:
        sysid = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
    except Exception:  # needs privileges we may not have; it is only informational
        pass
    return ServerInfo(row[0].split()[0], row[1], sysid, bool(row[2]))


def manifest_fields(
    bid: str, started: datetime, finished: datetime, info: ServerInfo, tool_version: str, codec: Codec
) -> dict[str, Any]:
    """The fields of every manifest (catalog.models._ManifestBase)."""
    return {
        "id": bid,
        "started_at": started,
        "finished_at": finished,
        "server_version": info.version,
        "server_version_num": info.version_num,
        "system_identifier": info.system_identifier,
        "tool_version": tool_version,
        "p88backup_version": __version__,
        "encoding": Encoding(
            level=codec.level, encryption="age" if codec.encrypted else None, recipients=list(codec.recipient_keys)
        ),
        "host": socket.gethostname(),
    }
