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
  denied, disk full), with a message that says what to fix;
* :class:`~p88backup.errors.StorageNotInitialisedError` - the storage has no
  marker (see below).

A storage is initialised once (``p88backup init``, :meth:`Storage.init`) and
carries a marker object, :data:`~p88backup.catalog.layout.STORAGE_MARKER`.
Every other operation checks the marker first and refuses a storage without
it, so an unmounted volume (an empty mount point) or a wrong prefix is an
error, never an empty archive: a put never creates it, a read never answers
"not found" for it (DESIGN §3.12). Only :meth:`Storage.init` creates a
missing local root.
"""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import BinaryIO, Literal, Protocol, runtime_checkable

from p88backup.catalog.layout import STORAGE_MARKER
from p88backup.errors import StorageError, StorageNotInitialisedError

CHUNK = 1024 * 1024
_KEY_RE = re.compile(r"^[A-Za-z0-9._+=@,-]+(/[A-Za-z0-9._+=@,-]+)*$")


InitOutcome = Literal["initialised", "adopted", "already"]
"""What :meth:`Storage.init` did: marked an empty storage, marked one that already held
objects (made by a p88backup from before markers), or found the marker there."""


def not_initialised(url: str) -> StorageNotInitialisedError:
    """The one message for a storage without its marker, whatever the backend."""
    return StorageNotInitialisedError(
        f"storage {url} is not initialised (no {STORAGE_MARKER})",
        hint="run `p88backup init` once when setting the storage up; "
        "if it was initialised, is the volume mounted and P88_STORAGE_URL right?",
    )


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

    def init(self, marker: bytes) -> InitOutcome:
        """Make this storage p88backup's: store ``marker`` under ``STORAGE_MARKER``.

        The one operation allowed on a storage without the marker, and the one
        place a missing local root directory is created (a bucket must exist).
        Create-only: if the marker is there (also when a concurrent init won),
        nothing is written and the answer is ``"already"``. ``"adopted"``: the
        storage already held objects (written before markers existed).
        """
        ...

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
        """Raise unless the storage is there and initialised: ``StorageError``
        if the local root directory or the bucket is missing or denied,
        ``StorageNotInitialisedError`` if it has no marker. Needs no more
        permission than listing the storage's own prefix (a bucket-wide call
        fails under credentials scoped to the prefix). Every other operation
        runs the marker part of this check itself; a caller for whom "not
        found" has consequences (wal-fetch: end of recovery) may call it to be
        sure that the storage, not only the object, is what was asked about."""
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
