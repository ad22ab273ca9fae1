"""Storage behind one protocol; :func:`open_storage` picks the backend by URL.

Backends are imported only when used, so a ``file://`` archive command never
pays for importing boto3.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import unquote, urlsplit

from p88backup.errors import ConfigError
from p88backup.storage.base import ObjectInfo, Readable, Storage, validate_key

__all__ = ["ObjectInfo", "Readable", "Storage", "open_storage", "validate_key"]


def open_storage(url: str, *, retry_deadline: float = 120.0) -> Storage:
    """``file:///abs/path``, ``s3://bucket/prefix`` or ``memory://name``."""
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise ConfigError(f"storage URL must be file:///absolute/path, got {url!r}")
        from p88backup.storage.local import LocalStorage

        return LocalStorage(Path(unquote(parts.path)).resolve())
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError("storage URL s3:// needs a bucket: s3://bucket/prefix")
        from p88backup.storage.s3 import S3Storage

        return S3Storage(parts.netloc, unquote(parts.path), retry_deadline=retry_deadline)
    if parts.scheme == "memory":
        from p88backup.storage.memory import MemoryStorage

        return MemoryStorage(parts.netloc or "default")
    raise ConfigError(f"unsupported storage URL scheme {parts.scheme!r} (file, s3 or memory)")
