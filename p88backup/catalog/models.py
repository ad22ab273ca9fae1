"""Manifest models: the versioned JSON that describes each backup.

``schema_version`` is bumped on any incompatible change; readers refuse a
version they do not know rather than misreading it. Manifests hold no
secrets: recipients are public keys, URLs are never stored.
"""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

if TYPE_CHECKING:
    from p88backup.pg.conn import ServerInfo
    from p88backup.stream import Codec

SCHEMA_VERSION: Literal[1] = 1


class _Model(BaseModel):
    # Validators are built on first use, not at import: `dump` imports this before
    # pg_dump starts and every millisecond there is wall time (bench/dump_bench.py).
    model_config = ConfigDict(extra="forbid", defer_build=True)


class StoredObject(_Model):
    """One object in storage, as written."""

    key: str
    size: int = Field(ge=0, description="stored bytes")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="of the stored bytes")
    raw_size: int | None = Field(None, ge=0, description="bytes before compression/encryption")


class Encoding(_Model):
    compression: Literal["zstd"] = "zstd"
    level: int = 3
    encryption: Literal["age"] | None = None
    recipients: list[str] = Field(default_factory=list, description="age public keys")


class DatabaseDump(_Model):
    name: str
    format: Literal["custom", "directory"]
    objects: list[StoredObject]
    size: int = Field(0, description="database size on the server, bytes")
    owner: str | None = None
    encoding: str | None = None
    collate: str | None = None
    ctype: str | None = None
    row_counts: dict[str, int] = Field(default_factory=dict)
    row_counts_kind: Literal["exact", "estimate", "off"] = "exact"


class _ManifestBase(_Model):
    schema_version: Literal[1] = SCHEMA_VERSION
    id: str
    started_at: datetime
    finished_at: datetime
    server_version: str
    server_version_num: int
    system_identifier: str | None = None
    tool_version: str = Field(description="version of the PostgreSQL tool that wrote it")
    p88backup_version: str
    encoding: Encoding
    host: str = ""

    @property
    def objects(self) -> list[StoredObject]:  # pragma: no cover - overridden
        raise NotImplementedError

    @property
    def stored_bytes(self) -> int:
        return sum(o.size for o in self.objects)


class DumpManifest(_ManifestBase):
    kind: Literal["dump"] = "dump"
    snapshot_time: datetime = Field(description="server clock when the dump's snapshot was taken")
    databases: list[DatabaseDump]
    globals: StoredObject | None = None

    @property
    def objects(self) -> list[StoredObject]:
        objs = [o for db in self.databases for o in db.objects]
        if self.globals is not None:
            objs.append(self.globals)
        return objs

    def database(self, name: str | None) -> DatabaseDump:
        if name is None:
            if len(self.databases) != 1:
                names = ", ".join(d.name for d in self.databases)
                raise LookupError(f"backup {self.id} holds several databases ({names}); pick one")
            return self.databases[0]
        for db in self.databases:
            if db.name == name:
                return db
        raise LookupError(f"backup {self.id} has no database {name!r}")


class BaseBackupManifest(_ManifestBase):
    kind: Literal["basebackup"] = "basebackup"
    timeline: int
    start_lsn: str
    stop_lsn: str
    start_wal: str
    stop_wal: str
    wal_segment_size: int = Field(
        16 * 1024 * 1024,
        ge=1024 * 1024,
        le=1024 * 1024 * 1024,
        description="bytes per WAL segment of the cluster (initdb --wal-segsize): what WAL names mean;"
        " manifests written before it was recorded are from 16 MiB clusters",
    )
    start_time: datetime
    stop_time: datetime = Field(description="server clock, read after the backup ended (never before it)")
    data_size: int = Field(0, description="bytes of the data directory")
    tablespaces: dict[str, str] = Field(default_factory=dict, description="oid -> original path")
    files: list[StoredObject]
    backup_manifest: StoredObject | None = None
    end_snapshot: str | None = Field(
        None,
        description="pg_current_snapshot() (xmin:xmax:xip) taken after the backup ended: transactions it shows "
        "as finished committed before the backup was consistent, so an xid target needs an older backup",
    )

    @property
    def objects(self) -> list[StoredObject]:
        objs = list(self.files)
        if self.backup_manifest is not None:
            objs.append(self.backup_manifest)
        return objs


Manifest = Annotated[DumpManifest | BaseBackupManifest, Field(discriminator="kind")]


# -- restore drills -------------------------------------------------------------------------


class DrillCheckResult(_Model):
    """One check a drill ran on its scratch server, or why it did not run."""

    name: str
    kind: Literal["row_counts", "sql", "amcheck"]
    database: str | None = None
    status: Literal["passed", "failed", "skipped"]
    detail: str = ""
    seconds: float = 0.0


class DrillRun(_Model):
    """One drill: the latest dump, or the latest base backup + WAL, restored into a scratch cluster."""

    kind: Literal["dump", "pitr"]
    backup_id: str | None = Field(None, description="the dump or base backup restored (None: none was chosen)")
    ok: bool
    error: str | None = Field(None, description="why the restore itself failed, when it did")
    server_major: int | None = None
    port: int | None = None
    databases: list[str] = Field(default_factory=list, description="databases restored (dump) or checked (pitr)")
    source_now: datetime = Field(description="the source's clock when this drill's restore started")
    newest_restorable: datetime | None = Field(
        None, description="dump: its snapshot time; pitr: the last replayed commit (pg_last_xact_replay_timestamp)"
    )
    newest_restorable_basis: str = ""
    rto_seconds: float | None = Field(
        None, description="start of the restore until the server answered with row counts and SQL checks passed"
    )
    rpo_seconds: float | None = Field(None, description="source_now minus newest_restorable")
    restore_seconds: float | None = None
    checks_seconds: float = 0.0
    amcheck_seconds: float = Field(0.0, description="pg_amcheck, after the RTO clock stopped")
    setup_seconds: float = Field(0.0, description="drill overhead before the restore: space check, initdb, start")
    cleanup_seconds: float = Field(0.0, description="drill overhead after: stopping and removing the scratch cluster")
    lsn: str | None = None
    timeline: int | None = None
    checks: list[DrillCheckResult] = Field(default_factory=list)

    @property
    def failed_checks(self) -> list[DrillCheckResult]:
        return [c for c in self.checks if c.status == "failed"]


class DrillSource(_Model):
    """What the drill saw of the production server (read only)."""

    clock: Literal["production", "drill host"] = Field(description="whose clock source_now comes from")
    note: str | None = Field(None, description="why the drill host's clock was used")
    databases_before: list[str] | None = None
    databases_after: list[str] | None = None


class DrillReport(_Model):
    """A drill's report: ``drills/<id>/report.json``, written once after the scratch clusters are gone."""

    schema_version: Literal[1] = SCHEMA_VERSION
    kind: Literal["drill"] = "drill"
    id: str
    started_at: datetime
    finished_at: datetime
    ok: bool
    host: str = ""
    p88backup_version: str
    source: DrillSource
    drills: list[DrillRun]


def warm_up() -> None:
    """Build the manifest validators now (e.g. in a thread while data streams)."""
    for model in (StoredObject, Encoding, DatabaseDump, DumpManifest, BaseBackupManifest):
        model.model_rebuild()


def manifest_fields(
    bid: str, started: datetime, finished: datetime, info: ServerInfo, tool_version: str, codec: Codec
) -> dict[str, Any]:
    """The fields every manifest has (:class:`_ManifestBase`), for dumps and base backups alike."""
    import socket

    from p88backup import __version__

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
