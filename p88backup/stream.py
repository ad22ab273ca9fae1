"""Composable byte-stream stages: zstd, age, SHA-256 and size counting.

Every stage is a *reader*: it wraps a source with ``read(n)`` and is itself
read with ``read(n)``, so stages stack without temporary files and storage
``put`` consumes the top of the stack::

    src = HashingReader(proc.stdout)              # raw bytes
    enc = encode(src, codec)                      # zstd (+ age)
    out = HashingReader(enc)                      # what is stored
    storage.put(key, out)

Outputs are the standard formats (``zstd -d`` and ``age -d`` read them).
Decoding checks what it can: zstd frame checksums and truncation, age
authentication, so corrupt data fails loudly instead of restoring quietly.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import zstandard

from p88backup.errors import CryptoError, VerifyError
from p88backup.storage.base import CHUNK, Readable

_F_SETPIPE_SZ = 1031


class HashingReader:
    """Passes bytes through, counting them and computing their SHA-256."""

    def __init__(self, src: Readable) -> None:
        self._src = src
        self._sha = hashlib.sha256()
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._src.read(size)
        self._sha.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def iter_chunks(src: Readable, size: int = CHUNK) -> Iterable[bytes]:
    while chunk := src.read(size):
        yield chunk


def copy_stream(src: Readable, out: BinaryIO | Any) -> int:
    """Copy everything from ``src`` to ``out.write``; return the byte count."""
    n = 0
    for chunk in iter_chunks(src):
        out.write(chunk)
        n += len(chunk)
    return n


def drain(src: Readable) -> int:
    """Read ``src`` to the end (so its end-of-stream checks run); return the byte count."""
    return sum(len(chunk) for chunk in iter_chunks(src))


def read_all(src: Readable) -> bytes:
    return b"".join(iter_chunks(src))


# -- zstd -----------------------------------------------------------------


def zstd_compress(src: Readable, level: int = 3, threads: int = 0) -> Readable:
    """Compress with zstd; ``threads=0`` uses one worker per CPU.

    Frames carry a content checksum, so ``zstd -d`` and our decoder detect
    corruption.
    """
    workers = threads or (os.cpu_count() or 1)
    cctx = zstandard.ZstdCompressor(level=level, threads=workers if workers > 1 else 0, write_checksum=True)
    return cctx.stream_reader(src, read_size=CHUNK)  # type: ignore[no-any-return]


class ZstdDecodeReader:
    """zstd decompression that fails on a truncated or corrupt stream.

    python-zstandard's ``stream_reader`` returns a short result without
    error when the input ends mid-frame; a restore must never accept that.
    Input is fed in adaptive pieces so that highly compressed data (WAL
    zero-fill) does not balloon into one huge output buffer.
    """

    def __init__(self, src: Readable) -> None:
        self._src = src
        self._dctx = zstandard.ZstdDecompressor()
        self._obj = self._dctx.decompressobj()
        self._in_frame = False
        self._frames = 0
        self._out = bytearray()
        self._eof = False
        self._feed = 64 * 1024

    def _fill(self) -> None:
        data = self._src.read(self._feed)
        if not data:
            self._eof = True
            if self._in_frame or self._frames == 0:
                raise VerifyError("zstd stream is truncated (ends inside a frame)")
            return
        try:
            while data:
                self._in_frame = True
                out = self._obj.decompress(data)
                self._out += out
                if len(out) > 8 * CHUNK:
                    self._feed = max(64, self._feed // 8)
                elif len(out) < CHUNK and self._feed < 64 * 1024:
                    self._feed *= 2
                if self._obj.eof:
                    self._frames += 1
                    self._in_frame = False
                    data = self._obj.unused_data
                    self._obj = self._dctx.decompressobj()
                else:
                    data = b""
        except zstandard.ZstdError as exc:
            raise VerifyError(f"zstd stream is corrupt: {exc}") from None

    def read(self, size: int = -1, /) -> bytes:
        want = size if size is not None and size >= 0 else None
        while not self._eof and (want is None or len(self._out) < want):
            self._fill()
        if want is None or want >= len(self._out):
            out = bytes(self._out)
            self._out.clear()
        else:
            out = bytes(self._out[:want])
            del self._out[:want]
        return out


# -- age ------------------------------------------------------------------


class _PipeStage:
    """Runs a push-style transform (reader -> writer) in a thread behind a pipe.

    pyrage's streaming API pushes into a writer; this turns it back into a
    reader so stages keep composing. Errors in the thread surface on read.
    """

    def __init__(self, work: Callable[[BinaryIO], None], name: str) -> None:
        rfd, wfd = os.pipe()
        try:
            fcntl.fcntl(wfd, _F_SETPIPE_SZ, CHUNK)
        except OSError:
            pass  # best effort: a bigger pipe only saves context switches
        self._reader = os.fdopen(rfd, "rb", buffering=CHUNK)
        self._error: BaseException | None = None
        writer = os.fdopen(wfd, "wb", buffering=CHUNK)

        def run() -> None:
            try:
                with writer:
                    work(writer)
            except BaseException as exc:  # handed to the reading side
                self._error = exc

        self._thread = threading.Thread(target=run, name=name, daemon=True)
        self._thread.start()

    def read(self, size: int = -1, /) -> bytes:
        data = self._reader.read(size)
        if not data:
            self._thread.join()
            if self._error is not None:
                raise self._error
        return data

    def close(self) -> None:
        self._reader.close()  # a writer still blocked gets EPIPE and ends
        self._thread.join(timeout=30)


class _Source:
    """File-like facade over a Readable for pyrage (it wants ``readinto``/``read``)."""

    def __init__(self, src: Readable) -> None:
        self._src = src

    def read(self, size: int = -1, /) -> bytes:
        return self._src.read(size)

    def readinto(self, buf: Any) -> int:
        data = self._src.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


def parse_recipients(keys: Iterable[str]) -> list[Any]:
    import pyrage

    out: list[Any] = []
    for key in keys:
        key = key.strip()
        if not key or key.startswith("#"):
            continue
        try:
            if key.startswith("age1"):
                out.append(pyrage.x25519.Recipient.from_str(key))
            else:
                out.append(pyrage.ssh.Recipient.from_str(key))
        except Exception:
            raise CryptoError(f"not a valid age recipient (public key): {key[:12]}...") from None
    return out


def load_identities(path: Path) -> list[Any]:
    """Read an age identity file (``AGE-SECRET-KEY-1...`` lines, ``#`` comments)."""
    import pyrage

    try:
        text = path.read_text()
    except OSError as exc:
        raise CryptoError(f"cannot read age identity file {path}: {exc.strerror}") from None
    if "PRIVATE KEY" in text:  # an ssh key file
        try:
            return [pyrage.ssh.Identity.from_buffer(text.encode())]
        except Exception:
            raise CryptoError(f"{path} is not a usable ssh identity for age") from None
    ids: list[Any] = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            try:
                ids.append(pyrage.x25519.Identity.from_str(line))
            except Exception:
                raise CryptoError(f"{path} holds a line that is not an age identity") from None
    if not ids:
        raise CryptoError(f"no age identity in {path}")
    return ids


def age_encrypt(src: Readable, recipients: list[Any]) -> Readable:
    import pyrage

    return _PipeStage(lambda w: pyrage.encrypt_io(_Source(src), w, recipients), "age-encrypt")


def age_decrypt(src: Readable, identities: list[Any]) -> Readable:
    import pyrage

    def work(w: BinaryIO) -> None:
        try:
            pyrage.decrypt_io(_Source(src), w, identities)
        except pyrage.DecryptError as exc:
            raise CryptoError(
                f"age decryption failed: {exc}",
                hint="is P88_AGE_IDENTITY_FILE the key matching the backup's recipients?",
            ) from None

    return _PipeStage(work, "age-decrypt")


# -- the standard pipeline ------------------------------------------------


@dataclass
class Codec:
    """How stored objects are encoded: zstd, then age when recipients are set.

    Reading needs the identity file only for encrypted objects; it is loaded
    on first use so that unencrypted restores never touch key material.
    """

    level: int = 3
    threads: int = 0
    recipient_keys: list[str] = field(default_factory=list)
    identity_file: Path | None = None
    _recipients: list[Any] | None = field(default=None, repr=False)
    _identities: list[Any] | None = field(default=None, repr=False)

    @property
    def encrypted(self) -> bool:
        return bool(self.recipient_keys)

    @property
    def suffix(self) -> str:
        return ".zst.age" if self.encrypted else ".zst"

    def recipients(self) -> list[Any]:
        if self._recipients is None:
            self._recipients = parse_recipients(self.recipient_keys)
        return self._recipients

    def identities(self) -> list[Any]:
        if self._identities is None:
            if self.identity_file is None:
                raise CryptoError(
                    "this backup is encrypted and no age identity is configured",
                    hint="set P88_AGE_IDENTITY_FILE (or age_identity_file) to the private key file",
                )
            self._identities = load_identities(self.identity_file)
        return self._identities


def encode(src: Readable, codec: Codec) -> Readable:
    out = zstd_compress(src, codec.level, codec.threads)
    if codec.encrypted:
        out = age_encrypt(out, codec.recipients())
    return out


def decode(src: Readable, codec: Codec, *, encrypted: bool) -> Readable:
    """Undo :func:`encode`. ``encrypted`` comes from the object's manifest or name."""
    if encrypted:
        src = age_decrypt(src, codec.identities())
    return ZstdDecodeReader(src)
