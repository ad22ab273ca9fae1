"""Composable byte-stream stages: zstd, age, SHA-256 and size counting.

Every stage is a *reader*: it wraps a source with ``read(n)`` and is itself
read with ``read(n)``, so stages stack without temporary files and storage
``put`` consumes the top of the stack::

    src = CountingReader(proc.stdout)             # raw bytes
    enc = encode(src, codec)                      # zstd (+ age)
    out = HashingReader(enc)                      # what is stored: size + SHA-256
    storage.put(key, out)

Outputs are the standard formats (``zstd -d`` and ``age -d`` read them).
Decoding checks what it can: zstd frame checksums and truncation, age
authentication, so corrupt data fails loudly instead of restoring quietly.
"""

from __future__ import annotations

import fcntl
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


class CountingReader:
    """Passes bytes through, counting them."""

    def __init__(self, src: Readable) -> None:
        self._src = src
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._src.read(size)
        self.size += len(data)
        return data


class HashingReader(CountingReader):
    """Passes bytes through, counting them and computing their SHA-256."""

    def __init__(self, src: Readable) -> None:
        import hashlib  # not at module level: the archive fast path does not hash

        super().__init__(src)
        self._sha = hashlib.sha256()

    def read(self, size: int = -1, /) -> bytes:
        data = self._src.read(size)
        self._sha.update(data)
        self.size += len(data)
        return data

    def hexdigest(self) -> str:
        return self._sha.hexdigest()


def widen_pipe(fd: int, size: int = CHUNK) -> None:
    """Grow a pipe's buffer (64 KiB by default) to ``size``: far fewer context
    switches between the two ends. Best effort."""
    try:
        fcntl.fcntl(fd, _F_SETPIPE_SZ, size)
    except OSError:
        pass


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
    # 4 MiB jobs instead of the default (4 x window, 8 MiB at level 3): less memory per
    # worker (bench/dump_bench.py: RSS 105 -> ~70 MB) at the same ratio and speed.
    params = zstandard.ZstdCompressionParameters.from_level(
        level, threads=workers if workers > 1 else 0, job_size=4 << 20, write_checksum=1
    )
    cctx = zstandard.ZstdCompressor(compression_params=params)
    return cctx.stream_reader(src, read_size=CHUNK)  # type: ignore[arg-type]


class ZstdFrameWalker:
    """Follows the zstd frame structure (RFC 8878 §3.1) over compressed bytes.

    python-zstandard's readers return a short result *without error* when
    the input stops mid-frame (even when only the 4 checksum bytes are
    missing). Walking the block headers alongside costs a few bytes of work
    per 128 KiB block and tells exactly whether the stream ended cleanly.
    """

    _MAGIC = 0xFD2FB528

    def __init__(self) -> None:
        self.frames = 0
        self._state = "magic"
        self._need = 4
        self._buf = b""
        self._skip = 0
        self._checksum = False

    def feed(self, data: bytes) -> None:
        i, n = 0, len(data)
        while i < n:
            if self._skip:
                take = min(self._skip, n - i)
                self._skip -= take
                i += take
                continue
            take = min(self._need - len(self._buf), n - i)
            self._buf += data[i : i + take]
            i += take
            if len(self._buf) == self._need:
                header, self._buf = self._buf, b""
                self._advance(header)

    def _advance(self, h: bytes) -> None:
        state = self._state
        if state == "magic":
            magic = int.from_bytes(h, "little")
            if magic == self._MAGIC:
                self._state, self._need = "descriptor", 1
            elif magic & 0xFFFFFFF0 == 0x184D2A50:
                self._state, self._need = "skippable", 4
            else:
                raise VerifyError("not a zstd stream (bad frame magic)")
        elif state == "skippable":
            self._skip = int.from_bytes(h, "little")
            self._state, self._need = "magic", 4
        elif state == "descriptor":
            d = h[0]
            single = (d >> 5) & 1
            self._checksum = bool((d >> 2) & 1)
            fcs = (1 if single else 0, 2, 4, 8)[d >> 6]
            rest = (0 if single else 1) + (0, 1, 2, 4)[d & 3] + fcs
            self._state, self._need = "block", 3
            self._skip = rest
        elif state == "block":
            b = int.from_bytes(h, "little")
            last, kind, size = b & 1, (b >> 1) & 3, b >> 3
            if kind == 3:
                raise VerifyError("zstd stream is corrupt (reserved block type)")
            self._skip = 1 if kind == 1 else size
            if last:
                if self._checksum:
                    self._state, self._need = "checksum", 4
                else:
                    self._frame_done()
        elif state == "checksum":
            self._frame_done()

    def _frame_done(self) -> None:
        self.frames += 1
        self._state, self._need = "magic", 4

    def finish(self) -> None:
        """Raise unless the stream ended exactly after a complete frame."""
        if self.frames == 0 or self._state != "magic" or self._buf or self._skip:
            raise VerifyError("zstd stream is truncated (ends inside a frame)")


class _Tee:
    def __init__(self, src: Readable, walker: ZstdFrameWalker) -> None:
        self._src, self._walker = src, walker

    def read(self, size: int = -1, /) -> bytes:
        data = self._src.read(size)
        self._walker.feed(data)
        return data


class ZstdDecodeReader:
    """zstd decompression (all frames) that fails on truncated or corrupt input.

    Decompression is python-zstandard's ``stream_reader`` (bounded output
    per read, frame checksums verified); :class:`ZstdFrameWalker` adds the
    end-of-stream completeness check it lacks.
    """

    def __init__(self, src: Readable) -> None:
        self._walker = ZstdFrameWalker()
        self._reader = zstandard.ZstdDecompressor().stream_reader(
            _Tee(src, self._walker),  # type: ignore[arg-type]  # any object with read() works
            read_size=CHUNK,
            read_across_frames=True,
        )
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        if self._done:
            return b""
        try:
            data: bytes = self._reader.read(size if size is not None and size >= 0 else -1)
        except zstandard.ZstdError as exc:
            raise VerifyError(f"zstd stream is corrupt: {exc}") from None
        if not data and size != 0:
            self._done = True
            self._walker.finish()
        return data


# -- age ------------------------------------------------------------------


class _PipeStage:
    """Runs a push-style transform (reader -> writer) in a thread behind a pipe.

    pyrage's streaming API pushes into a writer; this turns it back into a
    reader so stages keep composing. Errors in the thread surface on read.
    """

    def __init__(self, work: Callable[[BinaryIO], None], name: str) -> None:
        rfd, wfd = os.pipe()
        widen_pipe(wfd)
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
    """File-like facade over a Readable for pyrage.

    pyrage wraps an exception raised by ``read`` into its own error type;
    we keep the original so that, say, a failed pg_dump still surfaces as a
    PgToolError and not as an encryption problem.
    """

    def __init__(self, src: Readable) -> None:
        self._src = src
        self.error: BaseException | None = None

    def read(self, size: int = -1, /) -> bytes:
        try:
            return self._src.read(size)
        except BaseException as exc:
            self.error = exc
            raise

    def readinto(self, buf: Any) -> int:
        data = self.read(len(buf))
        buf[: len(data)] = data
        return len(data)

    def readable(self) -> bool:
        return True


def parse_recipients(keys: Iterable[str]) -> list[Any]:
    keys = [k.strip() for k in keys if k.strip() and not k.strip().startswith("#")]
    if not keys:
        return []  # and no pyrage import: unencrypted archiving stays light
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

    def work(w: BinaryIO) -> None:
        source = _Source(src)
        try:
            pyrage.encrypt_io(source, w, recipients)
        except pyrage.EncryptError as exc:
            if source.error is not None:
                raise source.error from None
            raise CryptoError(f"age encryption failed: {exc}") from None

    return _PipeStage(work, "age-encrypt")


def age_decrypt(src: Readable, identities: list[Any]) -> Readable:
    import pyrage

    def work(w: BinaryIO) -> None:
        source = _Source(src)
        try:
            pyrage.decrypt_io(source, w, identities)
        except pyrage.DecryptError as exc:
            if source.error is not None:
                raise source.error from None
            raise CryptoError(
                f"age decryption failed: {exc}",
                hint="is P88_AGE_IDENTITY_FILE the key matching the backup's recipients?",
            ) from None
        except OSError as exc:
            # pyrage reports a damaged or cut payload (the key matched) as a bare OSError
            if source.error is not None:
                raise source.error from None
            if isinstance(exc, BrokenPipeError):
                raise  # our reader went away; nobody is waiting for this error
            raise VerifyError(f"age payload is damaged or truncated: {exc}") from None

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


def make_codec(
    *,
    level: int = 3,
    threads: int = 0,
    recipients: list[str] | None = None,
    recipients_file: Path | None = None,
    identity_file: Path | None = None,
) -> Codec:
    """A codec for writing (recipients) and reading (identity file).

    Encryption is on exactly when recipients are configured; we never make
    up a key. Recipients are parsed here so a typo fails before any work.
    """
    keys = [k.strip() for k in recipients or [] if k.strip()]
    if recipients_file is not None:
        try:
            lines = recipients_file.read_text().splitlines()
        except OSError as exc:
            raise CryptoError(f"cannot read age recipients file {recipients_file}: {exc.strerror}") from None
        keys.extend(k.strip() for k in lines if k.strip() and not k.strip().startswith("#"))
    parse_recipients(keys)
    return Codec(level=level, threads=threads, recipient_keys=keys, identity_file=identity_file)
