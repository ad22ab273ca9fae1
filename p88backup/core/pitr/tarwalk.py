"""Walk a tar stream as it flows past, without storing or extracting it.

A base backup streams from pg_basebackup into storage in one pass; on the
way we need two small members (``backup_label``, ``backup_manifest``), and
``verify`` needs every member's size and checksum. ``tarfile`` wants to own
the stream, so this is a small push parser over 512-byte tar blocks (ustar,
with GNU long names and pax headers understood) fed by a tee.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from p88backup.errors import VerifyError

BLOCK = 512


@dataclass
class Member:
    name: str
    size: int
    type: str  # "file", "dir", "link", "other"


class TarVisitor:
    """Override what you need; ``data`` is called with each piece of a file's content."""

    def start(self, member: Member) -> None: ...

    def data(self, member: Member, chunk: bytes) -> None: ...

    def end(self, member: Member) -> None: ...


def _octal(field: bytes) -> int:
    if field and field[0] & 0x80:  # GNU base-256 for large sizes
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def _pax_path(data: bytes) -> str | None:
    for record in data.decode("utf-8", "replace").split("\n"):
        _, _, kv = record.partition(" ")
        key, _, value = kv.partition("=")
        if key == "path":
            return value
    return None


class TarWalker:
    def __init__(self, visitor: TarVisitor) -> None:
        self.visitor = visitor
        self.members = 0
        self._buf = bytearray()
        self._member: Member | None = None
        self._left = 0  # content bytes of the current member still to come
        self._pad = 0  # padding bytes after it
        self._special: Callable[[bytes], None] | None = None
        self._special_data = bytearray()
        self._next_name: str | None = None
        self._zero_blocks = 0

    def feed(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._left:
                take = min(self._left, len(view))
                chunk = bytes(view[:take])
                if self._special is not None:
                    self._special_data += chunk
                elif self._member is not None:
                    self.visitor.data(self._member, chunk)
                self._left -= take
                view = view[take:]
                if not self._left:
                    self._finish_member()
                continue
            if self._pad:
                take = min(self._pad, len(view))
                self._pad -= take
                view = view[take:]
                continue
            need = BLOCK - len(self._buf)
            self._buf += view[:need]
            view = view[need:]
            if len(self._buf) == BLOCK:
                header, self._buf = bytes(self._buf), bytearray()
                self._header(header)

    def _header(self, h: bytes) -> None:
        if h == b"\0" * BLOCK:
            self._zero_blocks += 1
            return
        if self._zero_blocks:
            raise VerifyError("tar stream has data after its end marker")
        if h[257:262] != b"ustar":
            raise VerifyError("not a tar stream (no ustar header)")
        if _octal(h[148:156]) != sum(h[:148]) + 8 * 32 + sum(h[156:]):
            raise VerifyError("tar header checksum mismatch (corrupt stream)")
        size = _octal(h[124:136])
        typeflag = chr(h[156]) if h[156] else "0"
        name = h[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        prefix = h[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
        if prefix:
            name = f"{prefix}/{name}"
        self._left, self._pad = size, (-size) % BLOCK
        if typeflag in ("L", "x"):
            self._special_data = bytearray()
            self._special = self._long_name if typeflag == "L" else self._pax
            if not size:
                self._finish_member()
            return
        if self._next_name is not None:
            name, self._next_name = self._next_name, None
        kind = {"0": "file", "7": "file", "5": "dir", "1": "link", "2": "link"}.get(typeflag, "other")
        self._member = Member(
            name.removeprefix("./").rstrip("/") if kind == "dir" else name.removeprefix("./"),
            size if kind == "file" else 0,
            kind,
        )
        self.visitor.start(self._member)
        if not self._left:
            self._finish_member()

    def _long_name(self, data: bytes) -> None:
        self._next_name = data.split(b"\0", 1)[0].decode("utf-8", "replace")

    def _pax(self, data: bytes) -> None:
        path = _pax_path(data)
        if path:
            self._next_name = path

    def _finish_member(self) -> None:
        if self._special is not None:
            special, self._special = self._special, None
            special(bytes(self._special_data))
            return
        if self._member is not None:
            self.members += 1
            self.visitor.end(self._member)
            self._member = None

    def finish(self) -> None:
        """Raise unless the stream ended cleanly (end marker, nothing cut off)."""
        if self._left or self._pad or self._buf or self._member is not None:
            raise VerifyError("tar stream is truncated")
        if self._zero_blocks < 1:
            raise VerifyError("tar stream has no end marker (truncated)")


class CaptureMembers(TarVisitor):
    """Keep the content of a few named (small) members."""

    def __init__(self, names: set[str], limit: int = 512 * 1024 * 1024) -> None:
        self.names, self.limit = names, limit
        self.found: dict[str, bytearray] = {}

    def start(self, member: Member) -> None:
        if member.name in self.names:
            self.found[member.name] = bytearray()

    def data(self, member: Member, chunk: bytes) -> None:
        buf = self.found.get(member.name)
        if buf is not None:
            if len(buf) + len(chunk) > self.limit:
                raise VerifyError(f"{member.name} in the backup is larger than {self.limit} bytes")
            buf += chunk
