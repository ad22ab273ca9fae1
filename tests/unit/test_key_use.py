"""Which stored backups still need which age key (p88backup/core/retention/keys.py): the pure rule
by tables, and the exact header check on the memory backend."""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta

import pyrage
import pytest

from p88backup.catalog.layout import wal_digest_key, wal_key
from p88backup.core.retention.keys import (
    EncryptedBackup,
    StoredWal,
    key_report,
    stored_wal,
    switch_time,
    unopenable,
)
from p88backup.storage.memory import MemoryStorage
from tests.harness.helpers import initialised

T0 = datetime(2026, 11, 1, tzinfo=UTC)


def day(n: int) -> datetime:
    return T0 + timedelta(days=n)


def bk(n: int, *keys: str, kind: str = "dump") -> EncryptedBackup:
    return EncryptedBackup(kind, f"2026110{n}T000000Z", day(n), tuple(keys))


# A -> A+B -> B: the rotation of the runbook
ROTATION = [bk(1, "A"), bk(1, "A", kind="basebackup"), bk(2, "A", "B"), bk(3, "B")]


@pytest.mark.parametrize(
    ("backups", "configured", "since"),
    [
        (ROTATION, {"B"}, day(2)),  # the overlap backup lists B: B took over there
        (ROTATION, {"A", "B"}, day(1)),
        (ROTATION, {"C"}, None),  # nothing is written to C yet
        ([bk(1, "B"), bk(2, "A"), bk(3, "B")], {"B"}, day(3)),  # the newest unbroken run only
        ([bk(1), bk(2, "B")], {"B"}, day(2)),  # unencrypted backups do not count
        ([], {"B"}, None),
    ],
)
def test_switch_time_table(backups: list[EncryptedBackup], configured: set[str], since: datetime | None) -> None:
    assert switch_time(backups, configured) == since


def test_during_the_overlap_both_keys_are_needed() -> None:
    report = key_report(ROTATION[:3], [], ["A", "B"])
    assert [(k.key, k.configured, k.needed) for k in report.keys] == [("A", True, True), ("B", True, True)]


def test_after_the_rotation_the_old_key_is_needed_by_what_only_it_opens() -> None:
    report = key_report(ROTATION, [], ["B"])
    a = report.use("A")
    assert a is not None and not a.configured and a.needed
    assert a.backups == ["dump 20261101T000000Z", "basebackup 20261101T000000Z", "dump 20261102T000000Z"]
    assert a.only_retired == ["dump 20261101T000000Z", "basebackup 20261101T000000Z"]  # not the A+B one
    assert "readable only with keys no longer configured" in a.why


def test_once_expired_the_old_key_is_free() -> None:
    report = key_report(ROTATION[2:], [], ["B"])
    a = report.use("A")
    assert a is not None and a.needed is False and a.only_retired == []
    assert a.why == "no stored backup or WAL needs it"


@pytest.mark.parametrize(
    ("wal", "suspect", "history"),
    [
        # stored before the overlap began (day 2): may be encrypted to A only
        ([StoredWal("000000010000000000000003", True, day(1))], ["000000010000000000000003"], []),
        ([StoredWal("000000010000000000000009", True, day(2) + timedelta(hours=1))], [], []),
        ([StoredWal("000000010000000000000003", False, day(1))], [], []),  # not encrypted: no key needed
        ([StoredWal("000000010000000000000003", True, None)], ["000000010000000000000003"], []),  # time unknown
        (
            [StoredWal("00000002.history", True, day(1)), StoredWal("000000020000000000000004", True, day(1))],
            ["00000002.history", "000000020000000000000004"],
            ["00000002.history"],
        ),
    ],
)
def test_wal_stored_before_the_configured_keys_took_over_keeps_retired_keys(
    wal: list[StoredWal], suspect: list[str], history: list[str]
) -> None:
    report = key_report(ROTATION[2:], wal, ["B"])  # the A-only backups are expired
    assert report.wal.since == day(2)
    assert report.wal.suspect == suspect and report.wal.history == history
    a = report.use("A")
    assert a is not None and a.needed is bool(suspect)
    if history:
        assert "history file" in a.why and "store them unencrypted" in a.why


def test_unreadable_manifests_keep_every_retired_key() -> None:
    report = key_report(ROTATION[2:], [], ["B"], bad_manifests=["dumps/20261101T000000Z/manifest.json"])
    a = report.use("A")
    assert a is not None and a.needed and "could not be read" in a.why


def test_unopenable_lists_what_the_identity_here_cannot_open() -> None:
    """The exact check reads only headers, and covers WAL, which has no manifest."""
    a, b = pyrage.x25519.Identity.generate(), pyrage.x25519.Identity.generate()
    storage = initialised(MemoryStorage("keys"))
    only_a = wal_key("000000010000000000000001", ".zst.age")
    both = wal_key("000000010000000000000002", ".zst.age")
    only_b = wal_key("00000002.history", ".zst.age")
    plain = wal_key("000000010000000000000003", ".zst")
    storage.put(only_a, io.BytesIO(pyrage.encrypt(b"x" * 100_000, [a.to_public()])))
    storage.put(both, io.BytesIO(pyrage.encrypt(b"y", [a.to_public(), b.to_public()])))
    storage.put(only_b, io.BytesIO(pyrage.encrypt(b"z", [b.to_public()])))
    storage.put(plain, io.BytesIO(b"not encrypted"))
    storage.put(wal_digest_key("000000010000000000000001"), io.BytesIO(b"{}"))
    assert unopenable(storage, [b]) == (3, [only_a])
    assert unopenable(storage, [a]) == (3, [only_b])
    assert unopenable(storage, [a, b]) == (3, [])
    names = {w.name: w.encrypted for w in stored_wal(storage)}
    assert names == {
        "000000010000000000000001": True,
        "000000010000000000000002": True,
        "00000002.history": True,
        "000000010000000000000003": False,
    }
