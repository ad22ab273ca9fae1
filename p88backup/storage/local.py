"""Local-filesystem storage (``file:///var/backups/p88``).

A put writes a temporary file under ``<root>/.p88tmp/``, fsyncs it, moves it
into place (``rename``, or ``link`` for create-only so that an existing object
is never replaced), then fsyncs the directories up to the root. Killed
mid-put, it leaves only a temporary file that is never listed;
:meth:`LocalStorage.reap_interrupted` clears those.

The root is never created by a put: a backup volume that is not mounted
leaves an empty mount point (or nothing) at the root's path, and a put there
would land on the wrong filesystem. Only :meth:`LocalStorage.init` creates
it; every other operation first checks the marker file in it (one ``stat``,
every time, not cached: a long-running ``wal-stream`` must notice a volume
unmounted under it).
"""

from __future__ import annotations

import builtins
import errno
import io
import logging
import os
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from p88backup.catalog.layout import STORAGE_MARKER
from p88backup.errors import ObjectExistsError, ObjectNotFoundError, StorageError
from p88backup.storage.base import (
    CHUNK,
    InitOutcome,
    ObjectInfo,
    Readable,
    not_initialised,
    validate_key,
    validate_prefix,
)

log = logging.getLogger(__name__)

TMP_DIR = ".p88tmp"
# What a freshly made filesystem holds at its root: not data of an older p88backup.
_NOT_DATA = {TMP_DIR, "lost+found"}
WRITEBACK_STEP = 16 * 1024 * 1024


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _os_error(exc: OSError, what: str) -> StorageError:
    if exc.errno == errno.ENOSPC:
        return StorageError(f"{what}: no space left on device", hint="free space or move storage")
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return StorageError(f"{what}: permission denied ({exc.strerror})")
    return StorageError(f"{what}: {exc.strerror or exc}")


class LocalStorage:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.url = f"file://{root}"

    def _path(self, key: str) -> Path:
        return self.root / validate_key(key)

    def _makedirs(self, directory: Path, *, root_too: bool = False) -> list[Path]:
        """Create missing directories, fsyncing each new entry's parent for durability; return them.

        Only below the root: a missing root is an error (an unmounted volume), unless ``root_too``
        (``init``, the one place allowed to create it and its parents).
        """
        missing: list[Path] = []
        d = directory
        while not d.exists():
            if not root_too and (d == self.root or d == d.parent):
                raise self._root_missing()
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            _fsync_dir(d.parent)
        return missing

    def _root_missing(self) -> StorageError:
        return StorageError(
            f"storage root {self.root} does not exist or is not a directory",
            hint="is the backup volume mounted? (P88_STORAGE_URL; a new storage is set up once with `p88backup init`)",
        )

    def _require_init(self) -> None:
        """Refuse a root without the marker; cheap enough (one stat) to run before every operation."""
        try:
            os.stat(self.root / STORAGE_MARKER)
            return
        except (FileNotFoundError, NotADirectoryError):
            self.check()  # raises, saying whether the root or only the marker is missing
        except OSError as exc:
            raise _os_error(exc, f"cannot read {self.url}") from None

    def init(self, marker: bytes) -> InitOutcome:
        try:
            if self.root.exists() and not self.root.is_dir():
                raise self._root_missing()
            self._make_root()
            if (self.root / STORAGE_MARKER).exists():
                return "already"
            had_objects = any(entry.name not in _NOT_DATA for entry in os.scandir(self.root))
            had_tmp = (self.root / TMP_DIR).exists()
        except OSError as exc:
            raise _os_error(exc, f"cannot initialise {self.url}") from None
        try:
            self._write(STORAGE_MARKER, io.BytesIO(marker), overwrite=False)
        except ObjectExistsError:
            return "already"  # a concurrent init won
        finally:
            if not had_tmp:
                # Leave no temp directory owned by whoever ran init (often root): the writers
                # (wal-push runs as postgres) make their own.
                try:
                    (self.root / TMP_DIR).rmdir()
                except OSError:
                    pass
        return "adopted" if had_objects else "initialised"

    def _make_root(self) -> None:
        """Create the root and any missing parents (init only), durably."""
        if self._makedirs(self.root, root_too=True):
            log.info("created the storage root", extra={"p88": {"path": str(self.root)}})

    def put(self, key: str, data: Readable, *, overwrite: bool = True) -> ObjectInfo:
        self._path(key)  # an invalid key is refused before anything else
        self._require_init()
        return self._write(key, data, overwrite=overwrite)

    def _write(self, key: str, data: Readable, *, overwrite: bool) -> ObjectInfo:
        final = self._path(key)
        if not overwrite and final.exists():
            raise ObjectExistsError(f"{key} already exists in {self.url}")
        tmp_dir = self.root / TMP_DIR
        try:
            self._makedirs(tmp_dir)
            tmp = tmp_dir / f"{os.getpid()}.{time.monotonic_ns()}.tmp"
            # Permissions follow the umask: protect backups with the storage root's own mode.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except OSError as exc:
            raise _os_error(exc, f"cannot write to {self.url}") from None
        size = 0
        try:
            try:
                with os.fdopen(fd, "wb", buffering=0) as out:
                    flushed = 0
                    while chunk := data.read(CHUNK):
                        out.write(chunk)
                        size += len(chunk)
                        if size - flushed >= WRITEBACK_STEP:
                            # Start writeback of what is written so far (asynchronous) and keep
                            # a backup out of the page cache: the final fsync has little left.
                            os.posix_fadvise(fd, flushed, size - flushed, os.POSIX_FADV_DONTNEED)
                            flushed = size
                    os.fsync(out.fileno())
                self._move_into_place(tmp, final, key, overwrite)
            except OSError as exc:
                raise _os_error(exc, f"cannot store {key} in {self.url}") from None
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return ObjectInfo(key, size, datetime.now(UTC))

    def _move_into_place(self, tmp: Path, final: Path, key: str, overwrite: bool) -> None:
        for attempt in (1, 2):
            self._makedirs(final.parent)
            try:
                if overwrite:
                    os.replace(tmp, final)
                else:
                    # link() fails if the name exists: an atomic create-only.
                    os.link(tmp, final)
                    tmp.unlink()
                break
            except FileExistsError:
                tmp.unlink(missing_ok=True)
                raise ObjectExistsError(f"{key} already exists in {self.url}") from None
            except FileNotFoundError:
                # A concurrent delete pruned the empty directory; make it again.
                if attempt == 2:
                    raise
        self._fsync_dirs(final.parent)

    def _fsync_dirs(self, directory: Path) -> None:
        """fsync ``directory`` and each parent up to the root: a directory made by
        a put that was killed before its own fsync becomes durable here too."""
        d = directory
        while True:
            _fsync_dir(d)
            if d == self.root or d == d.parent:
                return
            d = d.parent

    def sync(self, key: str) -> None:
        path = self._path(key)
        self._require_init()
        try:
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            self._fsync_dirs(path.parent)
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{key} not found in {self.url}") from None
        except OSError as exc:
            raise _os_error(exc, f"cannot sync {key} in {self.url}") from None

    def check(self) -> None:
        if not self.root.is_dir():
            raise self._root_missing()
        if not (self.root / STORAGE_MARKER).is_file():
            raise not_initialised(self.url)

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
        self._require_init()
        try:
            if path.is_dir():
                raise FileNotFoundError
            return path.open("rb")
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{key} not found in {self.url}") from None
        except OSError as exc:
            raise _os_error(exc, f"cannot read {key} from {self.url}") from None

    def stat(self, key: str) -> ObjectInfo:
        path = self._path(key)
        self._require_init()
        try:
            st = path.stat()
        except FileNotFoundError:
            raise ObjectNotFoundError(f"{key} not found in {self.url}") from None
        except OSError as exc:
            raise _os_error(exc, f"cannot stat {key} in {self.url}") from None
        if not path.is_file():
            raise ObjectNotFoundError(f"{key} not found in {self.url}")
        return ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        self._require_init()
        head, _, _ = prefix.rpartition("/")
        start = self.root / head if head else self.root
        found: builtins.list[ObjectInfo] = []

        def unreadable(exc: OSError) -> None:
            # A directory that vanished while we walked is simply gone; one we may not read would
            # hide objects: a listing that silently leaves them out could make WAL look missing.
            if not isinstance(exc, FileNotFoundError):
                raise _os_error(exc, f"cannot list {exc.filename} in {self.url}")

        for dirpath, dirnames, filenames in os.walk(start, onerror=unreadable):
            if Path(dirpath) == self.root:
                dirnames[:] = [d for d in dirnames if d != TMP_DIR]
            rel_dir = os.path.relpath(dirpath, self.root)
            for name in filenames:
                key = name if rel_dir == "." else f"{rel_dir}/{name}"
                if not key.startswith(prefix):
                    continue
                try:
                    st = os.stat(os.path.join(dirpath, name))
                except FileNotFoundError:
                    continue  # deleted while we walked
                found.append(ObjectInfo(key, st.st_size, datetime.fromtimestamp(st.st_mtime, UTC)))
        found.sort(key=lambda o: o.key)
        yield from found

    def delete(self, key: str) -> None:
        path = self._path(key)
        self._require_init()
        try:
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _os_error(exc, f"cannot delete {key} from {self.url}") from None
        # Prune directories left empty so the tree stays navigable.
        parent = path.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def reap_interrupted(self, older_than_seconds: float) -> builtins.list[str]:
        """Delete temporary files of interrupted puts; return their names."""
        self._require_init()
        tmp_dir = self.root / TMP_DIR
        removed: builtins.list[str] = []
        if not tmp_dir.is_dir():
            return removed
        cutoff = time.time() - older_than_seconds
        for entry in tmp_dir.iterdir():
            try:
                if entry.stat().st_mtime < cutoff:
                    entry.unlink()
                    removed.append(entry.name)
            except FileNotFoundError:
                continue
        return removed

    def close(self) -> None:
        pass
