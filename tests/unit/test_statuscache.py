"""The status check made again and again (schedule's health monitor) reads only what may have
changed, and still reports exactly what a fresh `status` would: manifests, drill reports and history
files read once, the WAL archive listed whole once and then by its ends.

Before: every check (once a minute) listed the whole WAL archive and read every manifest and drill
report again (on S3 a HEAD and a GET each).
"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from p88backup.catalog.backups import Catalog
from p88backup.catalog.layout import wal_key
from p88backup.catalog.models import DrillReport, DrillRun, DrillSource
from p88backup.core.health import Limits
from p88backup.core.status import RepeatedStatus, collect
from p88backup.core.statuscache import ImmutableReads, immutable, log_prefix, newest_log
from p88backup.core.wal.archive import WalArchive
from p88backup.storage import Storage, open_storage
from p88backup.stream import Codec, encode
from tests.harness.helpers import fake_basebackup_manifest, fake_dump_manifest, initialised

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
LIMITS = Limits(max_dump_age=26 * 3600, max_basebackup_age=8 * 86400, max_wal_age=900, max_drill_age=8 * 86400)


@pytest.mark.parametrize(
    ("key", "expected"),
    [
        ("dumps/20261130T021500Z/manifest.json", True),
        ("basebackups/20261130T024500Z/manifest.json", True),
        ("drills/20261130T050000Z/report.json", True),
        ("wal/00000002/00000002.history.zst", True),
        ("wal/00000002/00000002.history.zst.age", True),
        ("dumps/20261130T021500Z/p88.pgdump.zst", False),
        ("wal/00000001/000000010000000000000001.zst", False),
        ("wal/00000001/000000010000000000000001.digest.json", False),
        ("restorepoints/before-migration.json", False),
        ("p88backup.json", False),
    ],
)
def test_what_is_written_once_and_never_changes(key: str, expected: bool) -> None:
    assert immutable(key) is expected


@pytest.mark.parametrize(
    ("names", "timeline", "expected"),
    [
        ([], 1, None),
        (["00000002.history"], 2, None),
        (["000000010000000000000003", "0000000100000001000000FF", "000000010000000100000002"], 1, 1),
        (["000000010000000300000001.partial", "000000020000000100000001"], 1, 3),
        (["000000010000000300000001.00000028.backup", "000000020000000100000001"], 2, 1),
    ],
)
def test_newest_log(names: list[str], timeline: int, expected: int | None) -> None:
    assert newest_log(names, timeline) == expected


def test_a_log_prefix_covers_4_gib_of_one_timeline() -> None:
    assert log_prefix(2, 0x1A) == "wal/00000002/000000020000001A"
    assert "wal/00000002/000000020000001A000000FF.zst".startswith(log_prefix(2, 0x1A))


# -- the same answers as a fresh collect(), step by step ---------------------------------------


def seg(timeline: int, segno: int) -> str:
    return f"{timeline:08X}{segno // 256:08X}{segno % 256:08X}"


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Archive:
    """A memory storage with a catalog and WAL written as the commands write them."""

    def __init__(self) -> None:
        self.storage: Storage = initialised(open_storage(f"memory://{uuid.uuid4().hex}"))
        self.catalog = Catalog(self.storage)

    def wal(self, *names: str) -> None:
        for name in names:
            self.storage.put(wal_key(name, ".zst"), io.BytesIO(b"segment"))

    def history(self, timeline: int, text: str) -> None:
        self.storage.put(wal_key(f"{timeline:08X}.history", ".zst"), encode(io.BytesIO(text.encode()), Codec()))

    def dump(self, when: datetime) -> str:
        m = fake_dump_manifest(when.strftime("%Y%m%dT%H%M%SZ"), when)
        self.storage.put(m.objects[0].key, io.BytesIO(b"x"))
        self.catalog.write(m)
        return str(m.id)

    def drill(self, when: datetime, ok: bool) -> None:
        run = DrillRun(kind="dump", backup_id="20261101T000000Z", ok=ok, source_now=when, error=None if ok else "x")
        report = DrillReport(
            id=when.strftime("%Y%m%dT%H%M%SZ"),
            started_at=when,
            finished_at=when,
            ok=ok,
            p88backup_version="0.1.0",
            source=DrillSource(clock="production"),
            drills=[run],
        )
        self.catalog.write_drill(report)

    def fresh(self) -> dict[str, Any]:
        """What `status` reports, read from scratch."""
        report = collect(self.catalog, WalArchive(self.storage, Codec()), now=NOW, limits=LIMITS, conninfo=None)
        return report.as_dict()


def test_repeated_checks_report_what_a_fresh_status_reports_and_read_only_what_changed() -> None:
    a = Archive()
    for day in range(50, 0, -1):
        a.dump(NOW - timedelta(days=day))
    bb = NOW - timedelta(days=3)
    a.catalog.write(fake_basebackup_manifest(bb.strftime("%Y%m%dT%H%M%SZ"), bb, seg(1, 2)))
    a.drill(NOW - timedelta(days=9), ok=True)
    a.wal(*(seg(1, n) for n in range(2, 0xF0)))
    clock = Clock()
    repeated = RepeatedStatus(a.storage, Codec(), full_every=900)
    repeated.wal.clock = clock
    reads = repeated.storage  # the ImmutableReads it goes through
    assert isinstance(reads, ImmutableReads)

    def check() -> dict[str, Any]:
        repeated.wal.listings.clear()
        return repeated(now=NOW, limits=LIMITS, conninfo=None).as_dict()

    assert check() == a.fresh()
    assert reads.reads == 52 and reads.hits == 0  # 50 dumps, a base backup, a drill report
    assert repeated.wal.listings == ["wal/"]

    # nothing new: no manifest read again, only the archive's end listed
    clock.now = 60
    assert check() == a.fresh()
    assert reads.reads == 52 and reads.hits == 52
    assert repeated.wal.listings == [log_prefix(1, 0), log_prefix(1, 1), "wal/00000002/"]

    # WAL goes on into the next 4 GiB, then on past it within one check interval
    a.wal(*(seg(1, n) for n in range(0xF0, 0x2F0)))
    clock.now = 120
    assert check() == a.fresh()
    assert repeated.wal.listings == [log_prefix(1, 0), log_prefix(1, 1), log_prefix(1, 2), log_prefix(1, 3)] + [
        "wal/00000002/"
    ]

    # a promotion: the next timeline's history and segments, and the old timeline's partial segment
    a.history(2, "1\t0/2F0000A0\tno recovery target specified\n")
    a.wal(f"{seg(1, 0x2F0)}.partial", seg(2, 0x2F0), seg(2, 0x2F1))
    clock.now = 180
    assert check() == a.fresh()
    assert repeated.wal.listings[-2:] == ["wal/00000002/", "wal/00000003/"]
    a.wal(seg(2, 0x2F2))
    clock.now = 240
    got = check()
    assert got == a.fresh() and got["wal"]["newest_segment"] == seg(2, 0x2F2)
    assert repeated.wal.listings[0] == log_prefix(2, 2)

    # a new dump and a failed drill are seen at once; only their two files are read
    a.dump(NOW - timedelta(hours=1))
    a.drill(NOW - timedelta(minutes=5), ok=False)
    clock.now = 300
    got = check()
    assert got == a.fresh() and got["healthy"] is False and reads.reads == 54

    # expire removes old dumps and old WAL: the catalog at once; the WAL count at the next full listing
    for bid in a.catalog.ids("dump")[:10]:
        for obj in a.storage.list(f"dumps/{bid}/"):
            a.storage.delete(obj.key)
    a.storage.delete_many(wal_key(seg(1, n), ".zst") for n in range(2, 0x80))
    clock.now = 360
    got, want = check(), a.fresh()
    assert got["dumps"] == want["dumps"] and got["checks"] == want["checks"] and got["healthy"] == want["healthy"]
    assert got["wal"]["files"] > want["wal"]["files"]
    clock.now = 360 + 900
    assert check() == a.fresh()
    assert repeated.wal.listings == ["wal/"]


def test_an_immutable_object_is_read_again_when_the_listing_shows_another_one() -> None:
    """A manifest deleted and written again (by hand, or a restore of the bucket) is not served from memory."""
    a = Archive()
    bid = a.dump(NOW - timedelta(days=1))
    reads = ImmutableReads(a.storage)
    catalog = Catalog(reads)
    assert [m.id for m in catalog.dumps()] == [bid]
    key = f"dumps/{bid}/manifest.json"
    old = a.storage.stat(key)
    a.storage.delete(key)
    m = fake_dump_manifest(bid, NOW - timedelta(days=1, seconds=1))
    a.catalog.write(m)
    assert a.storage.stat(key) != old
    assert [d.finished_at for d in catalog.dumps()] == [m.finished_at]
    assert reads.reads == 2 and reads.hits == 0
    a.storage.delete(key)
    assert catalog.dumps() == [] and not reads._kept  # gone from the listing: forgotten
