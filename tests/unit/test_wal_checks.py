"""WAL file validation and archive key layout (pure parts of core/wal.py)."""

from __future__ import annotations

import struct

import pytest

from p88backup.core.wal import check_segment, name_of_key, wal_key
from p88backup.errors import VerifyError

SEG = 16 * 1024 * 1024


def header(segno: int, size: int = SEG, info: int = 0x0002) -> bytes:
    # XLogLongPageHeaderData: magic, info, tli, pageaddr, rem_len, pad, sysid, seg_size, blcksz
    return struct.pack("<HHIQI4xQII", 0xD110, info, 1, segno * size, 0, 7433, size, 8192)


def test_a_real_looking_segment_passes() -> None:
    h = check_segment("000000010000000000000003", header(3), SEG)
    assert h.segment_size == SEG and h.system_identifier == 7433


@pytest.mark.parametrize(
    ("name", "head", "size", "message"),
    [
        ("000000010000000000000003", header(4), SEG, "belongs to another segment"),
        ("000000010000000000000003", header(3), SEG - 1, "header says segments are"),
        ("000000010000000000000003", header(3, info=0), SEG, "long page header"),
        ("000000010000000000000003", b"short", SEG, "too short"),
    ],
)
def test_bad_segments(name: str, head: bytes, size: int, message: str) -> None:
    with pytest.raises(VerifyError, match=message):
        check_segment(name, head, size)


@pytest.mark.parametrize(
    ("name", "suffix", "key"),
    [
        ("000000010000000000000003", ".zst", "wal/00000001/000000010000000000000003.zst"),
        ("00000002.history", ".zst.age", "wal/00000002/00000002.history.zst.age"),
        (
            "000000010000000000000003.00000028.backup",
            ".zst",
            "wal/00000001/000000010000000000000003.00000028.backup.zst",
        ),
    ],
)
def test_keys_round_trip(name: str, suffix: str, key: str) -> None:
    assert wal_key(name, suffix) == key
    assert name_of_key(key) == name
