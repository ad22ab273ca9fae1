"""The backup catalog: manifests in storage, listed, read and written.

A backup is visible only through its manifest, and the manifest is written
last, create-only, after every object it names is stored (DESIGN §3.1).
Directories without a manifest are incomplete runs ("orphans"): never
listed as backups, removed by ``expire`` once older than the grace period.

A manifest is not trusted blindly: ``expire`` deletes what manifests name,
so a manifest must describe the directory it lies in — its id is the
directory's name, its kind the directory's kind, every object it names lies
under that directory, and a base backup's start segment is its start LSN's
on its own timeline at its recorded segment size. Anything else (an edited
manifest, a backup folder copied under another id) is refused on
:meth:`Catalog.read` and reported and skipped by :meth:`Catalog.scan`;
nothing it names is ever deleted.

Drill reports (``drills/<id>/report.json``) follow the same rules: written
once, create-only, after everything they describe is done; read back only
when the report's id is its folder's name and its kind is ``drill``.
"""

from __future__ import annotations

import functools
import io
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import TypeAdapter, ValidationError

from p88backup.catalog import layout
from p88backup.catalog.layout import Kind
from p88backup.catalog.models import (
    SCHEMA_VERSION,
    BaseBackupManifest,
    DrillReport,
    DumpManifest,
    Manifest,
    StoredObject,
)
from p88backup.catalog.objects import store
from p88backup.errors import NotFoundError, ObjectExistsError, ObjectNotFoundError, P88Error, VerifyError
from p88backup.storage import Readable, Storage
from p88backup.stream import Codec

log = logging.getLogger(__name__)


@functools.cache
def _adapter() -> TypeAdapter[DumpManifest | BaseBackupManifest]:
    return TypeAdapter(Manifest)


@dataclass(frozen=True)
class BadManifest:
    """A manifest (or drill report) that cannot be read or does not describe its own directory."""

    kind: Kind | Literal["drill"]
    id: str  # the directory's name
    key: str
    error: str


@dataclass(frozen=True)
class Orphan:
    kind: Kind
    id: str
    keys: tuple[str, ...]
    newest: datetime | None


class Catalog:
    def __init__(self, storage: Storage) -> None:
        self.storage = storage

    # -- reading ------------------------------------------------------------

    def _parse(self, kind: Kind, bid: str, key: str, raw: bytes) -> DumpManifest | BaseBackupManifest:
        doc = _versioned_json(key, raw)
        try:
            manifest = _adapter().validate_python(doc)
        except ValidationError as exc:
            raise VerifyError(f"manifest {key} is malformed: {exc.errors()[0]['msg']}") from None
        _check_belongs(manifest, kind, bid, key)
        return manifest

    def read(self, kind: Kind, bid: str) -> DumpManifest | BaseBackupManifest:
        """The manifest of backup ``bid``; VerifyError if it is unreadable or not this backup's."""
        key = layout.manifest_key(kind, bid)
        try:
            with self.storage.open(key) as fh:
                raw = fh.read()
        except ObjectNotFoundError:
            raise NotFoundError(f"no {kind} backup {bid} in {self.storage.url}") from None
        return self._parse(kind, bid, key, raw)

    def ids(self, kind: Kind) -> list[str]:
        """Ids of complete backups of ``kind``, oldest first."""
        out = []
        for obj in self.storage.list(layout.KIND_DIRS[kind] + "/"):
            parsed = layout.parse_manifest_key(obj.key)
            if parsed and parsed[0] == kind:
                out.append(parsed[1])
        return sorted(out)

    def scan(self, kind: Kind) -> tuple[list[DumpManifest | BaseBackupManifest], list[BadManifest]]:
        """Good manifests of ``kind`` (oldest first), and the bad ones, each logged at ERROR.

        Bad: unreadable, not describing its own directory (see the module
        docstring), or in a directory whose name is not a backup id.
        """
        found: list[DumpManifest | BaseBackupManifest] = []
        bad: list[BadManifest] = []
        prefix = layout.KIND_DIRS[kind] + "/"
        for obj in self.storage.list(prefix):
            parts = obj.key.split("/")
            if len(parts) != 3 or parts[2] != layout.MANIFEST:
                continue
            bid = parts[1]
            try:
                if not layout.is_backup_id(bid):
                    raise VerifyError(f"manifest {obj.key} is in a folder whose name is not a backup id")
                found.append(self.read(kind, bid))
            except NotFoundError:
                continue  # deleted since the listing
            except VerifyError as exc:
                bad.append(BadManifest(kind, bid, obj.key, str(exc)))
                log.error("skipping bad manifest", extra={"p88": {"key": obj.key, "error": str(exc)}})
        found.sort(key=lambda m: m.id)
        return found, bad

    def manifests(self, kind: Kind) -> list[DumpManifest | BaseBackupManifest]:
        """Complete backups of ``kind``, oldest first. Bad manifests are logged and skipped."""
        return self.scan(kind)[0]

    def dumps(self) -> list[DumpManifest]:
        return [m for m in self.manifests("dump") if isinstance(m, DumpManifest)]

    def basebackups(self) -> list[BaseBackupManifest]:
        return [m for m in self.manifests("basebackup") if isinstance(m, BaseBackupManifest)]

    def resolve(self, kind: Kind, ref: str) -> DumpManifest | BaseBackupManifest:
        """``latest`` or an id -> its manifest."""
        if ref == "latest":
            ids = self.ids(kind)
            if not ids:
                raise NotFoundError(f"no {kind} backups in {self.storage.url}")
            return self.read(kind, ids[-1])
        if not layout.is_backup_id(ref):
            raise NotFoundError(f"{ref!r} is not a backup id (like 20261127T021500Z) or 'latest'")
        return self.read(kind, ref)

    def taken_ids(self, kind: Kind) -> set[str]:
        """Every id in use, complete or not (a new backup must not reuse one)."""
        prefix = layout.KIND_DIRS[kind] + "/"
        return {o.key.split("/")[1] for o in self.storage.list(prefix) if o.key.count("/") >= 2}

    def orphans(self, kind: Kind) -> list[Orphan]:
        """Backup directories that have objects but no manifest."""
        prefix = layout.KIND_DIRS[kind] + "/"
        groups: dict[str, list[tuple[str, datetime | None]]] = {}
        complete: set[str] = set()
        for obj in self.storage.list(prefix):
            parts = obj.key.split("/")
            if len(parts) < 3:
                continue
            if len(parts) == 3 and parts[2] == layout.MANIFEST:
                complete.add(parts[1])
            groups.setdefault(parts[1], []).append((obj.key, obj.modified))
        out = []
        for bid, items in sorted(groups.items()):
            if bid in complete:
                continue
            times = [t for _, t in items if t is not None]
            out.append(Orphan(kind, bid, tuple(k for k, _ in items), max(times) if times else None))
        return out

    # -- drill reports --------------------------------------------------------

    def drill_ids(self) -> list[str]:
        """Ids of stored drill reports, oldest first."""
        found = (layout.parse_drill_report_key(o.key) for o in self.storage.list(layout.DRILLS_PREFIX))
        return sorted(i for i in found if i is not None)

    def read_drill(self, drill_id: str) -> DrillReport:
        """The report of drill ``drill_id``; VerifyError if it is unreadable or not this folder's."""
        key = layout.drill_report_key(drill_id)
        try:
            with self.storage.open(key) as fh:
                raw = fh.read()
        except ObjectNotFoundError:
            raise NotFoundError(f"no drill report {drill_id} in {self.storage.url}") from None
        doc = _versioned_json(key, raw)
        if isinstance(doc, dict) and doc.get("kind") != "drill":
            raise VerifyError(f"report {key} describes a {doc.get('kind')}, but lies among the drill reports")
        try:
            report = DrillReport.model_validate(doc)
        except ValidationError as exc:
            raise VerifyError(f"drill report {key} is malformed: {exc.errors()[0]['msg']}") from None
        if report.id != drill_id:
            raise VerifyError(
                f"drill report {key} is the report of drill {report.id}, not {drill_id}",
                hint="a drill folder copied or renamed by hand? remove the copy",
            )
        return report

    def scan_drills(self) -> tuple[list[DrillReport], list[BadManifest]]:
        """Good drill reports (oldest first) and the bad ones, each logged at ERROR (as :meth:`scan`)."""
        found: list[DrillReport] = []
        bad: list[BadManifest] = []
        for obj in self.storage.list(layout.DRILLS_PREFIX):
            parts = obj.key.split("/")
            if len(parts) != 3 or parts[2] != layout.DRILL_REPORT:
                continue
            did = parts[1]
            try:
                if not layout.is_backup_id(did):
                    raise VerifyError(f"drill report {obj.key} is in a folder whose name is not a drill id")
                found.append(self.read_drill(did))
            except NotFoundError:
                continue  # deleted since the listing
            except VerifyError as exc:
                bad.append(BadManifest("drill", did, obj.key, str(exc)))
                log.error("skipping bad drill report", extra={"p88": {"key": obj.key, "error": str(exc)}})
        found.sort(key=lambda r: r.id)
        return found, bad

    def drills(self) -> list[DrillReport]:
        """Stored drill reports, oldest first. Bad ones are logged and skipped."""
        return self.scan_drills()[0]

    def write_drill(self, report: DrillReport) -> str:
        """Store a drill report (create-only), as :meth:`write` stores a manifest."""
        return self._create(layout.drill_report_key(report.id), report.model_dump_json(indent=2).encode())

    def delete_drill(self, drill_id: str) -> None:
        self.storage.delete(layout.drill_report_key(drill_id))

    # -- writing ------------------------------------------------------------

    def write(self, manifest: DumpManifest | BaseBackupManifest) -> str:
        """Store the manifest (create-only): the backup becomes visible.

        If the key exists with these very bytes, an earlier attempt of this
        write landed (its response was lost): that is success. Different
        bytes raise ``ObjectExistsError``; they belong to another run.
        """
        return self._create(
            layout.manifest_key(manifest.kind, manifest.id), manifest.model_dump_json(indent=2).encode()
        )

    def _create(self, key: str, body: bytes) -> str:
        try:
            self.storage.put(key, io.BytesIO(body), overwrite=False)
        except ObjectExistsError:
            with self.storage.open(key) as fh:
                if fh.read() != body:
                    raise
            log.info("manifest already stored by an earlier attempt", extra={"p88": {"key": key}})
        return key

    def discard(self, kind: Kind, backup_id: str, keys: Sequence[str], *, manifest: bool) -> None:
        """Best effort: take back what a failed run stored (``expire`` reaps the rest).

        ``keys``: the objects the run stored. ``manifest``: the run tried to
        write its manifest. A failed manifest write may still have landed (a
        lost response, a failed directory fsync, an interrupt), so the
        manifest goes first, and if it cannot be removed the objects stay:
        a listed backup never names objects that are gone.
        """
        try:
            if manifest:
                self.storage.delete(layout.manifest_key(kind, backup_id))
            if keys:
                self.storage.delete_many(keys)
                log.info("removed what the failed run stored", extra={"p88": {"id": backup_id, "count": len(keys)}})
        except P88Error as exc:
            log.warning(
                "could not remove what the failed run stored; expire will",
                extra={"p88": {"id": backup_id, "error": str(exc)}},
            )

    def pending(self, kind: Kind, backup_id: str) -> PendingBackup:
        """Track one run until its manifest is written (see :class:`PendingBackup`)."""
        return PendingBackup(self, kind, backup_id)

    def delete(self, manifest: DumpManifest | BaseBackupManifest) -> None:
        """Manifest first, so a half-deleted backup is never listed as good."""
        self.storage.delete(layout.manifest_key(manifest.kind, manifest.id))
        self.storage.delete_many(o.key for o in manifest.objects)


def _versioned_json(key: str, raw: bytes) -> Any:
    """The JSON document in ``raw``, refused unless it is of the schema version this p88backup reads."""
    try:
        doc = json.loads(raw)
    except ValueError:
        raise VerifyError(f"manifest {key} is not valid JSON") from None
    version = doc.get("schema_version") if isinstance(doc, dict) else None
    if version != SCHEMA_VERSION:
        raise VerifyError(
            f"manifest {key} has schema version {version}; this p88backup reads {SCHEMA_VERSION}",
            hint="use a p88backup release that knows this version",
        )
    return doc


def _check_belongs(manifest: DumpManifest | BaseBackupManifest, kind: Kind, bid: str, key: str) -> None:
    """Refuse a manifest that does not describe the directory it was read from."""
    if manifest.kind != kind:
        raise VerifyError(f"manifest {key} describes a {manifest.kind}, but lies among the {kind} backups")
    if manifest.id != bid:
        raise VerifyError(
            f"manifest {key} is the manifest of backup {manifest.id}, not {bid}",
            hint="a backup folder copied or renamed by hand? remove the copy",
        )
    home = layout.backup_dir(kind, bid)
    for obj in manifest.objects:
        parts = obj.key.split("/")
        if not obj.key.startswith(home) or any(p in ("", ".", "..") for p in parts):
            # expire deletes what a manifest names: only ever inside its own folder
            raise VerifyError(f"manifest {key} names an object outside {home}: {obj.key}")
    if isinstance(manifest, BaseBackupManifest):
        _check_wal_fields(manifest, key)


def _check_wal_fields(m: BaseBackupManifest, key: str) -> None:
    """Retention trusts start_wal to say which WAL the backup needs: it must agree with start_lsn."""
    start = _lsn(m.start_lsn, key, "start_lsn")
    if _lsn(m.stop_lsn, key, "stop_lsn") < start:
        raise VerifyError(f"manifest {key}: stop_lsn {m.stop_lsn} is before start_lsn {m.start_lsn}")
    tli = f"{m.timeline:08X}"
    if not _SEGMENT_RE.fullmatch(m.start_wal) or m.start_wal[:8] != tli:
        raise VerifyError(f"manifest {key}: start_wal {m.start_wal} is not a segment of timeline {m.timeline}")
    if not _SEGMENT_RE.fullmatch(m.stop_wal) or m.stop_wal[:8] < tli:
        raise VerifyError(f"manifest {key}: stop_wal {m.stop_wal} is not a segment of timeline {m.timeline} or later")
    size = m.wal_segment_size
    if size & (size - 1):
        raise VerifyError(f"manifest {key}: wal_segment_size {size} is not a power of two")
    # XLogFileName: the LSN's high 32 bits, then the segment's number within them.
    expected = f"{tli}{start >> 32:08X}{(start & 0xFFFF_FFFF) // size:08X}"
    if m.start_wal != expected:
        raise VerifyError(
            f"manifest {key}: start_wal {m.start_wal} is not the segment of start_lsn {m.start_lsn} "
            f"({expected} with {size}-byte segments)"
        )


_SEGMENT_RE = re.compile(r"[0-9A-F]{24}")
_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")


def _lsn(text: str, key: str, what: str) -> int:
    m = _LSN_RE.fullmatch(text)
    if m is None:
        raise VerifyError(f"manifest {key}: {what} {text!r} is not an LSN")
    return int(m[1], 16) << 32 | int(m[2], 16)


class PendingBackup:
    """A run's stored objects until its manifest makes them a backup.

    Use it as a context manager around the run: store each object through
    it (:meth:`store`), write the manifest with :meth:`commit`. If
    the block raises, what the run stored is taken back
    (:meth:`Catalog.discard`), its manifest too if the write was attempted.
    """

    def __init__(self, catalog: Catalog, kind: Kind, backup_id: str) -> None:
        self.catalog, self.kind, self.backup_id = catalog, kind, backup_id
        self.keys: list[str] = []
        self._manifest_sent = False

    def store(self, key: str, src: Readable, codec: Codec) -> StoredObject:
        """Encode ``src`` into ``key`` (create-only) and remember it as this run's.

        A create-only refusal is not recorded: that object is someone else's.
        """
        obj = store(self.catalog.storage, key, src, codec)
        self.keys.append(key)
        return obj

    def commit(self, manifest: DumpManifest | BaseBackupManifest) -> str:
        self._manifest_sent = True
        return self.catalog.write(manifest)

    def __enter__(self) -> PendingBackup:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: object) -> None:
        if exc_type is None:
            return
        # A manifest key holding another run's bytes is not ours to remove.
        ours = self._manifest_sent and not issubclass(exc_type, ObjectExistsError)
        self.catalog.discard(self.kind, self.backup_id, self.keys, manifest=ours)
