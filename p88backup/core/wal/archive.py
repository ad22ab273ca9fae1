"""The WAL archive: push (archive_command), fetch (restore_command), listing.

PostgreSQL's contracts, followed exactly:

* ``archive_command`` may report success only once the file is durably
  stored; a file with that name already archived with *identical* content
  is a success (PostgreSQL may re-run the command after a crash); different
  content under the same name is a failure and the stored object is never
  replaced (DESIGN §3.2).
* ``restore_command`` exits 1 only when the file does not exist in the
  archive; any other failure must not look like "not found" (the caller
  maps it to 126 so recovery aborts instead of ending early).

Objects are ``wal/<timeline>/<name>.zst[.age]``. Standard library plus
zstandard (and pyrage when encrypted) only: this module is on the fast path.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from p88backup.catalog.layout import WAL_PREFIX, WAL_SUFFIXES, wal_key, wal_name_of_key
from p88backup.core.wal import names as walnames
from p88backup.errors import ConflictError, ObjectExistsError, ObjectNotFoundError, StorageError, VerifyError
from p88backup.storage.base import ObjectInfo, Storage
from p88backup.stream import Codec, CountingReader, decode, encode, iter_chunks

XLP_LONG_HEADER = 0x0002
_LONG_HEADER = struct.Struct("<HHIQI4xQII")  # XLogLongPageHeaderData on little-endian hosts


@dataclass(frozen=True)
class SegmentHeader:
    magic: int
    timeline: int
    pageaddr: int
    system_identifier: int
    segment_size: int
    block_size: int


def parse_segment_header(head: bytes) -> SegmentHeader:
    """The long page header at the start of every WAL segment file."""
    if len(head) < _LONG_HEADER.size:
        raise VerifyError("WAL file is too short for a segment header")
    magic, info, tli, pageaddr, _rem, sysid, seg_size, blcksz = _LONG_HEADER.unpack_from(head)
    if not info & XLP_LONG_HEADER:
        raise VerifyError("WAL file does not start with a long page header")
    return SegmentHeader(magic, tli, pageaddr, sysid, seg_size, blcksz)


def check_segment(name: str, head: bytes, size: int) -> SegmentHeader:
    """A WAL segment (or .partial) must be whole and be the segment its name says.

    The timeline in the page header is not checked: the first segment of a
    new timeline starts with pages copied from the parent timeline.
    """
    h = parse_segment_header(head)
    if h.segment_size != size:
        raise VerifyError(f"{name}: {size} bytes, but its header says segments are {h.segment_size} bytes")
    if not walnames.MIN_SEGMENT_SIZE <= size <= walnames.MAX_SEGMENT_SIZE or size & (size - 1):
        raise VerifyError(f"{name}: {size} bytes is not a valid WAL segment size")
    _, segno = walnames.parse_segment_name(name[:24], size)
    if h.pageaddr != walnames.segment_start_lsn(segno, size):
        raise VerifyError(f"{name}: content belongs to another segment (page address {h.pageaddr:X})")
    return h


def check_history(name: str, data: bytes) -> None:
    try:
        walnames.parse_history(data.decode())
    except (UnicodeDecodeError, walnames.WalNameError) as exc:
        raise VerifyError(f"{name}: not a valid timeline history file ({exc})") from None


def _sha256_file(path: Path) -> str:
    import hashlib

    sha = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter_chunks(fh):
            sha.update(chunk)
    return sha.hexdigest()


@dataclass(frozen=True)
class PushResult:
    name: str
    key: str
    already_archived: bool
    raw_size: int
    stored_size: int


class WalArchive:
    def __init__(self, storage: Storage, codec: Codec) -> None:
        self.storage, self.codec = storage, codec

    # -- push -----------------------------------------------------------------

    def push(self, path: Path) -> PushResult:
        name = path.name
        kind = walnames.classify(name).kind  # raises for anything that is not a WAL archive name
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{path}: no such file") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if kind in ("segment", "partial"):
                check_segment(name, fh.read(_LONG_HEADER.size), size)
                fh.seek(0)
            # A .partial is the growing tail of a segment (streaming, promotion):
            # a newer one replaces the older. Everything else is create-only.
            existing = None if kind == "partial" else self.find(name)
            if existing is None:
                key = wal_key(name, self.codec.suffix)
                raw = CountingReader(fh)
                stored = CountingReader(encode(raw, self.codec))
                try:
                    self.storage.put(key, stored, overwrite=kind == "partial")
                    return PushResult(name, key, False, raw.size, stored.size)
                except ObjectExistsError:
                    existing = self.find(name)  # a concurrent push won the race
                    if existing is None:
                        raise
        # Already there: identical content is success, anything else is a conflict.
        local = _sha256_file(path)
        theirs = self._stored_sha256(existing)
        if theirs != local:
            raise ConflictError(
                f"{name} is already archived with different content ({existing.key}); not overwriting",
                hint="two clusters may be archiving into the same storage, or a timeline was reused",
            )
        # The push that stored it may have died before its fsyncs: PostgreSQL recycles
        # the segment once we exit 0, so make sure the archived copy is durable.
        self.storage.sync(existing.key)
        return PushResult(name, existing.key, True, size, existing.size)

    def _stored_sha256(self, obj: ObjectInfo) -> str:
        import hashlib

        sha = hashlib.sha256()
        with self.storage.open(obj.key) as fh:
            for chunk in iter_chunks(decode(fh, self.codec, encrypted=obj.key.endswith(".age"))):
                sha.update(chunk)
        return sha.hexdigest()

    # -- fetch ----------------------------------------------------------------

    def find(self, name: str) -> ObjectInfo | None:
        """The stored object for ``name`` (either encoding), or None."""
        walnames.classify(name)
        preferred = [self.codec.suffix] + [s for s in WAL_SUFFIXES if s != self.codec.suffix]
        for suffix in preferred:
            try:
                return self.storage.stat(wal_key(name, suffix))
            except ObjectNotFoundError:
                continue
        return None

    def fetch(self, name: str, dest: Path) -> int:
        """Decode ``name`` into ``dest`` (atomically, validated); return its size.

        ObjectNotFoundError only when the archive does not have the file.
        """
        obj = self.find(name)
        if obj is None:
            # "Not in the archive" ends recovery: make sure it is not the archive that is missing.
            self.storage.check()
            raise ObjectNotFoundError(f"{name} is not in the archive")
        kind = walnames.classify(name).kind
        tmp = dest.with_name(f".{dest.name}.p88tmp")
        try:
            try:
                fh = self.storage.open(obj.key)
            except ObjectNotFoundError:  # deleted since find(): an error, not "not archived"
                raise StorageError(f"{obj.key} vanished while being fetched") from None
            with fh, tmp.open("wb") as out:
                size = 0
                for chunk in iter_chunks(decode(fh, self.codec, encrypted=obj.key.endswith(".age"))):
                    out.write(chunk)
                    size += len(chunk)
            if kind in ("segment", "partial"):
                with tmp.open("rb") as check:
                    check_segment(name, check.read(_LONG_HEADER.size), size)
            elif kind == "history":
                check_history(name, tmp.read_bytes())
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return size

    # -- listing --------------------------------------------------------------

    def objects(self) -> Iterator[tuple[str, ObjectInfo]]:
        """(WAL file name, stored object) for everything archived, sorted by key."""
        for obj in self.storage.list(WAL_PREFIX):
            name = wal_name_of_key(obj.key)
            if name is not None and walnames.is_wal_name(name):
                yield name, obj

    def histories(
        self, objects: Iterable[tuple[str, ObjectInfo]] | None = None
    ) -> dict[int, list[walnames.HistoryEntry]]:
        """Every archived timeline history, parsed: timeline -> its history.

        ``objects``: a listing already made by :meth:`objects`, to avoid listing twice.
        """
        out: dict[int, list[walnames.HistoryEntry]] = {}
        for name, obj in self.objects() if objects is None else objects:
            if name.endswith(".history"):
                with self.storage.open(obj.key) as fh:
                    text = b"".join(iter_chunks(decode(fh, self.codec, encrypted=obj.key.endswith(".age"))))
                out[int(name[:8], 16)] = walnames.parse_history(text.decode())
        return out
