"""``expire``: apply retention, and clear what interrupted runs left behind.

The plan is computed first (pure retention policy over the catalog) and is
exactly what ``--dry-run`` prints; applying it deletes each expired backup
manifest-first. Directories without a manifest (killed runs) go once they
are older than the grace period and no run of that job is in progress.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from p88backup.catalog.backups import Catalog, Orphan
from p88backup.catalog.layout import Kind
from p88backup.catalog.models import BaseBackupManifest, DumpManifest
from p88backup.core.retention.policy import (
    BaseBackupPolicy,
    Candidate,
    Decision,
    GfsPolicy,
    plan_count_or_window,
    plan_gfs,
)
from p88backup.core.wal import names as walnames
from p88backup.core.wal.archive import WalArchive
from p88backup.errors import LockedError
from p88backup.locks import job_lock
from p88backup.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class ExpirePlan:
    dumps: Decision
    basebackups: Decision
    wal: list[str] = field(default_factory=list)
    wal_kept_from: str | None = None
    orphans: list[Orphan] = field(default_factory=list)
    skipped_orphan_kinds: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "dumps": {
                "keep": [{"id": i, "reasons": r} for i, r in sorted(self.dumps.keep.items())],
                "expire": list(self.dumps.expire),
            },
            "basebackups": {
                "keep": [{"id": i, "reasons": r} for i, r in sorted(self.basebackups.keep.items())],
                "expire": list(self.basebackups.expire),
            },
            "wal": {
                "expire_count": len(self.wal),
                "kept_from": self.wal_kept_from,
                "expire_first": self.wal[0] if self.wal else None,
                "expire_last": self.wal[-1] if self.wal else None,
            },
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
        }


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
        dumps = self.catalog.dumps()
        bases = self.catalog.basebackups()
        self._manifests = {("dump", m.id): m for m in dumps}
        self._manifests.update({("basebackup", m.id): m for m in bases})
        decision = plan_gfs([Candidate(m.id, m.started_at) for m in dumps], self.policy, now)
        base_decision = plan_count_or_window(
            [Candidate(m.id, m.started_at) for m in bases], self.base_policy.keep, self.base_policy.window, now
        )
        plan = ExpirePlan(decision, base_decision)
        kept_bases = [m for m in bases if m.id in base_decision.keep]
        if kept_bases and self.archive is not None:
            plan.wal, plan.wal_kept_from = self._expired_wal(kept_bases)
        kinds: tuple[Kind, ...] = ("dump", "basebackup")
        for kind in kinds:
            if self._job_running(kind):
                plan.skipped_orphan_kinds.append(kind)
                continue
            for orphan in self.catalog.orphans(kind):
                if orphan.newest is None or now - orphan.newest > self.grace:
                    plan.orphans.append(orphan)
        return plan

    def _expired_wal(self, kept: list[BaseBackupManifest]) -> tuple[list[str], str]:
        """WAL older than every retained base backup's start: no retained backup can use it.

        History files are never expired (they are tiny and describe timelines).
        """
        assert self.archive is not None
        oldest = min(kept, key=lambda b: walnames.parse_segment_name(b.start_wal)[1])
        first_needed = walnames.parse_segment_name(oldest.start_wal)[1]
        expired = []
        for name, obj in self.archive.objects():
            wal = walnames.classify(name)
            if wal.kind != "history" and wal.segno is not None and wal.segno < first_needed:
                expired.append(obj.key)
        return expired, oldest.start_wal

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
        if plan.wal:
            # Only after the base backups that needed it are gone.
            self.storage.delete_many(plan.wal)
            log.info("expired WAL", extra={"p88": {"objects": len(plan.wal), "kept_from": plan.wal_kept_from}})
        for orphan in plan.orphans:
            self.storage.delete_many(orphan.keys)
            log.info(
                "removed incomplete backup",
                extra={"p88": {"kind": orphan.kind, "id": orphan.id, "objects": len(orphan.keys)}},
            )
        self._reap_interrupted_uploads()

    def _reap_interrupted_uploads(self) -> None:
        """Temp files (local) and multipart uploads (S3) of killed puts."""
        gone = self.storage.reap_interrupted(self.grace.total_seconds())
        if gone:
            log.info("removed leftovers of interrupted uploads", extra={"p88": {"count": len(gone)}})
