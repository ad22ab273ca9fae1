"""Local-filesystem storage (``file:///var/backups/p88``).

A put writes a temporary file under ``<root>/.p88tmp/``, fsyncs it, moves it
into place (``rename``, or ``link`` for create-only so that an existing object
is never replaced), then fsyncs the directories up to the root. Killed
mid-put, it leaves only a temporary file that is never listed;
:meth:`LocalStorage.reap_interrupted` clears those.
"""

from __future__ import annotations

import builtins
import errno
import os
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from p88backup.errors import ObjectExistsError, ObjectNotFoundError, StorageError
from p88backup.storage.base import CHUNK, ObjectInfo, Readable, validate_key, validate_prefix

TMP_DIR = ".p88tmp"
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

    def _makedirs(self, directory: Path) -> None:
        """Create missing parents, fsyncing each new entry's parent for durability."""
        missing: list[Path] = []
        d = directory
        while not d.exists():
            missing.append(d)
            d = d.parent
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                continue
            _fsync_dir(d.parent)

    def put(self, key: str, data: Readable, *, overwrite: bool = True) -> ObjectInfo:
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
            raise StorageError(
                f"storage root {self.root} does not exist or is not a directory",
                hint="is the backup volume mounted? (P88_STORAGE_URL)",
            )

    def open(self, key: str) -> BinaryIO:
        path = self._path(key)
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
        head, _, _ = prefix.rpartition("/")
        start = self.root / head if head else self.root
        found: builtins.list[ObjectInfo] = []
        for dirpath, dirnames, filenames in os.walk(start):
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
