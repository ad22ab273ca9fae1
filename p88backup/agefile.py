"""The age file format (``age-encryption.org/v1``), read without a private key.

What an encrypted object shows to someone without its key:

* the **header**: the version line, one stanza per recipient (``-> X25519 ...``
  plus a base64 body), random "grease" stanzas that age adds and that are no
  recipient, and the ``---`` line with the header MAC;
* the **payload length**: a 16-byte nonce, then STREAM chunks of 64 KiB of
  plaintext plus a 16-byte tag each; the last chunk may be shorter or full,
  and is empty only when it is the only one.

So without the key one can prove that the header is whole and well formed,
that it has as many recipient stanzas as the manifest lists recipients, and
that the payload length is one age can produce. That last check is weak on
its own: a file cut at an arbitrary byte usually still looks like one with a
shorter last chunk (only cuts that end inside a tag, or leave an empty chunk
after full ones, show), and a changed byte is invisible. The size and
SHA-256 the manifest records are what catch those; decryption, where the
key is, authenticates every chunk and the end of the stream.

With a key, :func:`opens` answers "can these identities open this file?" from
the header alone (pyrage unwraps the file key, then stops at the missing
payload), which is how ``p88backup keys --check`` looks at every stored
object without downloading it.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from typing import Any

from p88backup.errors import VerifyError
from p88backup.storage.base import Readable

VERSION_LINE = b"age-encryption.org/v1"
NONCE_SIZE = 16
TAG_SIZE = 16
CHUNK_PLAINTEXT = 64 * 1024
CHUNK_SIZE = CHUNK_PLAINTEXT + TAG_SIZE
# Recipient types p88backup writes (stream.parse_recipients): one stanza per recipient.
RECIPIENT_TYPES = frozenset({"X25519", "ssh-ed25519", "ssh-rsa"})
MAX_HEADER = 1024 * 1024  # far above any header p88backup writes (about 100 bytes per recipient)
_BODY_LINE = 64
_B64 = re.compile(rb"^[A-Za-z0-9+/]*$")
_ARG = re.compile(rb"^[\x21-\x7e]+$")
_READ = 64 * 1024


@dataclass(frozen=True)
class AgeHeader:
    stanza_types: tuple[str, ...]
    size: int  # bytes of the header, through the newline after the MAC

    @property
    def recipients(self) -> int:
        """Stanzas that wrap the file key for a recipient (grease stanzas are not counted)."""
        return sum(1 for t in self.stanza_types if t in RECIPIENT_TYPES)


@dataclass(frozen=True)
class AgeFileInfo:
    header: AgeHeader
    payload: int  # bytes after the header: nonce and chunks
    chunks: int
    plaintext: int  # bytes the file decrypts to


def _b64_decode(text: bytes) -> bytes:
    """age's base64: standard alphabet, no padding (canonical)."""
    if not _B64.match(text):
        raise ValueError("not base64")
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    except binascii.Error:
        raise ValueError("not base64") from None


class _Lines:
    """Line reader over a stream that keeps what it read past the header."""

    def __init__(self, src: Readable, what: str) -> None:
        self.src, self.what = src, what
        self.buf = b""
        self.used = 0

    def line(self) -> bytes:
        while True:
            end = self.buf.find(b"\n", self.used)
            if end >= 0:
                line = self.buf[self.used : end]
                self.used = end + 1
                return line
            if len(self.buf) > MAX_HEADER:
                raise VerifyError(f"{self.what}: age header longer than {MAX_HEADER} bytes")
            more = self.src.read(_READ)
            if not more:
                raise VerifyError(f"{self.what}: age header is truncated")
            self.buf += more


def read_header(src: Readable, what: str = "object") -> tuple[AgeHeader, bytes]:
    """Parse the header from the start of ``src``; return it and every byte read so far
    (the header's ``size`` bytes, then the start of the payload)."""
    lines = _Lines(src, what)
    first = lines.line()
    if first != VERSION_LINE:
        if first.startswith(b"-----BEGIN AGE ENCRYPTED FILE"):
            raise VerifyError(f"{what}: an ASCII-armored age file (p88backup writes binary age files)")
        raise VerifyError(f"{what}: not an age file (no {VERSION_LINE.decode()} line)")
    types: list[str] = []
    while True:
        line = lines.line()
        if line.startswith(b"--- "):
            try:
                mac = _b64_decode(line[4:])
            except ValueError:
                mac = b""
            if len(mac) != 32:
                raise VerifyError(f"{what}: age header MAC line is malformed")
            break
        if not line.startswith(b"-> "):
            raise VerifyError(f"{what}: age header line is neither a stanza nor the MAC")
        args = line[3:].split(b" ")
        if not all(_ARG.match(a) for a in args):
            raise VerifyError(f"{what}: age stanza has a malformed argument")
        while True:  # the body: full 64-column lines, then a shorter (possibly empty) last one
            body = lines.line()
            if len(body) > _BODY_LINE or not _B64.match(body):
                raise VerifyError(f"{what}: age stanza body is malformed")
            if len(body) < _BODY_LINE:
                break
        types.append(args[0].decode())
    if not types:
        raise VerifyError(f"{what}: age header has no recipient stanza")
    return AgeHeader(tuple(types), lines.used), lines.buf


def payload_problem(size: int) -> str | None:
    """Why ``size`` bytes after the header cannot be an age payload (None if they can).

    Pure arithmetic over the STREAM layout: nonce, full chunks, a last chunk of
    at least a tag; an empty last chunk only when it is the first.
    """
    if size < NONCE_SIZE + TAG_SIZE:
        return f"payload of {size} bytes is shorter than a nonce and one chunk: truncated"
    full, last = divmod(size - NONCE_SIZE, CHUNK_SIZE)
    if last == 0:
        return None  # the last chunk is a full one
    if last < TAG_SIZE:
        return f"payload ends {last} bytes into a chunk, inside its tag: truncated or extended"
    if last == TAG_SIZE and full > 0:
        return "payload ends with an empty chunk after full ones: truncated at a chunk boundary"
    return None


def plaintext_size(size: int) -> int:
    """Bytes a payload of ``size`` bytes (valid per :func:`payload_problem`) decrypts to."""
    chunks = chunk_count(size)
    return size - NONCE_SIZE - chunks * TAG_SIZE


def chunk_count(size: int) -> int:
    return max(1, -(-(size - NONCE_SIZE) // CHUNK_SIZE))


def check_stream(src: Readable, *, recipients: int | None = None, what: str = "object") -> AgeFileInfo:
    """Read ``src`` to its end and check it is a whole age file; raise VerifyError if not.

    ``recipients``: how many recipients the manifest lists for it (None or 0: not compared).
    """
    header, seen = read_header(src, what)
    if recipients and header.recipients != recipients:
        raise VerifyError(
            f"{what}: the age header has {header.recipients} recipient stanzas, the manifest lists {recipients}"
        )
    size = len(seen) - header.size
    while chunk := src.read(1024 * 1024):
        size += len(chunk)
    problem = payload_problem(size)
    if problem is not None:
        raise VerifyError(f"{what}: {problem}")
    return AgeFileInfo(header, size, chunk_count(size), plaintext_size(size))


def opens(src: Readable, identities: list[Any], what: str = "object") -> bool:
    """Whether one of ``identities`` unwraps this age file's key (reads the header and the nonce only).

    pyrage needs no payload to try the identities: with a matching one it gets
    as far as the payload and reports the file truncated; with none it says
    "No matching keys found" first. Anything else (a header MAC that does not
    match: a damaged header) is a VerifyError.
    """
    import pyrage

    header, seen = read_header(src, what)
    want = header.size + NONCE_SIZE
    data = bytearray(seen[:want])
    while len(data) < want and (more := src.read(want - len(data))):
        data += more
    try:
        pyrage.decrypt(bytes(data), identities)
    except pyrage.DecryptError as exc:
        message = str(exc)
        if "No matching keys" in message:
            return False
        if "truncated" not in message:
            raise VerifyError(f"{what}: age header does not check out with the key that opens it ({message})") from None
    return True
