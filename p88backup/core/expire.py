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

from p88backup.catalog import Catalog, Orphan
from p88backup.catalog.layout import Kind
from p88backup.catalog.models import BaseBackupManifest, DumpManifest
from p88backup.core.retention import Candidate, Decision, GfsPolicy, plan_gfs
from p88backup.errors import LockedError
from p88backup.locks import job_lock
from p88backup.storage import Storage

log = logging.getLogger(__name__)


@dataclass
class ExpirePlan:
    dumps: Decision
    orphans: list[Orphan] = field(default_factory=list)
    skipped_orphan_kinds: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        return {
            "dumps": {
                "keep": [{"id": i, "reasons": r} for i, r in sorted(self.dumps.keep.items())],
                "expire": list(self.dumps.expire),
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
    def __init__(self, storage: Storage, policy: GfsPolicy, *, orphan_grace: timedelta, lock_dir: Path) -> None:
        self.storage, self.policy, self.grace, self.lock_dir = storage, policy, orphan_grace, lock_dir
        self.catalog = Catalog(storage)
        self._dumps: dict[str, DumpManifest | BaseBackupManifest] = {}

    def plan(self, now: datetime) -> ExpirePlan:
        dumps = self.catalog.dumps()
        self._dumps = {m.id: m for m in dumps}
        decision = plan_gfs([Candidate(m.id, m.started_at) for m in dumps], self.policy, now)
        plan = ExpirePlan(decision)
        kinds: tuple[Kind, ...] = ("dump", "basebackup")
        for kind in kinds:
            if self._job_running(kind):
                plan.skipped_orphan_kinds.append(kind)
                continue
            for orphan in self.catalog.orphans(kind):
                if orphan.newest is None or now - orphan.newest > self.grace:
                    plan.orphans.append(orphan)
        return plan

    def _job_running(self, kind: Kind | str) -> bool:
        try:
            with job_lock(self.lock_dir, str(kind)):
                return False
        except LockedError:
            return True

    def apply(self, plan: ExpirePlan) -> None:
        for bid in plan.dumps.expire:
            manifest = self._dumps.get(bid) or self.catalog.read("dump", bid)
            self.catalog.delete(manifest)
            log.info("expired backup", extra={"p88": {"kind": "dump", "id": bid}})
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
