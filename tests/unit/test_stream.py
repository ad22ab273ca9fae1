"""Stream stages: round trips, standard-tool compatibility, and loud failures."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
from pathlib import Path

import pytest

from p88backup.errors import CryptoError, VerifyError
from p88backup.storage import open_storage
from p88backup.stream import HashingReader, ZstdDecodeReader, decode, encode, make_codec, read_all, zstd_compress
from tests.harness.helpers import initialised


def keypair(tmp_path: Path) -> tuple[str, Path]:
    r = subprocess.run(["age-keygen", "-o", str(tmp_path / "k.txt")], capture_output=True, text=True, check=True)
    public = r.stderr.split("Public key: ")[1].strip()
    return public, tmp_path / "k.txt"


DATA = os.urandom(3 << 20) + b"compressible " * 200_000 + b"\0" * (20 << 20)


@pytest.mark.parametrize("encrypted", [False, True])
def test_roundtrip_through_storage_and_standard_tools(tmp_path: Path, encrypted: bool) -> None:
    """Acceptance: what we store decodes with the `zstd` and `age` command-line tools."""
    public, key = keypair(tmp_path)
    codec = make_codec(level=3, recipients=[public] if encrypted else [], identity_file=key)
    storage = initialised(open_storage(f"file://{tmp_path}/store"))
    raw = HashingReader(io.BytesIO(DATA))
    stored = HashingReader(encode(raw, codec))
    storage.put("obj" + codec.suffix, stored)
    assert raw.size == len(DATA) and raw.hexdigest() == hashlib.sha256(DATA).hexdigest()
    path = tmp_path / "store" / ("obj" + codec.suffix)
    assert stored.size == path.stat().st_size < len(DATA)
    assert stored.hexdigest() == hashlib.sha256(path.read_bytes()).hexdigest()

    cmd = f"age -d -i {key} {path} | zstd -d -q" if encrypted else f"zstd -d -q -c {path}"
    out = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], capture_output=True, check=True).stdout
    assert out == DATA

    with storage.open("obj" + codec.suffix) as fh:
        assert read_all(decode(fh, codec, encrypted=encrypted)) == DATA


def test_decoder_reads_what_the_zstd_tool_writes(tmp_path: Path) -> None:
    src = tmp_path / "x"
    src.write_bytes(DATA)
    subprocess.run(["zstd", "-q", "-19", "-T2", str(src), "-o", str(tmp_path / "x.zst")], check=True)
    with open(tmp_path / "x.zst", "rb") as fh:
        assert read_all(ZstdDecodeReader(fh)) == DATA


def test_concatenated_frames_decode() -> None:
    a = read_all(zstd_compress(io.BytesIO(b"first "), 3, 1))
    b = read_all(zstd_compress(io.BytesIO(b"second"), 3, 1))
    assert read_all(ZstdDecodeReader(io.BytesIO(a + b))) == b"first second"


@pytest.mark.parametrize("cut", [1, 4, 100])
def test_truncated_zstd_fails(cut: int) -> None:
    blob = read_all(zstd_compress(io.BytesIO(DATA), 3, 0))
    with pytest.raises(VerifyError, match="truncated"):
        read_all(ZstdDecodeReader(io.BytesIO(blob[:-cut])))


def test_empty_input_is_not_a_valid_stream() -> None:
    with pytest.raises(VerifyError, match="truncated"):
        read_all(ZstdDecodeReader(io.BytesIO(b"")))


def test_flipped_byte_fails() -> None:
    blob = bytearray(read_all(zstd_compress(io.BytesIO(os.urandom(1 << 20) * 2), 3, 0)))
    blob[len(blob) // 3] ^= 0x40
    with pytest.raises(VerifyError):
        read_all(ZstdDecodeReader(io.BytesIO(bytes(blob))))


def rss() -> int:
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) << 10 for ln in fh if ln.startswith("VmRSS:"))


def test_highly_compressed_input_decodes_in_bounded_memory() -> None:
    zeros = 512 << 20
    cctx = __import__("zstandard").ZstdCompressor(level=3, write_checksum=True)
    blob = cctx.compress(b"\0" * (64 << 20)) * 8  # 8 frames of 64 MiB zeros, a few KiB in all
    start, peak, total = rss(), 0, 0
    reader = ZstdDecodeReader(io.BytesIO(blob))
    while chunk := reader.read(1 << 20):
        total += len(chunk)
        peak = max(peak, rss())
    assert total == zeros
    assert peak - start < 64 << 20  # never a whole frame's output at once


def test_wrong_or_missing_key(tmp_path: Path) -> None:
    public, _ = keypair(tmp_path / "a" if (tmp_path / "a").mkdir() is None else tmp_path)
    _, other = keypair(tmp_path / "b" if (tmp_path / "b").mkdir() is None else tmp_path)
    blob = read_all(encode(io.BytesIO(b"secret data"), make_codec(recipients=[public])))
    with pytest.raises(CryptoError, match="decryption failed"):
        read_all(decode(io.BytesIO(blob), make_codec(identity_file=other), encrypted=True))
    with pytest.raises(CryptoError, match="no age identity is configured"):
        read_all(decode(io.BytesIO(blob), make_codec(), encrypted=True))


def test_bad_recipient_is_rejected_up_front() -> None:
    with pytest.raises(CryptoError, match="not a valid age recipient"):
        make_codec(recipients=["age1notakey"])


def test_source_error_propagates_through_age_stage(tmp_path: Path) -> None:
    public, _ = keypair(tmp_path)

    class Broken:
        def read(self, n: int = -1) -> bytes:
            raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        read_all(encode(Broken(), make_codec(recipients=[public])))
