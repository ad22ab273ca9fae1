"""What a status check made again and again (``schedule``'s health monitor) remembers between runs.

:func:`p88backup.core.status.collect` lists the catalog and the WAL archive
and reads every manifest and drill report. Once a minute, on S3, with a few
weeks of WAL and fifty backups, that is dozens of requests and thousands of
listed keys every time, nearly all of them for things that have not changed.
Two facts of the storage layout make most of it unnecessary the second time:

- Manifests, drill reports and timeline history files are written once,
  create-only, and never change. :class:`ImmutableReads` keeps the bytes of
  those it has read and serves them again as long as the newest listing
  shows the same object (key, size, time). The catalog is still listed on
  every check, so a new backup, a deleted one, or a manifest replaced by
  hand is seen at once.
- WAL is archived in order: a new file lands at the end of the newest
  timeline (its newest 4 GiB "log" range, or the next one), or on the next
  timeline after a promotion. :class:`WalTail` lists the whole archive once,
  then only those ends, and the whole archive again every ``full_every``
  seconds to see what ``expire`` removed and anything archived out of order.

The verdict is as fresh as the check: the newest WAL file, the newest segment
on the server's timeline and every backup are seen on the check after they are
stored. What may lag by up to ``full_every`` is only the count of WAL files
(``wal.files``) after ``expire`` deleted old ones, which no check judges.
"""

from __future__ import annotations

import builtins
import io
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import BinaryIO

from p88backup.catalog import layout
from p88backup.core.wal import names as walnames
from p88backup.storage.base import InitOutcome, ObjectInfo, Readable, Storage

MAX_CACHED = 4 * 1024 * 1024
"""Bytes of one object worth keeping (a manifest of a directory-format dump with thousands of files
is still far below); anything bigger is read through."""

FULL_EVERY = 900.0
"""Seconds between full listings of the WAL archive (the default ``max_wal_age`` is 15 minutes)."""


def immutable(key: str) -> bool:
    """Is ``key`` an object written once and never changed: a manifest, a drill report, a history file?"""
    if layout.parse_manifest_key(key) is not None or layout.parse_drill_report_key(key) is not None:
        return True
    name = layout.wal_name_of_key(key)
    return name is not None and name.endswith(".history")


class ImmutableReads:
    """A :class:`~p88backup.storage.base.Storage` that reads each immutable object once.

    Everything else goes to the wrapped storage as it is. ``reads`` and
    ``hits`` count the immutable objects read from storage and from memory.
    """

    def __init__(self, inner: Storage) -> None:
        self.inner = inner
        self.url = inner.url
        self._listed: dict[str, tuple[int, datetime | None]] = {}
        self._kept: dict[str, tuple[tuple[int, datetime | None], bytes]] = {}
        self.reads = 0
        self.hits = 0

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        seen: set[str] = set()
        for obj in self.inner.list(prefix):
            seen.add(obj.key)
            if immutable(obj.key):
                self._listed[obj.key] = (obj.size, obj.modified)
            yield obj
        # A complete listing of the prefix: what it no longer shows is gone (expired, removed).
        for key in [k for k in self._listed if k.startswith(prefix) and k not in seen]:
            del self._listed[key]
            self._kept.pop(key, None)

    def open(self, key: str) -> BinaryIO:
        ident = self._listed.get(key)
        if ident is None:  # not listed (or not immutable): nothing to compare a kept copy with
            return self.inner.open(key)
        kept = self._kept.get(key)
        if kept is not None and kept[0] == ident:
            self.hits += 1
            return io.BytesIO(kept[1])
        with self.inner.open(key) as fh:
            data = fh.read()
        self.reads += 1
        if len(data) == ident[0] and len(data) <= MAX_CACHED:  # the very object the listing showed
            self._kept[key] = (ident, data)
        return io.BytesIO(data)

    def _forget(self, key: str) -> None:
        self._listed.pop(key, None)
        self._kept.pop(key, None)

    # -- the rest of the protocol, passed through ----------------------------------------

    def init(self, marker: bytes) -> InitOutcome:
        return self.inner.init(marker)

    def put(self, key: str, data: Readable, *, overwrite: bool = True) -> ObjectInfo:
        self._forget(key)
        return self.inner.put(key, data, overwrite=overwrite)

    def stat(self, key: str) -> ObjectInfo:
        return self.inner.stat(key)

    def check(self) -> None:
        self.inner.check()

    def sync(self, key: str) -> None:
        self.inner.sync(key)

    def delete(self, key: str) -> None:
        self._forget(key)
        self.inner.delete(key)

    def delete_many(self, keys: Iterable[str]) -> None:
        keys = builtins.list(keys)
        for key in keys:
            self._forget(key)
        self.inner.delete_many(keys)

    def reap_interrupted(self, older_than_seconds: float) -> builtins.list[str]:
        return self.inner.reap_interrupted(older_than_seconds)

    def close(self) -> None:
        self.inner.close()


def wal_files(objects: Iterable[ObjectInfo]) -> Iterator[tuple[str, ObjectInfo]]:
    """(WAL file name, object) of the WAL files among ``objects`` (not digest records), as
    :meth:`p88backup.core.wal.archive.WalArchive.objects` yields them."""
    for obj in objects:
        name = layout.wal_name_of_key(obj.key)
        if name is not None and walnames.is_wal_name(name, None):
            yield name, obj


def timeline_prefix(timeline: int) -> str:
    return f"{layout.WAL_PREFIX}{timeline:08X}/"


def log_prefix(timeline: int, log: int) -> str:
    """Every file of ``timeline`` in the 4 GiB of WAL whose LSNs start with ``log`` (``log/XXXXXXXX``)."""
    return f"{timeline_prefix(timeline)}{timeline:08X}{log:08X}"


def newest_log(names: Iterable[str], timeline: int) -> int | None:
    """The highest "log" (upper 32 bits of the LSN) of ``timeline``'s segment files among ``names``."""
    best: int | None = None
    for name in names:
        head = name[:24]
        if len(head) == 24 and int(name[:8], 16) == timeline:
            try:
                log = int(head[8:16], 16)
            except ValueError:
                continue
            best = log if best is None or log > best else best
    return best


class WalTail:
    """The WAL archive's listing, kept up to date by listing its ends (see the module docstring)."""

    def __init__(
        self, storage: Storage, *, full_every: float = FULL_EVERY, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.storage, self.full_every, self.clock = storage, full_every, clock
        self._files: dict[str, tuple[str, ObjectInfo]] | None = None  # key -> (name, object)
        self._full_at = 0.0
        self.listings: list[str] = []
        """The prefixes listed, in order (what a check cost; tests and the benchmark read it)."""

    def objects(self) -> list[tuple[str, ObjectInfo]]:
        """(WAL file name, stored object) for everything archived, sorted by key."""
        now = self.clock()
        if self._files is None or now - self._full_at >= self.full_every or not self._files:
            self._files = {}
            self._relist(layout.WAL_PREFIX)
            self._full_at = now
        else:
            self._tail()
        return sorted(self._files.values(), key=lambda item: item[1].key)

    def _relist(self, prefix: str) -> bool:
        """List ``prefix`` and replace what is known under it; whether anything is there."""
        assert self._files is not None
        self.listings.append(prefix)
        listed = builtins.list(self.storage.list(prefix))
        for key in [k for k in self._files if k.startswith(prefix)]:
            del self._files[key]
        for name, obj in wal_files(listed):
            self._files[obj.key] = (name, obj)
        return bool(listed)

    def _tail(self) -> None:
        assert self._files is not None
        names = [name for name, _ in self._files.values()]
        timeline = max(int(name[:8], 16) for name in names)
        log = newest_log(names, timeline)
        if log is None:
            self._relist(timeline_prefix(timeline))  # only a history file so far: a small folder
        else:
            self._relist(log_prefix(timeline, log))
            while self._relist(log_prefix(timeline, log + 1)):  # into the next 4 GiB, and past it
                log += 1
        while self._relist(timeline_prefix(timeline + 1)):  # a promotion: the next timeline, whole
            timeline += 1
