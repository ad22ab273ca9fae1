"""The age format read without a key (p88backup/agefile.py): real files made by pyrage (the
library p88backup encrypts with) and by the `age` tool, cut, grown and damaged."""

from __future__ import annotations

import io
import os
import subprocess
from pathlib import Path

import pyrage
import pytest

from p88backup import agefile
from p88backup.agefile import CHUNK_SIZE, NONCE_SIZE, TAG_SIZE, check_stream, opens, payload_problem
from p88backup.errors import VerifyError

A = pyrage.x25519.Identity.generate()
B = pyrage.x25519.Identity.generate()


def encrypted(size: int, *recipients: object) -> bytes:
    return bytes(pyrage.encrypt(os.urandom(size), list(recipients or [A.to_public()])))


def header_size(data: bytes) -> int:
    return data.index(b"\n", data.index(b"\n--- ") + 1) + 1


@pytest.mark.parametrize("plaintext", [0, 1, 1000, 64 * 1024 - 1, 64 * 1024, 64 * 1024 + 1, 2 * 64 * 1024, 200_000])
def test_whole_files_of_every_chunk_shape_pass(plaintext: int) -> None:
    data = encrypted(plaintext)
    info = check_stream(io.BytesIO(data), recipients=1)
    assert info.plaintext == plaintext
    assert info.payload == len(data) - header_size(data)
    assert info.chunks == max(1, -(-plaintext // (64 * 1024)))


@pytest.mark.parametrize(
    ("size", "ok"),
    [
        (NONCE_SIZE + TAG_SIZE, True),  # empty plaintext: one empty chunk
        (NONCE_SIZE + TAG_SIZE - 1, False),
        (NONCE_SIZE, False),
        (0, False),
        (NONCE_SIZE + CHUNK_SIZE, True),  # one full chunk, the last
        (NONCE_SIZE + CHUNK_SIZE + TAG_SIZE, False),  # an empty chunk after a full one
        (NONCE_SIZE + CHUNK_SIZE + TAG_SIZE + 1, True),
        (NONCE_SIZE + CHUNK_SIZE + 5, False),  # ends inside a tag
        (NONCE_SIZE + 3 * CHUNK_SIZE, True),
        (NONCE_SIZE + 3 * CHUNK_SIZE - 1, True),  # a last chunk one byte short of full
    ],
)
def test_payload_length_table(size: int, ok: bool) -> None:
    assert (payload_problem(size) is None) is ok


@pytest.mark.parametrize(
    ("cut", "message"),
    [
        (lambda d: d[: header_size(d) + NONCE_SIZE + CHUNK_SIZE + TAG_SIZE], "empty chunk after full ones"),
        (lambda d: d[: header_size(d) + NONCE_SIZE + CHUNK_SIZE + 7], "inside its tag"),
        (lambda d: d + b"\0" * (CHUNK_SIZE - (100 + TAG_SIZE) + 5), "inside its tag"),  # grown: 5 bytes past a chunk
        (lambda d: d[:40], "header is truncated"),
        (lambda d: d[: header_size(d) - 1], "header is truncated"),
        (lambda d: d[: header_size(d) + 10], "shorter than a nonce"),
        (lambda d: b"junk" + d, "not an age file"),
        (lambda d: d.replace(b"\n--- ", b"\n-- - ", 1), "neither a stanza nor the MAC"),
    ],
)
def test_cut_grown_or_damaged_files_fail(cut, message: str) -> None:  # type: ignore[no-untyped-def]
    data = encrypted(2 * 64 * 1024 + 100)  # last chunk: 100 bytes + tag
    with pytest.raises(VerifyError, match=message):
        check_stream(io.BytesIO(cut(data)))


def test_a_shorter_last_chunk_is_a_valid_shape() -> None:
    """What the structure cannot see: the last chunk one byte short is still a possible file.
    The SHA-256 of the stored bytes (and decryption, where the key is) catches that."""
    data = encrypted(2 * 64 * 1024 + 100)
    assert check_stream(io.BytesIO(data[:-1])).plaintext == 2 * 64 * 1024 + 99


def test_recipient_stanzas_are_counted_without_grease() -> None:
    two = encrypted(10, A.to_public(), B.to_public())
    assert check_stream(io.BytesIO(two), recipients=2).header.recipients == 2
    assert len(check_stream(io.BytesIO(two)).header.stanza_types) >= 2
    with pytest.raises(VerifyError, match="2 recipient stanzas, the manifest lists 1"):
        check_stream(io.BytesIO(two), recipients=1)


def test_files_of_the_age_tool_pass(tmp_path: Path) -> None:
    """The standard tool's output (DESIGN §4): the same format, read the same way."""
    key = tmp_path / "k.txt"
    r = subprocess.run(["age-keygen", "-o", str(key)], capture_output=True, text=True, check=True, timeout=30)
    public = r.stderr.split("Public key: ")[1].strip()
    plain = tmp_path / "plain"
    plain.write_bytes(os.urandom(150_000))
    out = tmp_path / "x.age"
    subprocess.run(["age", "-r", public, "-o", str(out), str(plain)], check=True, timeout=30)
    info = check_stream(io.BytesIO(out.read_bytes()), recipients=1)
    assert info.plaintext == 150_000


def test_armored_files_are_named() -> None:
    with pytest.raises(VerifyError, match="ASCII-armored"):
        check_stream(io.BytesIO(b"-----BEGIN AGE ENCRYPTED FILE-----\nYWdl\n-----END AGE ENCRYPTED FILE-----\n"))


def test_opens_tells_which_identity_unwraps_the_key_from_the_header_alone() -> None:
    data = encrypted(300_000)  # several chunks: only the header and the nonce are read
    src = io.BytesIO(data)
    assert opens(src, [A]) is True
    assert src.tell() < header_size(data) + NONCE_SIZE + agefile._READ + 1
    assert opens(io.BytesIO(data), [B]) is False
    assert opens(io.BytesIO(data), [B, A]) is True
    both = encrypted(5, A.to_public(), B.to_public())
    assert opens(io.BytesIO(both), [B]) is True


def test_opens_reports_a_damaged_header_mac() -> None:
    data = bytearray(encrypted(100))
    mac_at = data.index(b"\n--- ") + 6
    data[mac_at] = ord("A") if data[mac_at] != ord("A") else ord("B")
    with pytest.raises(VerifyError, match="Header MAC"):
        opens(io.BytesIO(bytes(data)), [A])
    assert opens(io.BytesIO(bytes(data)), [B]) is False  # no stanza for B at all: MAC never checked


@pytest.mark.parametrize("cut", [7, 0, -5])
def test_decrypting_a_cut_payload_is_a_verify_error(cut: int) -> None:
    """With the key, a cut payload fails decryption. pyrage raises a bare OSError for it, which the
    old age stage let through: verify and restore ended with exit 1 and a traceback, not exit 6."""
    from p88backup.stream import age_decrypt, read_all

    data = encrypted(200_000)
    end = header_size(data) + NONCE_SIZE + 2 * CHUNK_SIZE + cut if cut >= 0 else len(data) + cut
    with pytest.raises(VerifyError, match="age payload is damaged or truncated"):
        read_all(age_decrypt(io.BytesIO(data[:end]), [A]))
