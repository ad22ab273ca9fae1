"""Catalog: ids, key layout, manifest-last visibility, orphans."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from p88backup.catalog.backups import Catalog, layout
from p88backup.errors import NotFoundError, ObjectExistsError, StorageError, VerifyError
from p88backup.storage import open_storage
from tests.harness.helpers import fake_dump_manifest as manifest
from tests.harness.helpers import initialised

T0 = datetime(2026, 11, 27, 2, 15, 0, tzinfo=UTC)


def test_backup_ids_sort_by_time_and_stay_unique() -> None:
    a = layout.backup_id(T0)
    assert a == "20261127T021500Z"
    b = layout.backup_id(T0, {a})
    c = layout.backup_id(T0, {a, b})
    assert (b, c) == ("20261127T021500Z-01", "20261127T021500Z-02")
    later = layout.backup_id(T0 + timedelta(seconds=1))
    assert sorted([later, c, a, b]) == [a, b, c, later]
    assert layout.id_time(b) == T0
    assert layout.backup_id(T0.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))) == a


@pytest.mark.parametrize("name", ["p88", "my db", "ünïcode", "a/b", "x=y", "..", "%41"])
def test_db_slug_round_trips_and_is_a_valid_key(name: str) -> None:
    from p88backup.storage.base import validate_key

    slug = layout.db_slug(name)
    assert layout.db_from_slug(slug) == name
    validate_key(layout.dump_key("20261127T021500Z", name, ".zst"))


def test_parse_manifest_key() -> None:
    assert layout.parse_manifest_key("dumps/20261127T021500Z/manifest.json") == ("dump", "20261127T021500Z")
    assert layout.parse_manifest_key("basebackups/20261127T021500Z-01/manifest.json") == (
        "basebackup",
        "20261127T021500Z-01",
    )
    for bad in ("dumps/20261127T021500Z/x.json", "dumps/garbage/manifest.json", "other/20261127T021500Z/manifest.json"):
        assert layout.parse_manifest_key(bad) is None


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(initialised(open_storage(f"memory://{uuid.uuid4().hex}")))


def test_only_backups_with_a_manifest_are_listed(catalog: Catalog) -> None:
    s = catalog.storage
    s.put("dumps/20261126T021500Z/p88.pgdump.zst", io.BytesIO(b"x"))
    catalog.write(manifest("20261126T021500Z", T0 - timedelta(days=1)))
    s.put("dumps/20261127T021500Z/p88.pgdump.zst", io.BytesIO(b"x"))  # no manifest: a killed run
    assert catalog.ids("dump") == ["20261126T021500Z"]
    assert catalog.resolve("dump", "latest").id == "20261126T021500Z"
    orphans = catalog.orphans("dump")
    assert [(o.id, o.keys) for o in orphans] == [("20261127T021500Z", ("dumps/20261127T021500Z/p88.pgdump.zst",))]
    assert "20261127T021500Z" in catalog.taken_ids("dump")


def test_manifest_is_create_only(catalog: Catalog) -> None:
    catalog.write(manifest("20261127T021500Z", T0))
    # the same bytes again: an earlier attempt landed and its answer was lost -> success
    catalog.write(manifest("20261127T021500Z", T0))
    other = manifest("20261127T021500Z", T0 + timedelta(seconds=1))
    with pytest.raises(ObjectExistsError):
        catalog.write(other)
    assert catalog.read("dump", "20261127T021500Z").finished_at == T0


class LandsThenFails:
    """A storage whose manifest put stores the object and then fails (a lost
    answer, a failed directory fsync), and whose deletes can be made to fail."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.fail_deletes = inner, False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def put(self, key: str, data: Any, *, overwrite: bool = True) -> Any:
        info = self.inner.put(key, data, overwrite=overwrite)
        if key.endswith(layout.MANIFEST):
            raise StorageError(f"{key}: connection reset after the upload")
        return info

    def delete(self, key: str) -> None:
        if self.fail_deletes:
            raise StorageError("storage down")
        self.inner.delete(key)

    def delete_many(self, keys: Any) -> None:
        for key in keys:
            self.delete(key)


def test_discard_takes_back_a_manifest_that_landed_before_its_write_failed() -> None:
    storage = LandsThenFails(initialised(open_storage(f"memory://{uuid.uuid4().hex}")))
    catalog = Catalog(storage)
    m = manifest("20261127T021500Z", T0)
    put_data = m.objects[0].key
    storage.put(put_data, io.BytesIO(b"x"))
    with pytest.raises(StorageError):
        catalog.write(m)
    assert catalog.ids("dump") == ["20261127T021500Z"]  # it landed
    catalog.discard("dump", m.id, [put_data], manifest=True)
    assert catalog.ids("dump") == [] and [o.key for o in storage.list("")] == [layout.STORAGE_MARKER]


def test_discard_keeps_the_objects_when_the_manifest_cannot_be_removed() -> None:
    storage = LandsThenFails(initialised(open_storage(f"memory://{uuid.uuid4().hex}")))
    catalog = Catalog(storage)
    m = manifest("20261127T021500Z", T0)
    storage.put(m.objects[0].key, io.BytesIO(b"x"))
    with pytest.raises(StorageError):
        catalog.write(m)
    storage.fail_deletes = True
    catalog.discard("dump", m.id, [m.objects[0].key], manifest=True)  # logs, does not raise
    # never a listed backup whose objects are gone: both stay for expire to judge
    assert catalog.ids("dump") == ["20261127T021500Z"]
    assert storage.stat(m.objects[0].key).size == 1


def test_resolve_errors(catalog: Catalog) -> None:
    with pytest.raises(NotFoundError, match="no dump backups"):
        catalog.resolve("dump", "latest")
    with pytest.raises(NotFoundError, match="not a backup id"):
        catalog.resolve("dump", "yesterday")
    with pytest.raises(NotFoundError, match="no dump backup 20261127T021500Z"):
        catalog.resolve("dump", "20261127T021500Z")


def test_unknown_schema_version_is_refused(catalog: Catalog) -> None:
    doc = json.loads(manifest("20261127T021500Z", T0).model_dump_json())
    doc["schema_version"] = 99
    catalog.storage.put("dumps/20261127T021500Z/manifest.json", io.BytesIO(json.dumps(doc).encode()))
    with pytest.raises(VerifyError, match="schema version 99"):
        catalog.read("dump", "20261127T021500Z")
    assert catalog.manifests("dump") == []  # listed as unreadable, never misread


def test_delete_removes_manifest_then_objects(catalog: Catalog) -> None:
    m = manifest("20261127T021500Z", T0)
    catalog.storage.put(m.objects[0].key, io.BytesIO(b"x"))
    catalog.write(m)
    catalog.delete(m)
    assert list(catalog.storage.list("dumps/")) == []


# -- manifests must describe their own folder (issue 10 item 15) -----------------------------------

BID = "20261127T021500Z"


def _dump(**change: Any) -> dict[str, Any]:
    doc = json.loads(manifest(BID, T0).model_dump_json())
    doc.update(change)
    return doc


def _base(**change: Any) -> dict[str, Any]:
    from tests.harness.helpers import fake_basebackup_manifest

    doc = json.loads(fake_basebackup_manifest(BID, T0, "000000020000000300000004").model_dump_json())
    doc.update(change)
    return doc


def _objects(*keys: str) -> list[dict[str, Any]]:
    return [{"key": k, "size": 1, "sha256": "0" * 64} for k in keys]


def _db(*keys: str) -> list[dict[str, Any]]:
    return [{"name": "p88", "format": "custom", "objects": _objects(*keys)}]


@pytest.mark.parametrize(
    ("kind", "doc", "error"),
    [
        pytest.param("dump", _dump(id="20261126T021500Z"), "manifest of backup 20261126T021500Z, not", id="other-id"),
        pytest.param("basebackup", _dump(), "describes a dump, but lies among the basebackup", id="wrong-kind"),
        pytest.param(
            "dump",
            _dump(databases=_db("wal/00000001/000000010000000000000001.zst")),
            "outside dumps/",
            id="names-a-wal-object",
        ),
        pytest.param(
            "dump",
            _dump(databases=_db("dumps/20261126T021500Z/p88.pgdump.zst")),
            "outside",
            id="names-another-backups-object",
        ),
        pytest.param(
            "dump", _dump(databases=_db(f"dumps/{BID}/../20261126T021500Z/p88.pgdump.zst")), "outside", id="climbs-out"
        ),
        pytest.param("dump", _dump(globals=_objects("restorepoints/x.json")[0]), "outside", id="globals-elsewhere"),
        pytest.param(
            "basebackup",
            _base(files=_objects("basebackups/20261126T021500Z/base.tar.zst")),
            "outside",
            id="base-names-another-backups-tar",
        ),
        pytest.param(
            "basebackup",
            _base(start_wal="000000020000000300000009"),
            "is not the segment of start_lsn",
            id="start-wal-moved-on",
        ),
        pytest.param(
            "basebackup",
            _base(start_wal="000000010000000300000004"),
            "not a segment of timeline 2",
            id="start-wal-other-timeline",
        ),
        pytest.param("basebackup", _base(stop_lsn="0/1"), "before start_lsn", id="stops-before-it-starts"),
        pytest.param("basebackup", _base(stop_wal="000000010000000300000004"), "stop_wal", id="stop-wal-earlier-tli"),
        pytest.param(
            "basebackup", _base(wal_segment_size=3 * 1024 * 1024), "not a power of two", id="odd-segment-size"
        ),
    ],
)
def test_a_manifest_that_is_not_its_folders_is_refused(
    catalog: Catalog, kind: layout.Kind, doc: dict[str, Any], error: str
) -> None:
    key = layout.manifest_key(kind, BID)
    catalog.storage.put(key, io.BytesIO(json.dumps(doc).encode()))
    with pytest.raises(VerifyError, match=error):
        catalog.read(kind, BID)  # old code: returned it, and expire deleted what it named
    good, bad = catalog.scan(kind)
    assert good == [] and [(b.id, b.key) for b in bad] == [(BID, key)] and error.split()[0] in bad[0].error
    assert catalog.manifests(kind) == []


def test_scan_reports_manifests_in_folders_that_are_not_ids(catalog: Catalog) -> None:
    good = manifest(BID, T0)
    catalog.write(good)
    catalog.storage.put("dumps/copy-of-it/manifest.json", io.BytesIO(good.model_dump_json().encode()))
    found, bad = catalog.scan("dump")
    assert [m.id for m in found] == [BID]
    assert [(b.id, b.error) for b in bad] == [
        ("copy-of-it", "manifest dumps/copy-of-it/manifest.json is in a folder whose name is not a backup id")
    ]


@pytest.mark.parametrize("segment_size_bits", [20, 24, 26, 30])
def test_start_wal_is_checked_at_the_recorded_segment_size(catalog: Catalog, segment_size_bits: int) -> None:
    from p88backup.core.wal import names as walnames

    size = 1 << segment_size_bits
    lsn = 0x3_2345_6789
    doc = _base(
        start_lsn=walnames.format_lsn(lsn),
        stop_lsn=walnames.format_lsn(lsn + 0x100),
        start_wal=walnames.segment_for_lsn(2, lsn, size),
        stop_wal=walnames.segment_for_lsn(2, lsn + 0x100, size),
        wal_segment_size=size,
    )
    key = layout.manifest_key("basebackup", BID)
    catalog.storage.put(key, io.BytesIO(json.dumps(doc).encode()))
    assert catalog.read("basebackup", BID).id == BID
    other = 1 << (20 if segment_size_bits > 20 else 21)  # the name means another segment at another size
    catalog.storage.put(key, io.BytesIO(json.dumps({**doc, "wal_segment_size": other}).encode()))
    with pytest.raises(VerifyError, match="is not the segment of start_lsn"):
        catalog.read("basebackup", BID)
