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

**Segment size.** It is fixed at ``initdb`` (1 MB to 1 GB) and changes what
a name means, so it is never assumed: a segment's long page header states it
(``xlp_seg_size``), push and fetch check the name against that, and names
from outside or from a listing are accepted when valid for *some* size.

**Identical or different, without the private key.** With encryption on,
the stored object cannot be read back without the age identity, which the
recommended setup keeps off the database server. So that a re-push can
still tell identical from different, every encrypted file gets a *digest
record* beside it, ``wal/<timeline>/<name>.digest.json`` (SHA-256 and size
of the raw file), and the record is written **before** the file, create-only,
as a claim on the name:

1. hash the local file;
2. put the record create-only; if a record is there: the same digest means
   our own earlier attempt died (or an identical push runs concurrently), so
   go on; a different digest means other content has claimed the name:
   conflict, nothing stored;
3. put the file create-only: the commit point, exit 0 only after it.

(Steps 1 and 2 run in a thread while step 3 compresses and encrypts; the put
of step 3 sees the end of its input only once step 2 is stored, so it cannot
commit before it, and fails with step 2's error.)

A crash after 2 leaves a record without a file: the retry has the same bytes,
finds its own claim and completes, so archiving never wedges. Different
content never gets past 2, so it can never pass as identical. Because 2
comes before 3, every encrypted file stored this way has a record, and a
re-push compares digests without any key. A file archived before records
existed is compared by decoding when the identity is configured (and gets
its record then); without it the push fails saying so.

**History files are never encrypted.** A ``.history`` file holds no table
data (timeline ids, switch LSNs, a reason such as a restore point's name),
and every reader of the archive needs it: ``wal-verify``, ``expire`` and the
PITR planner follow timelines with it on hosts that do not have the private
key (the sidecar). So it is stored compressed only, whatever the codec.

Unencrypted files need no record (decoding needs no key: they are compared
by decoding, as always). ``.partial`` files are replaced by newer ones and
never compared: no record either. Whoever deletes WAL (``expire``) deletes
:func:`p88backup.catalog.layout.wal_file_keys`, the file before its record.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from p88backup.catalog.layout import WAL_PREFIX, WAL_SUFFIXES, wal_digest_key, wal_key, wal_name_of_key
from p88backup.core.wal import names as walnames
from p88backup.errors import (
    ConflictError,
    CryptoError,
    ObjectExistsError,
    ObjectNotFoundError,
    StorageError,
    VerifyError,
)
from p88backup.storage.base import ObjectInfo, Readable, Storage, read_full
from p88backup.stream import Codec, CountingReader, decode, drain, encode, iter_chunks

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
    try:
        _, segno = walnames.parse_segment_name(name[:24], size)
    except walnames.WalNameError as exc:  # e.g. ...0100 with 16 MB segments
        raise VerifyError(f"{exc} (the size its header states)") from None
    if h.pageaddr != walnames.segment_start_lsn(segno, size):
        raise VerifyError(f"{name}: content belongs to another segment (page address {h.pageaddr:X})")
    return h


def check_history(name: str, data: bytes) -> None:
    try:
        walnames.parse_history(data.decode())
    except (UnicodeDecodeError, walnames.WalNameError) as exc:
        raise VerifyError(f"{name}: not a valid timeline history file ({exc})") from None


def _sha256_file(path: Path) -> str:
    with path.open("rb") as fh:
        return _sha256_of(fh)


def _sha256_of(fh: BinaryIO) -> str:
    import hashlib  # not at module level: an unencrypted first push never hashes

    sha = hashlib.sha256()
    for chunk in iter_chunks(fh):
        sha.update(chunk)
    return sha.hexdigest()


@dataclass(frozen=True)
class DigestRecord:
    """What ``<name>.digest.json`` says about the raw bytes of an archived WAL file."""

    name: str
    sha256: str
    size: int

    def to_bytes(self) -> bytes:
        return f'{{"name": "{self.name}", "sha256": "{self.sha256}", "size": {self.size}}}\n'.encode()

    @classmethod
    def parse(cls, key: str, data: bytes) -> DigestRecord:
        import json

        try:
            raw = json.loads(data)
            record = cls(str(raw["name"]), str(raw["sha256"]), int(raw["size"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise VerifyError(f"{key}: not a valid WAL digest record ({exc})") from None
        if len(record.sha256) != 64 or record.size < 0:
            raise VerifyError(f"{key}: not a valid WAL digest record")
        return record


class _Background:
    """``work()`` in a thread; :meth:`wait` returns its result or raises its exception."""

    def __init__(self, work: Callable[[], str]) -> None:
        import threading  # only encrypted pushes come here, and they use threads anyway

        self._result: str | None = None
        self._error: BaseException | None = None

        def run() -> None:
            try:
                self._result = work()
            except BaseException as exc:  # handed to whoever waits
                self._error = exc

        self._thread = threading.Thread(target=run, name="wal-claim")
        self._thread.start()

    def join(self) -> None:
        self._thread.join()

    def wait(self) -> str:
        self._thread.join()
        if self._error is not None:
            raise self._error
        assert self._result is not None
        return self._result


class _EndAfter:
    """Passes ``src`` through, but runs ``before_end`` (which may raise) before reporting its end."""

    def __init__(self, src: Readable, before_end: Callable[[], object]) -> None:
        self._src, self._before_end = src, before_end
        self._ended = False

    def read(self, size: int = -1, /) -> bytes:
        data = self._src.read(size)
        if not data and size != 0 and not self._ended:
            self._ended = True
            self._before_end()
        return data


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
        # For history files (see the module docstring): compression only, the same identity for reading.
        self._plain = Codec(level=codec.level, threads=codec.threads, identity_file=codec.identity_file)

    # -- push -----------------------------------------------------------------

    def push(self, path: Path) -> PushResult:
        name = path.name
        kind = walnames.classify(name, None).kind  # not WAL: raise. Any size: the header says which.
        try:
            fh = path.open("rb")
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{path}: no such file") from None
        with fh:
            size = os.fstat(fh.fileno()).st_size
            if kind in ("segment", "partial"):
                check_segment(name, fh.read(_LONG_HEADER.size), size)
                fh.seek(0)
            if kind == "partial":
                # The growing tail of a segment (streaming, promotion): a newer one replaces the older.
                key = wal_key(name, self.codec.suffix)
                return self._store(key, fh, overwrite=True)
            # Everything else is create-only.
            codec = self._plain if kind == "history" else self.codec
            local: str | None = None
            existing = self.find(name)
            if existing is None:
                key = wal_key(name, codec.suffix)
                claim: _Background | None = None
                src: Readable = fh
                if codec.encrypted:
                    # Hash and claim beside the compression (another core), but the put sees
                    # the end of its input only once the claim is stored: the file can never
                    # become visible before its digest record.
                    claim = _Background(lambda: self._claim_file(path, name, size))
                    src = _EndAfter(fh, claim.wait)
                try:
                    return self._store(key, src, overwrite=False, codec=codec)
                except ObjectExistsError:
                    existing = self.find(name)  # a concurrent push won the race
                    if existing is None:
                        raise
                finally:
                    if claim is not None:
                        claim.join()
                local = claim.wait() if claim is not None else None
        # Already there: identical content is success, anything else is a conflict.
        durable = self._check_identical(name, path, size, existing, local)
        # The push that stored it may have died before its fsyncs: PostgreSQL recycles
        # the segment once we exit 0, so make sure the archived copy is durable.
        for key in durable:
            self.storage.sync(key)
        return PushResult(name, existing.key, True, size, existing.size)

    def _store(self, key: str, fh: Readable, *, overwrite: bool, codec: Codec | None = None) -> PushResult:
        raw = CountingReader(fh)
        stored = CountingReader(encode(raw, codec or self.codec))
        self.storage.put(key, stored, overwrite=overwrite)
        return PushResult(wal_name_of_key(key) or key, key, False, raw.size, stored.size)

    def _claim_file(self, path: Path, name: str, size: int) -> str:
        digest = _sha256_file(path)  # its own file offset: the encoder reads the other handle
        self._claim(DigestRecord(name, digest, size))
        return digest

    def _claim(self, record: DigestRecord) -> None:
        """Step 2 of the module docstring: the digest record goes first, create-only."""
        key = wal_digest_key(record.name)
        try:
            self.storage.put(key, io.BytesIO(record.to_bytes()), overwrite=False)
            return
        except ObjectExistsError:
            pass
        theirs = self.digest_record(record.name)
        if theirs is None:  # deleted in between: let PostgreSQL retry
            raise StorageError(f"{key} vanished while being compared; retry")
        if theirs.sha256 != record.sha256:
            raise ConflictError(
                f"{record.name}: other content has claimed this name in the archive"
                f" (digest record {key} differs); not archiving",
                hint="two clusters may be archiving into the same storage; if an interrupted push of other content"
                f" left {key} and this file is the right one, delete {key}",
            )

    def _check_identical(self, name: str, path: Path, size: int, existing: ObjectInfo, local: str | None) -> list[str]:
        """Raise ConflictError unless ``existing`` holds the bytes of ``path``; the keys to make durable."""
        local = local or _sha256_file(path)
        if not existing.key.endswith(".age"):
            theirs = self._stored_sha256(existing)  # no key needed
            keys = [existing.key]
        else:
            record = self.digest_record(name)
            if record is not None:
                theirs = record.sha256
                keys = [existing.key, wal_digest_key(name)]
            else:
                # Archived before digest records existed: only the private key can tell.
                try:
                    theirs = self._stored_sha256(existing)
                except CryptoError:
                    raise CryptoError(
                        f"{name} is already archived, encrypted and without a digest record; without the age"
                        " identity p88backup cannot tell whether it is identical",
                        hint="set age_identity_file where wal-push runs until this segment is archived (its"
                        " digest record is written then), or compare and remove the stored copy by hand",
                    ) from None
                if theirs == local:
                    self._add_record(DigestRecord(name, local, size))
                keys = [existing.key, wal_digest_key(name)]
        if theirs != local:
            raise ConflictError(
                f"{name} is already archived with different content ({existing.key}); not overwriting",
                hint="two clusters may be archiving into the same storage, or a timeline was reused",
            )
        return keys

    def _add_record(self, record: DigestRecord) -> None:
        try:
            self.storage.put(wal_digest_key(record.name), io.BytesIO(record.to_bytes()), overwrite=False)
        except ObjectExistsError:  # a concurrent push added it: compared on its next use
            pass

    def digest_record(self, name: str) -> DigestRecord | None:
        """The digest record of ``name``, or None if it has none."""
        key = wal_digest_key(name)
        try:
            with self.storage.open(key) as fh:
                data = read_full(fh, 4096)
        except ObjectNotFoundError:
            return None
        record = DigestRecord.parse(key, data)
        if record.name != name:
            raise VerifyError(f"{key}: digest record of {record.name}, not of {name}")
        return record

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
        walnames.classify(name, None)
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
        kind = walnames.classify(name, None).kind
        tmp = dest.with_name(f".{dest.name}.p88tmp")
        try:
            try:
                fh = self.storage.open(obj.key)
            except ObjectNotFoundError:  # deleted since find(): an error, not "not archived"
                raise StorageError(f"{obj.key} vanished while being fetched") from None
            with fh, tmp.open("wb") as out:
                size = 0
                try:
                    for chunk in iter_chunks(decode(fh, self.codec, encrypted=obj.key.endswith(".age"))):
                        out.write(chunk)
                        size += len(chunk)
                except ObjectNotFoundError:  # S3 opens with HEAD and GETs on the first read
                    raise StorageError(f"{obj.key} vanished while being fetched") from None
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
            if name is not None and walnames.is_wal_name(name, None):
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

    def segment_size(self, objects: Iterable[tuple[str, ObjectInfo]] | None = None) -> int | None:
        """The WAL segment size of the archived segments (from the newest), or None if there are none.

        From its digest record when it has one, else from its header (decoded:
        an encrypted file without a record needs the identity).
        """
        listing = self.objects() if objects is None else objects
        segments = [(name, obj) for name, obj in listing if len(name) == 24]
        if not segments:
            return None
        name, obj = max(segments, key=lambda item: walnames.segment_sort_key(item[0]))
        encrypted = obj.key.endswith(".age")
        record = self.digest_record(name) if encrypted else None
        if record is not None:
            size = record.size
        else:
            with self.storage.open(obj.key) as fh:
                stream = decode(fh, self.codec, encrypted=encrypted)
                head = read_full(stream, _LONG_HEADER.size)
                if encrypted:
                    drain(stream)  # let the decrypting thread finish
            size = parse_segment_header(head).segment_size
        try:
            walnames.parse_segment_name(name, size)  # the name must fit the size it claims
        except walnames.WalNameError as exc:
            raise VerifyError(f"{obj.key}: {exc}") from None
        return size
