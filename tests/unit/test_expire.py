"""expire on real catalog objects: plan == what happens; orphans after the grace period."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from p88backup.catalog.backups import Catalog
from p88backup.core.retention.expire import Expirer
from p88backup.core.retention.policy import GfsPolicy
from p88backup.locks import job_lock
from p88backup.storage import Storage, open_storage
from p88backup.stream import Codec, encode
from tests.harness.helpers import fake_basebackup_manifest as basebackup
from tests.harness.helpers import fake_dump_manifest as manifest
from tests.harness.helpers import initialised

NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def put_history(s: Storage, timeline: int, text: str) -> None:
    """A timeline history file archived as wal-push stores it (zstd)."""
    from p88backup.catalog.layout import wal_key

    s.put(wal_key(f"{timeline:08X}.history", ".zst"), encode(io.BytesIO(text.encode()), Codec()))


def fill(catalog: Catalog, days: int) -> list[str]:
    ids = []
    for d in range(days, 0, -1):
        when = NOW - timedelta(days=d)
        m = manifest(when.strftime("%Y%m%dT%H%M%SZ"), when)
        catalog.storage.put(m.objects[0].key, io.BytesIO(b"x"))
        catalog.write(m)
        ids.append(m.id)
    return ids


def test_plan_is_exactly_what_apply_deletes(tmp_path: Path) -> None:
    catalog = Catalog(initialised(open_storage(f"memory://{uuid.uuid4().hex}")))
    ids = fill(catalog, 60)
    expirer = Expirer(catalog.storage, GfsPolicy(7, 4, 2, 1), orphan_grace=timedelta(hours=24), lock_dir=tmp_path)
    plan = expirer.plan(NOW)
    assert ids[-7:] == sorted(i for i in plan.dumps.keep if i >= ids[-7])
    assert set(plan.dumps.keep) | set(plan.dumps.expire) == set(ids)
    expirer.apply(plan)
    assert catalog.ids("dump") == sorted(plan.dumps.keep)
    remaining = {o.key.split("/")[1] for o in catalog.storage.list("dumps/")}
    assert remaining == set(plan.dumps.keep)  # objects went with their manifests


def test_dumps_only_storage_reports_no_wal_plan(tmp_path: Path) -> None:
    from p88backup.core.wal.archive import WalArchive

    catalog = Catalog(initialised(open_storage(f"memory://{uuid.uuid4().hex}")))
    fill(catalog, 3)
    expirer = expirer_for(catalog.storage, tmp_path, keep=1)
    assert isinstance(expirer.archive, WalArchive)
    wal = expirer.plan(NOW).as_dict()["wal"]
    assert wal == {
        "expire_count": 0,
        "kept_from": None,
        "expire_first": None,
        "expire_last": None,
        "held": None,
        "needed_by": [],
        "expire_ranges": [],
    }


def test_newest_is_kept_even_with_everything_zero(tmp_path: Path) -> None:
    catalog = Catalog(initialised(open_storage(f"memory://{uuid.uuid4().hex}")))
    ids = fill(catalog, 3)
    expirer = Expirer(catalog.storage, GfsPolicy(0, 0, 0, 1), orphan_grace=timedelta(hours=24), lock_dir=tmp_path)
    expirer.apply(expirer.plan(NOW))
    assert catalog.ids("dump") == [ids[-1]]


def test_orphans_go_after_grace_unless_a_run_is_in_progress(tmp_path: Path) -> None:
    import os

    store = tmp_path / "store"
    catalog = Catalog(initialised(open_storage(f"file://{store}")))
    fill(catalog, 1)
    old, new = "20261101T000000Z", "20261127T025900Z"
    for bid in (old, new):
        catalog.storage.put(f"dumps/{bid}/p88.pgdump.zst", io.BytesIO(b"partial"))
    os.utime(store / "dumps" / old / "p88.pgdump.zst", (NOW.timestamp() - 3 * 86400,) * 2)
    os.utime(store / "dumps" / new / "p88.pgdump.zst", (NOW.timestamp() - 60,) * 2)
    expirer = Expirer(catalog.storage, GfsPolicy(7, 4, 6, 1), orphan_grace=timedelta(hours=24), lock_dir=tmp_path)

    with job_lock(tmp_path, "dump"):  # a dump is running: leave its directory alone
        plan = expirer.plan(NOW)
        assert plan.orphans == [] and plan.skipped_orphan_kinds == ["dump"]
    plan = expirer.plan(NOW)
    assert [o.id for o in plan.orphans] == [old]
    expirer.apply(plan)
    assert not (store / "dumps" / old).exists() and (store / "dumps" / new).exists()


def test_base_backups_and_the_wal_only_they_need(tmp_path: Path) -> None:
    from p88backup.catalog.layout import wal_key
    from p88backup.core.retention.policy import BaseBackupPolicy
    from p88backup.core.wal.archive import WalArchive
    from p88backup.stream import Codec

    catalog = Catalog(initialised(open_storage(f"memory://{uuid.uuid4().hex}")))
    s = catalog.storage
    starts = {
        "20261120T020000Z": "000000010000000000000002",
        "20261124T020000Z": "000000010000000000000005",
        "20261126T020000Z": "000000010000000000000008",
    }
    for bid, seg in starts.items():
        m = basebackup(bid, datetime.strptime(bid, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC), seg)
        s.put(m.files[0].key, io.BytesIO(b"x"))
        catalog.write(m)
    wal = [f"0000000100000000000000{n:02X}" for n in range(1, 11)] + ["000000010000000000000003.00000028.backup"]
    for name in wal:
        s.put(wal_key(name, ".zst"), io.BytesIO(b"w"))
    # a restore branched timeline 2 off after all three backups: they are all on its history
    put_history(s, 2, "1\t0/B000000\tno recovery target specified\n")
    expirer = Expirer(
        s,
        GfsPolicy(7, 4, 6, 1),
        orphan_grace=timedelta(hours=24),
        lock_dir=tmp_path,
        base_policy=BaseBackupPolicy(keep=2),
        archive=WalArchive(s, Codec()),
    )
    plan = expirer.plan(NOW)
    assert plan.basebackups.expire == ["20261120T020000Z"]
    assert plan.wal_kept_from == "000000010000000000000005"
    expired_names = sorted(k.rsplit("/", 1)[1].removesuffix(".zst") for k in plan.wal)
    assert expired_names == [
        "000000010000000000000001",
        "000000010000000000000002",
        "000000010000000000000003",
        "000000010000000000000003.00000028.backup",
        "000000010000000000000004",
    ]
    expirer.apply(plan)
    assert catalog.ids("basebackup") == ["20261124T020000Z", "20261126T020000Z"]
    left = sorted(o.key.rsplit("/", 1)[1] for o in s.list("wal/"))
    assert "00000002.history.zst" in left and "000000010000000000000005.zst" in left
    assert not any(n.startswith("000000010000000000000004") for n in left)


def test_no_base_backup_means_no_wal_is_expired(tmp_path: Path) -> None:
    from p88backup.catalog.layout import wal_key
    from p88backup.core.wal.archive import WalArchive
    from p88backup.stream import Codec

    s = initialised(open_storage(f"memory://{uuid.uuid4().hex}"))
    s.put(wal_key("000000010000000000000001", ".zst"), io.BytesIO(b"w"))
    expirer = Expirer(
        s, GfsPolicy(1, 0, 0, 1), orphan_grace=timedelta(hours=24), lock_dir=tmp_path, archive=WalArchive(s, Codec())
    )
    plan = expirer.plan(NOW)
    assert plan.wal == [] and plan.wal_kept_from is None


# -- item 4: retention follows the live timeline --------------------------------------------------

B1, B2, B3 = "20261120T020000Z", "20261124T020000Z", "20261126T020000Z"
FORK_HISTORY = "1\t0/5800000\tbefore 2026-11-22 03:00:00+00\n"  # timeline 2 left 1 inside segment 5


def seg(timeline: int, segno: int) -> str:
    return f"{timeline:08X}00000000{segno:08X}"


def wal_names(s: Storage) -> set[str]:
    from p88backup.catalog.layout import wal_name_of_key

    return {n for o in s.list("wal/") if (n := wal_name_of_key(o.key))}


def add_base(catalog: Catalog, bid: str, start_wal: str) -> None:
    m = basebackup(bid, datetime.strptime(bid, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC), start_wal)
    catalog.storage.put(m.files[0].key, io.BytesIO(b"x"))
    catalog.write(m)


def after_a_restore() -> Catalog:
    """B1 and B2 on timeline 1; a PITR to a point between them promoted timeline 2.

    Timeline 1 went on to segment 0xC on the old primary; timeline 2 archived its history, its
    copy of the fork segment 5 onwards, and timeline 1's partial segment 5.
    """
    from p88backup.catalog.layout import wal_key

    catalog = Catalog(initialised(open_storage(f"memory://{uuid.uuid4().hex}")))
    s = catalog.storage
    add_base(catalog, B1, seg(1, 2))
    add_base(catalog, B2, seg(1, 8))
    names = [seg(1, n) for n in range(1, 0xD)] + [seg(2, n) for n in range(5, 0xA)] + [seg(1, 5) + ".partial"]
    for name in names:
        s.put(wal_key(name, ".zst"), io.BytesIO(b"w"))
    put_history(s, 2, FORK_HISTORY)
    return catalog


def expirer_for(s: Storage, tmp_path: Path, keep: int, window: timedelta | None = None) -> Expirer:
    from p88backup.core.retention.policy import BaseBackupPolicy
    from p88backup.core.wal.archive import WalArchive

    return Expirer(
        s,
        GfsPolicy(7, 4, 6, 1),
        orphan_grace=timedelta(hours=24),
        lock_dir=tmp_path,
        base_policy=BaseBackupPolicy(keep=keep, window=window),
        archive=WalArchive(s, Codec()),
    )


def assert_restorable(s: Storage, start_wal: str) -> None:
    """What wal-verify and restore --pitr check: no gap from the backup to timeline 2's newest WAL."""
    from p88backup.core.wal import names as walnames
    from p88backup.core.wal.archive import WalArchive

    histories = WalArchive(s, Codec()).histories()
    assert walnames.find_gaps(wal_names(s), start_wal, seg(2, 9), histories) == []


def test_item4_the_only_backup_on_the_live_history_is_kept(tmp_path: Path) -> None:
    catalog = after_a_restore()
    s = catalog.storage
    expirer = expirer_for(s, tmp_path, keep=1)
    plan = expirer.plan(NOW)
    # Old code: kept B2 (newest by time), expired B1 and every segment below 8, timeline 2's too.
    assert plan.basebackups.keep == {
        B1: ["newest", "count"],
        B2: ["abandoned branch, newer than every backup on the live timeline"],
    }
    assert plan.basebackups.expire == [] and plan.basebackups.live_timeline == 2
    # Timeline 1 after the fork stays restorable (`restore --timeline 1`: the restore was the wrong one)
    # until timeline 2 has a base backup of its own: B1 claims it too.
    assert sorted(plan.wal_names) == [seg(1, 1)]
    assert plan.wal_kept_from == seg(1, 2)
    expirer.apply(plan)
    assert catalog.ids("basebackup") == [B1, B2]
    assert_restorable(s, seg(1, 2))
    assert {seg(1, n) for n in range(8, 0xD)} <= wal_names(s)  # B2 can still reach timeline 1's end


def test_item4_abandoned_branch_goes_once_the_new_timeline_has_a_backup(tmp_path: Path) -> None:
    catalog = after_a_restore()
    s = catalog.storage
    add_base(catalog, B3, seg(2, 8))
    expirer = expirer_for(s, tmp_path, keep=2)
    plan = expirer.plan(NOW)
    # Old code: kept B2 and B3, expired B1 (the only way into timeline 2 before B3).
    assert plan.basebackups.keep == {B1: ["count"], B3: ["newest", "count"]}
    assert plan.basebackups.expire == [B2]
    assert plan.basebackups.expire_reasons == {B2: "abandoned branch; timeline 2 has a newer base backup"}
    data = plan.as_dict()
    assert data["basebackups"]["live_timeline"] == 2  # type: ignore[index]
    assert data["wal"]["expire_ranges"] == [  # type: ignore[index]
        {"timeline": 1, "first": seg(1, 1), "last": seg(1, 1), "count": 1},
        {"timeline": 1, "first": seg(1, 5), "last": seg(1, 0xC), "count": 9},  # and the partial 5
    ]
    expirer.apply(plan)
    assert catalog.ids("basebackup") == [B1, B3]
    assert wal_names(s) == {seg(1, 2), seg(1, 3), seg(1, 4), "00000002.history"} | {seg(2, n) for n in range(5, 0xA)}
    assert_restorable(s, seg(1, 2))
    assert_restorable(s, seg(2, 8))


def test_abandoned_backup_stays_while_in_the_window(tmp_path: Path) -> None:
    catalog = after_a_restore()
    add_base(catalog, B3, seg(2, 8))
    plan = expirer_for(catalog.storage, tmp_path, keep=1, window=timedelta(days=4)).plan(NOW)
    assert plan.basebackups.keep == {
        B2: ["abandoned branch, window"],
        B3: ["window", "newest", "count"],
    }
    assert plan.basebackups.expire == [B1]
    # B2 keeps timeline 1 from its start segment; timeline 2 is kept from B3's
    assert sorted(plan.wal_names) == sorted(
        [seg(1, n) for n in range(1, 8)] + [seg(1, 5) + ".partial", seg(2, 5), seg(2, 6), seg(2, 7)]
    )


def test_unreadable_history_keeps_every_base_backup_and_all_wal(tmp_path: Path) -> None:
    from p88backup.catalog.layout import wal_key

    catalog = after_a_restore()
    s = catalog.storage
    s.put(wal_key("00000002.history", ".zst"), io.BytesIO(b"not zstd"))
    fill(catalog, 3)
    expirer = expirer_for(s, tmp_path, keep=1)
    expirer.policy = GfsPolicy(1, 0, 0, 1)
    plan = expirer.plan(NOW)
    assert plan.basebackups.expire == [] and set(plan.basebackups.keep) == {B1, B2}
    assert plan.basebackups.held and "history" in plan.basebackups.held
    assert plan.wal == [] and plan.wal_held
    assert len(plan.dumps.expire) == 2  # dumps do not depend on timelines


# -- item 15: manifests are not trusted blindly ---------------------------------------------------


def test_copied_backup_folder_is_reported_not_a_crash(tmp_path: Path) -> None:
    catalog = after_a_restore()
    s = catalog.storage
    copy = "20261121T020000Z"
    for o in list(s.list(f"basebackups/{B1}/")):  # cp -r basebackups/B1 basebackups/<copy>
        with s.open(o.key) as fh:
            s.put(o.key.replace(B1, copy), io.BytesIO(fh.read()))
    expirer = expirer_for(s, tmp_path, keep=1)
    plan = expirer.plan(NOW)  # old code: ValueError "duplicate backup id" every night
    assert [(m.id, m.key) for m in plan.bad_manifests] == [(copy, f"basebackups/{copy}/manifest.json")]
    assert f"backup {B1}, not {copy}" in plan.bad_manifests[0].error
    assert copy not in plan.basebackups.keep and copy not in plan.basebackups.expire
    assert plan.wal == [] and plan.wal_held and "cannot be trusted" in plan.wal_held
    assert plan.as_dict()["bad_manifests"][0]["id"] == copy  # type: ignore[index]
    expirer.apply(plan)
    assert {o.key for o in s.list(f"basebackups/{copy}/")} == {
        f"basebackups/{copy}/manifest.json",
        f"basebackups/{copy}/base.tar.zst",
    }
    assert copy not in [o.id for o in expirer.plan(NOW).orphans]  # nor an orphan to reap


def test_edited_manifest_cannot_make_expire_delete_wal(tmp_path: Path) -> None:
    from p88backup.catalog.layout import wal_key
    from p88backup.catalog.models import StoredObject

    catalog = Catalog(initialised(open_storage(f"memory://{uuid.uuid4().hex}")))
    s = catalog.storage
    ids = fill(catalog, 3)
    precious = wal_key(seg(1, 1), ".zst")
    s.put(precious, io.BytesIO(b"w"))
    edited = catalog.read("dump", ids[0])
    edited.databases[0].objects.append(StoredObject(key=precious, size=1, sha256="0" * 64))
    s.put(f"dumps/{ids[0]}/manifest.json", io.BytesIO(edited.model_dump_json().encode()))
    expirer = Expirer(s, GfsPolicy(1, 0, 0, 1), orphan_grace=timedelta(hours=24), lock_dir=tmp_path)
    plan = expirer.plan(NOW)
    expirer.apply(plan)
    assert [o.key for o in s.list("wal/")] == [precious]  # old code: deleted with the expired dump
    assert {o.key.split("/")[1] for o in s.list("dumps/")} == {ids[0], ids[2]}
    assert plan.dumps.expire == [ids[1]]  # the others are judged as usual
    assert [m.id for m in plan.bad_manifests] == [ids[0]] and "outside dumps/" in plan.bad_manifests[0].error


# -- what else expire must get right about WAL --------------------------------------------------


def test_expired_wal_goes_with_its_digest_records(tmp_path: Path) -> None:
    """Encrypted WAL has a digest record beside each file (core/wal/archive.py): it goes too, after the file."""
    from p88backup.catalog.layout import wal_digest_key, wal_key

    catalog = Catalog(initialised(open_storage(f"memory://{uuid.uuid4().hex}")))
    s = catalog.storage
    add_base(catalog, B1, seg(1, 3))
    for n in range(1, 6):
        s.put(wal_key(seg(1, n), ".zst.age"), io.BytesIO(b"w"))
        s.put(wal_digest_key(seg(1, n)), io.BytesIO(b"{}"))
    s.put(wal_key(seg(1, 1), ".zst"), io.BytesIO(b"w"))  # the same file stored before encryption was on
    s.put(wal_digest_key(seg(1, 2) + ".partial"), io.BytesIO(b"{}"))  # a claim whose push died
    s.put(wal_digest_key(seg(1, 4) + ".partial"), io.BytesIO(b"{}"))
    expirer = expirer_for(s, tmp_path, keep=1)
    plan = expirer.plan(NOW)
    assert plan.wal == [
        wal_key(seg(1, 1), ".zst"),
        wal_key(seg(1, 1), ".zst.age"),
        wal_key(seg(1, 2), ".zst.age"),
        wal_digest_key(seg(1, 1)),
        wal_digest_key(seg(1, 2)),
        wal_digest_key(seg(1, 2) + ".partial"),
    ]
    assert plan.as_dict()["wal"]["expire_ranges"] == [  # type: ignore[index]
        {"timeline": 1, "first": seg(1, 1), "last": seg(1, 2), "count": 3}
    ]
    deletes: list[list[str]] = []
    real_delete_many = s.delete_many

    def delete_many(keys: Any) -> None:  # the memory backend, recording each call
        deletes.append(list(keys))
        real_delete_many(deletes[-1])

    s.delete_many = delete_many  # type: ignore[method-assign]
    expirer.apply(plan)
    wal_deletes = [d for d in deletes if d and d[0].startswith("wal/")]
    assert wal_deletes == [plan.wal[:3], plan.wal[3:]]  # records only once their files are gone
    assert sorted(o.key.rsplit("/", 1)[1] for o in s.list("wal/")) == sorted(
        [f"{seg(1, n)}.zst.age" for n in (3, 4, 5)]
        + [f"{seg(1, n)}.digest.json" for n in (3, 4, 5)]
        + [f"{seg(1, 4)}.partial.digest.json"]
    )


def test_wal_names_are_read_at_the_clusters_segment_size(tmp_path: Path) -> None:
    """1 MiB segments: ...000000FF is followed by ...00000100 (with 16 MiB it would be the next 'xlogid')."""
    from p88backup.catalog.layout import wal_key

    catalog = Catalog(initialised(open_storage(f"memory://{uuid.uuid4().hex}")))
    s = catalog.storage
    mib = 1024 * 1024
    m = basebackup(B1, datetime(2026, 11, 20, 2, tzinfo=UTC), "000000010000000000000102", segment_size=mib)
    s.put(m.files[0].key, io.BytesIO(b"x"))
    catalog.write(m)
    names = [f"0000000100000000{n:08X}" for n in range(0xFE, 0x105)]
    for name in names:
        s.put(wal_key(name, ".zst"), io.BytesIO(b"w"))
    plan = expirer_for(s, tmp_path, keep=1).plan(NOW)
    assert plan.wal_held is None
    assert plan.wal_names == names[:4]  # FE, FF, 100, 101: before the backup's start
    assert plan.as_dict()["wal"]["expire_ranges"] == [  # type: ignore[index]
        {"timeline": 1, "first": names[0], "last": names[3], "count": 4}
    ]


def test_base_backups_disagreeing_on_the_segment_size_hold_wal_expiry(tmp_path: Path) -> None:
    catalog = after_a_restore()
    m = basebackup(B3, datetime(2026, 11, 26, 2, tzinfo=UTC), seg(2, 0x80), segment_size=1024 * 1024)
    catalog.storage.put(m.files[0].key, io.BytesIO(b"x"))
    catalog.write(m)
    plan = expirer_for(catalog.storage, tmp_path, keep=2).plan(NOW)
    assert plan.wal == [] and plan.wal_held and "segment size" in plan.wal_held
