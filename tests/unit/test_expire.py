"""expire on real catalog objects: plan == what happens; orphans after the grace period."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from p88backup.catalog.backups import Catalog
from p88backup.core.retention.expire import Expirer
from p88backup.core.retention.policy import GfsPolicy
from p88backup.locks import job_lock
from p88backup.storage import open_storage
from tests.harness.helpers import fake_basebackup_manifest as basebackup
from tests.harness.helpers import fake_dump_manifest as manifest

NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


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
    catalog = Catalog(open_storage(f"memory://{uuid.uuid4().hex}"))
    ids = fill(catalog, 60)
    expirer = Expirer(catalog.storage, GfsPolicy(7, 4, 2, 1), orphan_grace=timedelta(hours=24), lock_dir=tmp_path)
    plan = expirer.plan(NOW)
    assert ids[-7:] == sorted(i for i in plan.dumps.keep if i >= ids[-7])
    assert set(plan.dumps.keep) | set(plan.dumps.expire) == set(ids)
    expirer.apply(plan)
    assert catalog.ids("dump") == sorted(plan.dumps.keep)
    remaining = {o.key.split("/")[1] for o in catalog.storage.list("dumps/")}
    assert remaining == set(plan.dumps.keep)  # objects went with their manifests


def test_newest_is_kept_even_with_everything_zero(tmp_path: Path) -> None:
    catalog = Catalog(open_storage(f"memory://{uuid.uuid4().hex}"))
    ids = fill(catalog, 3)
    expirer = Expirer(catalog.storage, GfsPolicy(0, 0, 0, 1), orphan_grace=timedelta(hours=24), lock_dir=tmp_path)
    expirer.apply(expirer.plan(NOW))
    assert catalog.ids("dump") == [ids[-1]]


def test_orphans_go_after_grace_unless_a_run_is_in_progress(tmp_path: Path) -> None:
    import os

    store = tmp_path / "store"
    catalog = Catalog(open_storage(f"file://{store}"))
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

    catalog = Catalog(open_storage(f"memory://{uuid.uuid4().hex}"))
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
    wal = [f"0000000100000000000000{n:02X}" for n in range(1, 11)] + [
        "00000002.history",
        "000000010000000000000003.00000028.backup",
    ]
    for name in wal:
        s.put(wal_key(name, ".zst"), io.BytesIO(b"w"))
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

    s = open_storage(f"memory://{uuid.uuid4().hex}")
    s.put(wal_key("000000010000000000000001", ".zst"), io.BytesIO(b"w"))
    expirer = Expirer(
        s, GfsPolicy(1, 0, 0, 1), orphan_grace=timedelta(hours=24), lock_dir=tmp_path, archive=WalArchive(s, Codec())
    )
    plan = expirer.plan(NOW)
    assert plan.wal == [] and plan.wal_kept_from is None
