"""``expire``: apply retention, and clear what interrupted runs left behind.

The plan is computed first (pure retention policy over the catalog) and is
exactly what ``--dry-run`` prints; applying it deletes each expired backup
manifest-first. Directories without a manifest (killed runs) go once they
are older than the grace period and no run of that job is in progress.

Drill reports (``drills/<id>/report.json``) are not backups: they are never
orphans of any kind, and the newest ten are kept
(:func:`~p88backup.core.retention.policy.plan_drill_reports`).

Base backups and WAL follow the live timeline's history (DESIGN §3.11, see
:mod:`p88backup.core.retention.policy`), which is read from the archived
``.history`` files. A manifest that cannot be trusted is skipped and
reported, never acted on; while any base-backup manifest is bad, or a
history file cannot be read, no WAL is deleted: what such a backup needs,
or which branch is live, is then unknown.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from p88backup.catalog import layout
from p88backup.catalog.backups import BadManifest, Catalog, Orphan
from p88backup.catalog.layout import Kind
from p88backup.catalog.models import BaseBackupManifest, DumpManifest
from p88backup.core.retention.policy import (
    BaseBackupDecision,
    BaseBackupPolicy,
    BaseCandidate,
    Candidate,
    Decision,
    GfsPolicy,
    WalNeed,
    hold_base_backups,
    plan_base_backups,
    plan_drill_reports,
    plan_gfs,
    plan_wal,
)
from p88backup.core.wal import names as walnames
from p88backup.core.wal.archive import WalArchive
from p88backup.errors import LockedError, P88Error
from p88backup.locks import job_lock
from p88backup.storage import Storage
from p88backup.storage.base import ObjectInfo

log = logging.getLogger(__name__)


@dataclass
class ExpirePlan:
    dumps: Decision
    basebackups: BaseBackupDecision
    wal: list[str] = field(default_factory=list)  # storage keys: the files, then their digest records
    wal_names: list[str] = field(default_factory=list)  # the expired WAL file names
    wal_kept_from: str | None = None
    wal_needs: list[WalNeed] = field(default_factory=list)
    wal_held: str | None = None
    segment_size: int = walnames.DEFAULT_SEGMENT_SIZE
    bad_manifests: list[BadManifest] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    skipped_orphan_kinds: list[str] = field(default_factory=list)
    drill_reports: Decision = field(default_factory=lambda: Decision({}, []))

    def wal_ranges(self) -> list[dict[str, object]]:
        """Expired WAL as runs of consecutive segments per timeline, oldest first.

        Exact, not a summary: every archived file of that timeline from
        ``first`` to ``last`` goes (segments, ``.partial`` and ``.backup``
        files alike, each with its digest record if it has one), and
        ``count`` says how many files that is.
        """
        runs: list[list[int]] = []  # [timeline, first segno, last segno, files]
        for name in sorted(self.wal_names, key=self._position):
            tli, segno = self._position(name)
            if runs and runs[-1][0] == tli and segno <= runs[-1][2] + 1:
                runs[-1][2:] = [segno, runs[-1][3] + 1]
            else:
                runs.append([tli, segno, segno, 1])
        return [
            {
                "timeline": tli,
                "first": walnames.segment_name(tli, first, self.segment_size),
                "last": walnames.segment_name(tli, last, self.segment_size),
                "count": count,
            }
            for tli, first, last, count in runs
        ]

    def _position(self, name: str) -> tuple[int, int]:
        wal = walnames.classify(name, self.segment_size)
        return wal.timeline, wal.segno or 0

    def as_dict(self) -> dict[str, object]:
        b = self.basebackups
        return {
            "dumps": {
                "keep": [{"id": i, "reasons": r} for i, r in sorted(self.dumps.keep.items())],
                "expire": list(self.dumps.expire),
                "expire_reasons": dict(self.dumps.expire_reasons),
            },
            "basebackups": {
                "keep": [
                    {"id": i, "reasons": r, "branch": b.branch.get(i), "note": b.notes.get(i)}
                    for i, r in sorted(b.keep.items())
                ],
                "expire": list(b.expire),
                "expire_reasons": dict(b.expire_reasons),
                "live_timeline": b.live_timeline,
                "held": b.held,
            },
            "wal": {
                "expire_count": len(self.wal),
                "kept_from": self.wal_kept_from,
                "expire_first": self.wal[0] if self.wal else None,
                "expire_last": self.wal[-1] if self.wal else None,
                "held": self.wal_held,
                "needed_by": [{"id": n.backup_id, "from": n.start_wal, "timeline": n.timeline} for n in self.wal_needs],
                "expire_ranges": self.wal_ranges(),
            },
            "bad_manifests": [{"kind": m.kind, "id": m.id, "key": m.key, "error": m.error} for m in self.bad_manifests],
            "orphans": [
                {
                    "kind": o.kind,
                    "id": o.id,
                    "objects": len(o.keys),
                    "newest": o.newest.isoformat() if o.newest else None,
                }
                for o in self.orphans
            ],
            "orphans_skipped_for_running_jobs": self.skipped_orphan_kinds,
            "drill_reports": {"keep": list(self.drill_reports.keep), "expire": list(self.drill_reports.expire)},
        }


def base_candidate(m: BaseBackupManifest) -> BaseCandidate:
    return BaseCandidate(m.id, m.started_at, timeline=m.timeline, stop_lsn=m.stop_lsn)


class Expirer:
    def __init__(
        self,
        storage: Storage,
        policy: GfsPolicy,
        *,
        orphan_grace: timedelta,
        lock_dir: Path,
        base_policy: BaseBackupPolicy | None = None,
        archive: WalArchive | None = None,
    ) -> None:
        self.storage, self.policy, self.grace, self.lock_dir = storage, policy, orphan_grace, lock_dir
        self.base_policy = base_policy or BaseBackupPolicy()
        self.archive = archive
        self.catalog = Catalog(storage)
        self._manifests: dict[tuple[str, str], DumpManifest | BaseBackupManifest] = {}

    def plan(self, now: datetime) -> ExpirePlan:
        found_dumps, bad_dumps = self.catalog.scan("dump")
        found_bases, bad_bases = self.catalog.scan("basebackup")
        dumps = [m for m in found_dumps if isinstance(m, DumpManifest)]
        bases = [m for m in found_bases if isinstance(m, BaseBackupManifest)]
        self._manifests = {("dump", m.id): m for m in dumps}
        self._manifests.update({("basebackup", m.id): m for m in bases})
        decision = plan_gfs([Candidate(m.id, m.started_at) for m in dumps], self.policy, now)

        listing, records = self._list_wal()
        candidates = [base_candidate(m) for m in bases]
        histories: dict[int, list[walnames.HistoryEntry]] = {}
        try:
            if self.archive is not None:
                histories = self.archive.histories(listing)
        except (P88Error, ValueError) as exc:  # a history file that does not decode or parse
            base_decision = hold_base_backups(candidates, f"cannot read the timeline history files: {exc}")
            log.error("base backups and WAL kept: timeline histories unreadable", extra={"p88": {"error": str(exc)}})
        else:
            base_decision = plan_base_backups(candidates, self.base_policy, now, histories)
        drills, bad_drills = self.catalog.scan_drills()
        plan = ExpirePlan(
            decision,
            base_decision,
            bad_manifests=bad_dumps + bad_bases + bad_drills,
            drill_reports=plan_drill_reports([Candidate(r.id, r.started_at) for r in drills], now),
        )
        if self.archive is not None:
            self._plan_wal(plan, bases, listing, records, histories, bad_bases)
        kinds: tuple[Kind, ...] = ("dump", "basebackup")
        for kind in kinds:
            if self._job_running(kind):
                plan.skipped_orphan_kinds.append(kind)
                continue
            for orphan in self.catalog.orphans(kind):
                if orphan.newest is None or now - orphan.newest > self.grace:
                    plan.orphans.append(orphan)
        return plan

    def _plan_wal(
        self,
        plan: ExpirePlan,
        bases: list[BaseBackupManifest],
        listing: list[tuple[str, ObjectInfo]],
        records: dict[str, str],
        histories: dict[int, list[walnames.HistoryEntry]],
        bad_bases: list[BadManifest],
    ) -> None:
        """WAL that no retained base backup needs: every file not on a kept backup's way to its timeline's end."""
        decision = plan.basebackups
        live = decision.live_timeline
        if not listing and not records:
            return  # no WAL archive (dumps only): nothing to plan, nothing to report
        if decision.held is not None or live is None:
            plan.wal_held = decision.held or "timelines unknown"
            return
        sizes = {m.wal_segment_size for m in bases}
        if len(sizes) > 1:
            plan.wal_held = f"base backups disagree on the WAL segment size ({sorted(sizes)}): WAL names are ambiguous"
            return
        plan.segment_size = size = sizes.pop() if sizes else walnames.DEFAULT_SEGMENT_SIZE
        kept = [m for m in bases if m.id in decision.keep]
        # A backup on the live history replays to the live timeline's end; an
        # abandoned one that is still kept, to the end of its own timeline.
        plan.wal_needs = [
            WalNeed(m.id, m.start_wal, live if decision.branch[m.id] == "live" else m.timeline) for m in kept
        ]
        on_live = [m for m in kept if decision.branch[m.id] == "live"]
        # The branch a point-in-time restore left (its old timeline after the fork) stays restorable
        # (`restore --timeline N`: "wrong target, go back") until the live timeline has a kept base
        # backup of its own after the fork: the newest live backup on that old timeline claims it too.
        forks = {e.parent_timeline: e.switchpoint for e in histories.get(live, [])}
        for timeline, fork in sorted(forks.items()):
            before = [m for m in on_live if m.timeline == timeline]
            after_fork = [m for m in on_live if walnames.parse_lsn(m.start_lsn) >= fork and m.timeline != timeline]
            if before and not after_fork:
                newest = max(before, key=lambda m: (walnames.parse_lsn(m.stop_lsn), m.id))
                plan.wal_needs.append(WalNeed(newest.id, newest.start_wal, timeline))
        if on_live:
            plan.wal_kept_from = min(on_live, key=lambda m: walnames.parse_segment_name(m.start_wal, size)[1]).start_wal
        if bad_bases:
            plan.wal_held = (
                f"{len(bad_bases)} base backup manifest(s) cannot be trusted (first: {bad_bases[0].key}); "
                "the WAL they need is unknown: fix or remove them"
            )
            return
        names = sorted({name for name, _ in listing} | set(records))
        wal = plan_wal(names, plan.wal_needs, histories, live, size)
        if wal.held is not None:
            plan.wal_held = wal.held
            return
        # Every stored copy of an expired file (either encoding), and its digest
        # record: files first, records after, so an interrupted run never leaves
        # a file without its record (see p88backup.core.wal.archive).
        stored = {obj.key for _, obj in listing} | set(records.values())
        plan.wal_names = wal.expire
        keys = [k for name in wal.expire for k in layout.wal_file_keys(name) if k in stored]
        plan.wal = [k for k in keys if not k.endswith(layout.WAL_DIGEST_SUFFIX)]
        plan.wal += [k for k in keys if k.endswith(layout.WAL_DIGEST_SUFFIX)]

    def _list_wal(self) -> tuple[list[tuple[str, ObjectInfo]], dict[str, str]]:
        """One listing of ``wal/``: (name, object) of each stored WAL file, and name -> digest record key.

        A record without its file (a push that died between the two) is listed
        too, so that it goes when its name expires.
        """
        files: list[tuple[str, ObjectInfo]] = []
        records: dict[str, str] = {}
        if self.archive is None:
            return files, records
        for obj in self.storage.list(layout.WAL_PREFIX):
            name = layout.wal_name_of_key(obj.key)
            if name is not None:
                if walnames.is_wal_name(name, None):
                    files.append((name, obj))
                continue
            base = obj.key.rsplit("/", 1)[-1]
            name = base.removesuffix(layout.WAL_DIGEST_SUFFIX)
            if name != base and walnames.is_wal_name(name, None) and layout.wal_digest_key(name) == obj.key:
                records[name] = obj.key
        return files, records

    def _job_running(self, kind: Kind | str) -> bool:
        try:
            with job_lock(self.lock_dir, str(kind)):
                return False
        except LockedError:
            return True

    def apply(self, plan: ExpirePlan) -> None:
        expired: list[tuple[Kind, str]] = [("dump", i) for i in plan.dumps.expire]
        expired += [("basebackup", i) for i in plan.basebackups.expire]
        for kind, bid in expired:
            manifest = self._manifests.get((kind, bid)) or self.catalog.read(kind, bid)
            self.catalog.delete(manifest)
            log.info("expired backup", extra={"p88": {"kind": kind, "id": bid}})
        for did in plan.drill_reports.expire:
            self.catalog.delete_drill(did)
            log.info("expired drill report", extra={"p88": {"id": did}})
        if plan.wal:
            # Only after the base backups that needed it are gone; digest records
            # in a second call, so no batch can remove a record before its file.
            self.storage.delete_many([k for k in plan.wal if not k.endswith(layout.WAL_DIGEST_SUFFIX)])
            self.storage.delete_many([k for k in plan.wal if k.endswith(layout.WAL_DIGEST_SUFFIX)])
            log.info(
                "expired WAL",
                extra={"p88": {"objects": len(plan.wal), "ranges": plan.wal_ranges()}},
            )
        for orphan in plan.orphans:
            self.storage.delete_many(orphan.keys)
            log.info(
                "removed incomplete backup",
                extra={"p88": {"kind": orphan.kind, "id": orphan.id, "objects": len(orphan.keys)}},
            )
        self._reap_interrupted_uploads()

    def _reap_interrupted_uploads(self) -> None:
        """Temp files (local) and multipart uploads (S3) of killed puts.

        Not while a dump or base backup runs here: a long upload of a live run is not a leftover
        (the S3 backend cannot tell them apart by age alone)."""
        running = [kind for kind in ("dump", "basebackup") if self._job_running(kind)]
        if running:
            log.info(
                "leftovers of interrupted uploads not reaped: a run is in progress", extra={"p88": {"jobs": running}}
            )
            return
        gone = self.storage.reap_interrupted(self.grace.total_seconds())
        if gone:
            log.info("removed leftovers of interrupted uploads", extra={"p88": {"count": len(gone)}})
