"""Stored objects: writing one encoded (with what the manifest records about it), and reading
one back checked against that record."""

from __future__ import annotations

import hashlib
from typing import BinaryIO

from p88backup.catalog.models import StoredObject
from p88backup.errors import VerifyError
from p88backup.storage import Readable, Storage
from p88backup.stream import Codec, CountingReader, HashingReader, decode, encode


def store(storage: Storage, key: str, src: Readable, codec: Codec) -> StoredObject:
    """Encode ``src`` into ``key`` (create-only); return what the manifest records about it."""
    raw = CountingReader(src)
    stored = HashingReader(encode(raw, codec))
    storage.put(key, stored, overwrite=False)
    return StoredObject(key=key, size=stored.size, sha256=stored.hexdigest(), raw_size=raw.size)


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
