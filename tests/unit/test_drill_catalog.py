"""Drill reports in the catalog: key layout, create-only writes, manifest rules on reading, retention."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from p88backup.catalog.backups import Catalog, layout
from p88backup.catalog.models import DrillCheckResult, DrillReport, DrillRun, DrillSource
from p88backup.errors import NotFoundError, ObjectExistsError, VerifyError
from p88backup.storage import open_storage
from tests.harness.helpers import fake_dump_manifest, initialised

T0 = datetime(2026, 11, 27, 4, 0, 0, tzinfo=UTC)


def fake_report(did: str, when: datetime = T0, *, ok: bool = True) -> DrillReport:
    """A drill report with a passed dump drill (and a failed check when not ok)."""
    check = DrillCheckResult(
        name="recent orders", kind="sql", database="p88", status="passed" if ok else "failed", detail="x"
    )
    run = DrillRun(
        kind="dump",
        backup_id="20261127T021500Z",
        ok=ok,
        source_now=when,
        newest_restorable=when - timedelta(hours=2),
        rto_seconds=12.5 if ok else None,
        rpo_seconds=7200.0,
        checks=[check],
    )
    return DrillReport(
        id=did,
        started_at=when,
        finished_at=when + timedelta(minutes=1),
        ok=ok,
        p88backup_version="0.1.0",
        source=DrillSource(clock="production", databases_before=["p88"], databases_after=["p88"]),
        drills=[run],
    )


@pytest.fixture
def catalog() -> Catalog:
    return Catalog(initialised(open_storage(f"memory://{uuid.uuid4().hex}")))


def test_drill_report_keys() -> None:
    assert layout.drill_report_key("20261127T040000Z") == "drills/20261127T040000Z/report.json"
    assert layout.parse_drill_report_key("drills/20261127T040000Z-01/report.json") == "20261127T040000Z-01"
    for other in (
        "drills/20261127T040000Z/manifest.json",
        "drills/not-an-id/report.json",
        "dumps/20261127T040000Z/report.json",
        "drills/20261127T040000Z/x/report.json",
    ):
        assert layout.parse_drill_report_key(other) is None
    # never where backups are listed: a drill is not a backup of any kind
    assert layout.parse_manifest_key(layout.drill_report_key("20261127T040000Z")) is None


def test_reports_are_written_once_and_read_back(catalog: Catalog) -> None:
    report = fake_report("20261127T040000Z")
    assert catalog.write_drill(report) == "drills/20261127T040000Z/report.json"
    assert catalog.write_drill(report)  # the same bytes again: an earlier attempt landed, fine
    with pytest.raises(ObjectExistsError):
        catalog.write_drill(fake_report("20261127T040000Z", ok=False))  # never overwritten
    assert catalog.read_drill("20261127T040000Z") == report
    assert catalog.drill_ids() == ["20261127T040000Z"]
    assert catalog.drills() == [report]
    assert catalog.ids("dump") == [] and catalog.orphans("dump") == []  # drills are not dumps
    with pytest.raises(NotFoundError):
        catalog.read_drill("20261128T040000Z")


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(fake_report("20261127T040000Z").model_dump_json())
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    "doc, error",
    [
        pytest.param(_doc(id="20261126T040000Z"), "is the report of drill 20261126T040000Z", id="other-id"),
        pytest.param(_doc(kind="dump"), "describes a dump", id="other-kind"),
        pytest.param(_doc(schema_version=2), "schema version 2", id="newer-schema"),
        pytest.param(_doc(drills="none"), "malformed", id="malformed"),
    ],
)
def test_a_report_that_is_not_its_folders_is_refused(catalog: Catalog, doc: dict[str, Any], error: str) -> None:
    key = layout.drill_report_key("20261127T040000Z")
    catalog.storage.put(key, io.BytesIO(json.dumps(doc).encode()))
    with pytest.raises(VerifyError, match=error):
        catalog.read_drill("20261127T040000Z")
    good, bad = catalog.scan_drills()
    assert good == [] and [(b.kind, b.id, b.key) for b in bad] == [("drill", "20261127T040000Z", key)]


def test_a_report_in_a_folder_that_is_not_an_id_is_reported(catalog: Catalog) -> None:
    catalog.write_drill(fake_report("20261127T040000Z"))
    copy = catalog.storage.open("drills/20261127T040000Z/report.json").read()
    catalog.storage.put("drills/copy/report.json", io.BytesIO(copy))
    good, bad = catalog.scan_drills()
    assert [r.id for r in good] == ["20261127T040000Z"] and [b.id for b in bad] == ["copy"]


def test_drill_run_failed_checks() -> None:
    run = fake_report("20261127T040000Z", ok=False).drills[0]
    assert [c.name for c in run.failed_checks] == ["recent orders"]
    assert fake_report("20261127T040000Z").drills[0].failed_checks == []


def test_dump_manifest_is_unchanged_by_drills(catalog: Catalog) -> None:
    """Dumps and drills side by side: each listing sees only its own kind."""
    catalog.write(fake_dump_manifest("20261127T021500Z", T0))
    catalog.write_drill(fake_report("20261127T040000Z"))
    assert catalog.ids("dump") == ["20261127T021500Z"] and catalog.drill_ids() == ["20261127T040000Z"]
