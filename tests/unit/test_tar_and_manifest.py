"""Streaming tar walker and PostgreSQL backup_manifest checks."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from p88backup.core.pitr.backup_manifest import parse_backup_label, parse_backup_manifest
from p88backup.core.pitr.tarwalk import CaptureMembers, TarWalker
from p88backup.errors import VerifyError


def make_tar(files: dict[str, bytes], fmt: int = tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.mark.parametrize("piece", [1, 100, 512, 4096, 1 << 20])
@pytest.mark.parametrize("fmt", [tarfile.USTAR_FORMAT, tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_captures_members_whatever_the_piece_size(piece: int, fmt: int) -> None:
    long_name = "base/" + "d" * 90 + "/" + "x" * 60  # over 100 bytes: prefix field, GNU L or pax path
    blob = make_tar({"backup_label": b"label", long_name: b"y" * 3000, "backup_manifest": b"{}" * 500}, fmt)
    cap = CaptureMembers({"backup_label", "backup_manifest", long_name})
    walker = TarWalker(cap)
    for i in range(0, len(blob), piece):
        walker.feed(blob[i : i + piece])
    walker.finish()
    assert walker.members == 3
    assert bytes(cap.found["backup_label"]) == b"label"
    assert len(cap.found[long_name]) == 3000


def test_truncated_or_corrupt_tar_is_an_error() -> None:
    blob = make_tar({"a": b"z" * 5000})
    w = TarWalker(CaptureMembers(set()))
    w.feed(blob[:3000])
    with pytest.raises(VerifyError, match="truncated"):
        w.finish()
    bad = bytearray(blob)
    bad[10] ^= 0xFF  # inside the first header's name: the header checksum no longer matches
    with pytest.raises(VerifyError, match="checksum"):
        TarWalker(CaptureMembers(set())).feed(bytes(bad))


def manifest(files: list[dict], ranges: list[dict]) -> bytes:
    head = (
        '{ "PostgreSQL-Backup-Manifest-Version": 1,\n"Files": '
        + json.dumps(files)
        + ',\n"WAL-Ranges": '
        + json.dumps(ranges)
        + ",\n"
    )
    return (head + f'"Manifest-Checksum": "{hashlib.sha256(head.encode()).hexdigest()}"}}\n').encode()


def test_backup_manifest_checksum_and_ranges() -> None:
    raw = manifest(
        [{"Path": "PG_VERSION", "Size": 3, "Checksum-Algorithm": "CRC32C", "Checksum": "8a744722"}],
        [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}],
    )
    info = parse_backup_manifest(raw)
    assert info.data_size == 3 and info.end_lsn == 0x2000100 and info.end_timeline == 1
    tampered = raw.replace(b'"Size": 3', b'"Size": 4')
    with pytest.raises(VerifyError, match="checksum mismatch"):
        parse_backup_manifest(tampered)


def test_backup_label() -> None:
    label = parse_backup_label(
        b"START WAL LOCATION: 0/4000028 (file 000000010000000000000004)\nCHECKPOINT LOCATION: 0/4000060\n"
        b"BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-11-27 07:08:33 UTC\nLABEL: test\n"
        b"START TIMELINE: 1\n"
    )
    assert label.start_segment == "000000010000000000000004" and label.timeline == 1 and label.label == "test"
    assert label.start_time.isoformat() == "2026-11-27T07:08:33+00:00"
    with pytest.raises(VerifyError, match="lacks"):
        parse_backup_label(b"LABEL: nothing else\n")
