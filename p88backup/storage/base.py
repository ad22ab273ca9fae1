"""The storage contract every backend implements.

Keys are relative, ``/``-separated paths such as ``dumps/20261127T021500Z/manifest.json``.
They are validated where they enter (:func:`validate_key`): no absolute
paths, no ``..``, no empty segments, a conservative character set.

Backends raise only :mod:`p88backup.errors` storage errors, never their
client library's exceptions:

* :class:`~p88backup.errors.ObjectNotFoundError` - the key does not exist;
* :class:`~p88backup.errors.ObjectExistsError` - ``put(..., overwrite=False)``
  found the key taken (the stored object is left unchanged);
* :class:`~p88backup.errors.TransientStorageError` - network trouble that
  outlived the backend's bounded retries;
* :class:`~p88backup.errors.StorageError` - anything permanent (bad bucket,
  denied, disk full), with a message that says what to fix.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable

from p88backup.errors import StorageError

CHUNK = 1024 * 1024
_KEY_RE = re.compile(r"^[A-Za-z0-9._+=@,-]+(/[A-Za-z0-9._+=@,-]+)*$")


class Readable(Protocol):
    """Anything with ``read(n) -> bytes``; ``b""`` means end of stream."""

    def read(self, size: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    modified: datetime | None = None


def validate_key(key: str) -> str:
    """Return ``key`` if it is a safe relative object key, else raise."""
    if not key or len(key) > 900 or not _KEY_RE.match(key):
        raise StorageError(f"invalid storage key {key!r}")
    if any(part in (".", "..") or part.startswith(".p88") for part in key.split("/")):
        raise StorageError(f"invalid storage key {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """A list prefix may be empty or end in ``/``; otherwise it is a key prefix."""
    if prefix == "":
        return prefix
    validate_key(prefix.rstrip("/"))
    return prefix


def read_full(src: Readable, size: int) -> bytes:
    """Read ``size`` bytes, or fewer only at end of stream."""
    first = src.read(size)
    if len(first) == size or not first:
        return first
    parts = [first]
    got = len(first)
    while got < size:
        more = src.read(size - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


@runtime_checkable
class Storage(Protocol):
    """Object storage as p88backup needs it.

    Every backend passes the same contract suite (``tests/contract``).
    """

    url: str
    """Where this storage points, safe to print (no credentials)."""

    def put(self, key: str, data: Readable, *, overwrite: bool = True) -> ObjectInfo:
        """Store everything read from ``data`` under ``key``; return its info.

        Streaming, in bounded memory whatever the size. Atomic: a reader sees
        the previous object (or nothing) until the new one is complete, never
        a partial object, also if this process is killed mid-stream. Durable
        when it returns. With ``overwrite=False`` the put is create-only: if
        ``key`` exists, raise ``ObjectExistsError`` and leave it unchanged.
        An exception from ``data.read`` aborts the put and propagates.
        """
        ...

    def open(self, key: str) -> BinaryIO:
        """A readable stream of the object. ``ObjectNotFoundError`` if missing.

        The caller closes it. Reading is streamed (bounded memory).
        """
        ...

    def stat(self, key: str) -> ObjectInfo:
        """Size and modification time. ``ObjectNotFoundError`` if missing."""
        ...

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        """Objects whose key starts with ``prefix``, sorted by key.

        A prefix that matches nothing yields nothing (no error). Objects
        whose put has not completed are never listed.
        """
        ...

    def check(self) -> None:
        """Raise ``StorageError`` unless the storage itself is there (the local
        root directory, the bucket). Objects in a storage that is not there
        are "not found" like any missing object; a caller for whom "not found"
        has consequences (wal-fetch: end of recovery) checks this first."""
        ...

    def sync(self, key: str) -> None:
        """Make the existing object ``key`` as durable as a put would have.

        For a caller that relies on an object it did not just store (the
        put that stored it may have been killed before it finished syncing).
        A no-op where every visible object is already durable (S3, memory).
        """
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``. Deleting a missing key is not an error."""
        ...

    def delete_many(self, keys: Iterable[str]) -> None:
        """Remove several keys (batched where the backend can)."""
        ...

    def reap_interrupted(self, older_than_seconds: float) -> builtins.list[str]:
        """Remove leftovers of puts killed mid-stream (never visible as
        objects: local temp files, S3 multipart uploads) older than the
        given age; return what was removed."""
        ...

    def close(self) -> None:
        """Release connections. The object is unusable afterwards."""
        ...
