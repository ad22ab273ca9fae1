"""WAL file validation and archive key layout (pure parts of core/wal.py)."""

from __future__ import annotations

import pytest

from p88backup.catalog.layout import wal_key
from p88backup.catalog.layout import wal_name_of_key as name_of_key
from p88backup.core.wal.archive import check_segment
from p88backup.errors import VerifyError
from tests.harness.helpers import SEG
from tests.harness.helpers import wal_header as header


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
