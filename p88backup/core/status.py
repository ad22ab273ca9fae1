"""``status``: gather what the verdict needs (catalog, WAL archive, server) and give it its stable shape.

The judging itself is :func:`p88backup.core.health.judge` (pure); this
module reads storage and, when a database is configured, asks the server
for its WAL position. ``status --json`` is :meth:`StatusReport.as_dict`:
the keys it always had (``storage``, ``checked_at``, ``dumps``,
``basebackups``) plus ``wal``, ``drills``, ``checks`` and ``healthy``.

:func:`limits` is the one place the ``[status]`` thresholds become
:class:`~p88backup.core.health.Limits` (``status``, ``schedule``).
:class:`RepeatedStatus` is :func:`collect` for a caller that checks again
and again (``schedule``): the same report, with what has not changed
since the last check taken from memory (:mod:`p88backup.core.statuscache`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from p88backup.core.health import Facts, Limits, Newest, Verdict, judge
from p88backup.core.wal.freshness import measure

if TYPE_CHECKING:
    from p88backup.catalog.backups import Catalog
    from p88backup.catalog.models import BaseBackupManifest, DrillReport, DumpManifest
    from p88backup.core.wal.archive import WalArchive
    from p88backup.pg.conn import ConnInfo
    from p88backup.storage.base import ObjectInfo, Storage
    from p88backup.stream import Codec


class Thresholds(Protocol):
    """What :func:`limits` reads: ``[status]`` (``Settings.status``), a duration setting in seconds."""

    def seconds(self, name: str) -> float | None: ...


def limits(status: Thresholds, **given: float | None) -> Limits:
    """The ``[status]`` thresholds, each replaced by a value ``given`` that is not None
    (``status --max-dump-age 3d`` -> ``limits(s.status, max_dump_age=259200.0)``)."""
    unknown = set(given) - {f.name for f in fields(Limits)}
    if unknown:
        raise TypeError(f"not a [status] threshold: {', '.join(sorted(unknown))}")
    values = {}
    for f in fields(Limits):
        value = given.get(f.name)
        values[f.name] = value if value is not None else status.seconds(f.name)
    return Limits(**values)


@dataclass(frozen=True)
class StatusReport:
    storage_url: str
    checked_at: datetime
    counts: dict[str, int]
    """Complete dumps, base backups and drill reports: ``{"dumps": 3, "basebackups": 1, "drills": 0}``."""
    facts: Facts
    verdict: Verdict

    @property
    def healthy(self) -> bool:
        return self.verdict.healthy

    def _section(self, key: str, newest: Newest | None) -> dict[str, object]:
        return {
            "count": self.counts[key],
            "latest_id": newest.id if newest else None,
            "latest_finished_at": newest.finished_at.isoformat() if newest else None,
            "latest_age_seconds": round((self.checked_at - newest.finished_at).total_seconds()) if newest else None,
        }

    def as_dict(self) -> dict[str, object]:
        """The stable ``status --json`` document."""
        drill = self.facts.drill
        return {
            "storage": self.storage_url,
            "checked_at": self.checked_at.isoformat(),
            "dumps": self._section("dumps", self.facts.dump),
            "basebackups": self._section("basebackups", self.facts.basebackup),
            "wal": self.facts.wal.as_dict(),
            "drills": self._section("drills", drill) | {"latest_ok": drill.ok if drill else None},
            "checks": [c.as_dict() for c in self.verdict.checks],
            "healthy": self.healthy,
        }


def newest_backup(manifests: Sequence[DumpManifest | BaseBackupManifest]) -> Newest | None:
    """The newest of complete backups listed oldest first (ids sort by time)."""
    if not manifests:
        return None
    m = manifests[-1]
    return Newest(m.id, m.finished_at)


def newest_drill(reports: Sequence[DrillReport]) -> Newest | None:
    """The newest drill report (oldest first in ``reports``), with what failed when it did."""
    if not reports:
        return None
    r = reports[-1]
    failed = []
    for run in r.drills:
        if run.ok:
            continue
        checks = [c.name for c in run.failed_checks]
        why = run.error or (f"check {', '.join(checks)} failed" if checks else "failed")
        failed.append(f"{run.kind} drill of {run.backup_id or 'no backup'}: {why}")
    return Newest(r.id, r.finished_at, r.ok, "; ".join(failed))


def collect(
    catalog: Catalog,
    archive: WalArchive,
    *,
    now: datetime,
    limits: Limits,
    conninfo: ConnInfo | None,
    no_server_reason: str = "no database_url configured",
    wal_listing: Iterable[tuple[str, ObjectInfo]] | None = None,
) -> StatusReport:
    """Read the catalog and the WAL archive (and the server's position when ``conninfo`` is given), judge.

    ``wal_listing``: the archive's files as :meth:`WalArchive.objects` lists them, when the caller
    has them already (:class:`RepeatedStatus`); by default the archive is listed.
    """
    dumps, basebackups, drills = catalog.dumps(), catalog.basebackups(), catalog.drills()
    listing = archive.objects() if wal_listing is None else wal_listing
    wal = measure(archive, listing, now=now, conninfo=conninfo, no_server_reason=no_server_reason)
    facts = Facts(newest_backup(dumps), newest_backup(basebackups), newest_drill(drills), wal)
    return StatusReport(
        catalog.storage.url,
        now,
        {"dumps": len(dumps), "basebackups": len(basebackups), "drills": len(drills)},
        facts,
        judge(facts, limits, now),
    )


class RepeatedStatus:
    """:func:`collect` again and again on one storage, each time reading only what may have changed.

    Manifests, drill reports and history files are read once; the WAL archive is
    listed whole once and then by its ends (:mod:`p88backup.core.statuscache`
    says why that sees every new file). Not for concurrent use: one caller
    (the health monitor's thread) at a time.
    """

    def __init__(self, storage: Storage, codec: Codec, *, full_every: float | None = None) -> None:
        from p88backup.catalog.backups import Catalog
        from p88backup.core.statuscache import FULL_EVERY, ImmutableReads, WalTail
        from p88backup.core.wal.archive import WalArchive

        self.storage = ImmutableReads(storage)
        self.catalog = Catalog(self.storage)
        self.archive = WalArchive(self.storage, codec)
        self.wal = WalTail(self.storage, full_every=FULL_EVERY if full_every is None else full_every)

    def __call__(self, *, now: datetime, limits: Limits, conninfo: ConnInfo | None) -> StatusReport:
        return collect(
            self.catalog, self.archive, now=now, limits=limits, conninfo=conninfo, wal_listing=self.wal.objects()
        )
