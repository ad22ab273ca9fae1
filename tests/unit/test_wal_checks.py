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


def test_a_name_that_does_not_fit_its_header_s_segment_size_is_a_verify_error() -> None:
    # ...0100 exists with 1 MB segments, not with 16 MB ones: the header decides, and says so.
    with pytest.raises(VerifyError, match="not a valid segment name for 16777216-byte segments"):
        check_segment("000000010000000000000100", header(0x100), SEG)
    mb = 1024 * 1024
    assert check_segment("000000010000000000000100", header(0x100, size=mb), mb).segment_size == mb


def test_every_key_of_a_wal_file_file_before_its_digest_record() -> None:
    from p88backup.catalog.layout import wal_digest_key, wal_file_keys

    name = "000000010000000000000003"
    assert wal_file_keys(name) == [
        f"wal/00000001/{name}.zst",
        f"wal/00000001/{name}.zst.age",
        f"wal/00000001/{name}.digest.json",
    ]
    assert wal_digest_key(name) == wal_file_keys(name)[-1] and name_of_key(wal_digest_key(name)) is None
