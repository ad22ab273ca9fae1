"""In-memory storage for unit tests and dry runs (``memory://name``).

Objects live in a process-wide registry keyed by the URL's name, so two
``open_storage("memory://x")`` calls see the same objects, as two processes
would with real storage. Like every backend it refuses to work until it is
initialised (:meth:`MemoryStorage.init`): tests meet the same rule as production.
"""

from __future__ import annotations

import builtins
import io
import threading
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import BinaryIO

from p88backup.catalog.layout import STORAGE_MARKER
from p88backup.errors import ObjectExistsError, ObjectNotFoundError
from p88backup.storage.base import (
    CHUNK,
    InitOutcome,
    ObjectInfo,
    Readable,
    not_initialised,
    validate_key,
    validate_prefix,
)

_REGISTRY: dict[str, dict[str, tuple[bytes, datetime]]] = {}
_LOCK = threading.Lock()


class MemoryStorage:
    def __init__(self, name: str = "default") -> None:
        self.url = f"memory://{name}"
        with _LOCK:
            self._objects = _REGISTRY.setdefault(name, {})

    def _require_init(self) -> None:
        if STORAGE_MARKER not in self._objects:
            raise not_initialised(self.url)

    def init(self, marker: bytes) -> InitOutcome:
        with _LOCK:
            if STORAGE_MARKER in self._objects:
                return "already"
            had_objects = bool(self._objects)
            self._objects[STORAGE_MARKER] = (marker, datetime.now(UTC))
        return "adopted" if had_objects else "initialised"

    def put(self, key: str, data: Readable, *, overwrite: bool = True) -> ObjectInfo:
        validate_key(key)
        self._require_init()
        if not overwrite and key in self._objects:
            raise ObjectExistsError(f"{key} already exists in {self.url}")
        buf = io.BytesIO()
        while chunk := data.read(CHUNK):
            buf.write(chunk)
        now = datetime.now(UTC)
        with _LOCK:
            if not overwrite and key in self._objects:
                raise ObjectExistsError(f"{key} already exists in {self.url}")
            self._objects[key] = (buf.getvalue(), now)
        return ObjectInfo(key, buf.tell(), now)

    def open(self, key: str) -> BinaryIO:
        return io.BytesIO(self._get(key)[0])

    def stat(self, key: str) -> ObjectInfo:
        body, modified = self._get(key)
        return ObjectInfo(key, len(body), modified)

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        validate_prefix(prefix)
        self._require_init()
        with _LOCK:
            items = sorted((k, v) for k, v in self._objects.items() if k.startswith(prefix))
        for key, (body, modified) in items:
            yield ObjectInfo(key, len(body), modified)

    def sync(self, key: str) -> None:
        validate_key(key)
        self._require_init()

    def check(self) -> None:
        self._require_init()  # the storage itself exists as long as this process does

    def delete(self, key: str) -> None:
        validate_key(key)
        self._require_init()
        with _LOCK:
            self._objects.pop(key, None)

    def delete_many(self, keys: Iterable[str]) -> None:
        for key in keys:
            self.delete(key)

    def reap_interrupted(self, older_than_seconds: float) -> builtins.list[str]:
        self._require_init()
        return []  # puts here are all-or-nothing within the process

    def close(self) -> None:
        pass

    def _get(self, key: str) -> tuple[bytes, datetime]:
        validate_key(key)
        self._require_init()
        try:
            return self._objects[key]
        except KeyError:
            raise ObjectNotFoundError(f"{key} not found in {self.url}") from None
