"""expire on real catalog objects: plan == what happens; orphans after the grace period."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from p88backup.catalog import Catalog
from p88backup.core.expire import Expirer
from p88backup.core.retention import GfsPolicy
from p88backup.locks import job_lock
from p88backup.storage import open_storage
from tests.unit.test_catalog import manifest

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
