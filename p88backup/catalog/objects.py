"""Stored objects: writing one encoded (with what the manifest records about it), and reading
one back checked against that record."""

from __future__ import annotations

import hashlib
import logging
from typing import BinaryIO

from p88backup.catalog.models import StoredObject
from p88backup.errors import ObjectExistsError, VerifyError
from p88backup.storage import Readable, Storage
from p88backup.stream import Codec, CountingReader, HashingReader, decode, encode, iter_chunks

log = logging.getLogger(__name__)


class _SentReader(HashingReader):
    """What the put read: size and SHA-256, and whether it read to the end."""

    ended = False

    def read(self, size: int = -1, /) -> bytes:
        data = super().read(size)
        if not data and size != 0:
            self.ended = True
        return data


def store(storage: Storage, key: str, src: Readable, codec: Codec) -> StoredObject:
    """Encode ``src`` into ``key`` (create-only); return what the manifest records about it.

    A create-only put whose answer was lost is retried and then finds the key
    taken, by itself. The stored object is accepted as this put's when it is
    provably so: this put sent the whole stream, and the stored bytes have its
    size and SHA-256 (age encryption makes every run's bytes unique). Anything
    else stays ``ObjectExistsError``: the object belongs to someone else.
    """
    raw = CountingReader(src)
    stored = _SentReader(encode(raw, codec))
    try:
        storage.put(key, stored, overwrite=False)
    except ObjectExistsError:
        if not (stored.ended and _holds(storage, key, stored.size, stored.hexdigest())):
            raise
        log.info(
            "object already stored by an earlier attempt of this put (same size and SHA-256)",
            extra={"p88": {"key": key, "bytes": stored.size}},
        )
    return StoredObject(key=key, size=stored.size, sha256=stored.hexdigest(), raw_size=raw.size)


def _holds(storage: Storage, key: str, size: int, sha256: str) -> bool:
    """Whether ``key`` holds exactly ``size`` bytes with this SHA-256 (read back in full)."""
    if storage.stat(key).size != size:
        return False
    sha = hashlib.sha256()
    with storage.open(key) as fh:
        for chunk in iter_chunks(fh):
            sha.update(chunk)
    return sha.hexdigest() == sha256


class VerifyingReader:
    """Stored bytes, checked for size and SHA-256 when the stream ends.

    Consumers see a VerifyError at end of stream if the object is not what
    the manifest says, which aborts whatever they were feeding (a restore
    in a single transaction, a storage put).
    """

    def __init__(self, src: BinaryIO, obj: StoredObject) -> None:
        self._src, self.obj = src, obj
        self._sha = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._src.read(size)
        if data:
            self.size += len(data)
            if self.size > self.obj.size:
                raise VerifyError(f"{self.obj.key}: larger than the {self.obj.size} bytes recorded")
            self._sha.update(data)
            return data
        if self.size != self.obj.size:
            raise VerifyError(f"{self.obj.key}: {self.size} bytes stored, {self.obj.size} recorded (truncated)")
        if self._sha.hexdigest() != self.obj.sha256:
            raise VerifyError(f"{self.obj.key}: SHA-256 mismatch (the stored object is corrupt)")
        return b""

    def close(self) -> None:
        self._src.close()


def check_stat(storage: Storage, obj: StoredObject) -> None:
    """Fast pre-check: the object exists with the recorded size."""
    info = storage.stat(obj.key)
    if info.size != obj.size:
        raise VerifyError(f"{obj.key}: {info.size} bytes stored, {obj.size} recorded")


def open_decoded(
    storage: Storage, obj: StoredObject, codec: Codec, *, encrypted: bool
) -> tuple[Readable, VerifyingReader]:
    """(decoded stream, verifying raw reader) for one stored object."""
    raw = VerifyingReader(storage.open(obj.key), obj)
    return decode(raw, codec, encrypted=encrypted), raw
