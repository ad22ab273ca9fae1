"""``wal-verify``: can every retained base backup be rolled forward to the newest WAL?

For each base backup, follow the timeline history from its start segment to
the newest archived segment and report any missing range (a gap: recovery
cannot pass it). Timeline branches (forks) are listed from the history files.

Segment names only have a meaning for a given segment size, so each backup's
chain is checked with the size recorded in its manifest, and an archive
without base backups with the size its newest segment states.

The report also says how fresh the archive is (:mod:`p88backup.core.wal.freshness`):
a gap-free archive that simply stopped receiving WAL is not one to rely on,
and ``status`` judges it. Staleness is reported here, not a failure: gaps are.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from p88backup.catalog.backups import Catalog
from p88backup.core.wal import names as walnames
from p88backup.core.wal.archive import WalArchive
from p88backup.core.wal.freshness import WalFreshness, measure
from p88backup.core.wal.timelines import live_timeline
from p88backup.errors import VerifyError

if TYPE_CHECKING:
    from p88backup.pg.conn import ConnInfo


@dataclass
class BackupChain:
    id: str
    timeline: int
    start_wal: str
    gaps: list[tuple[str, str]] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return not self.gaps and self.error is None


@dataclass
class WalReport:
    segments: int
    newest_segment: str | None
    newest_timeline: int
    timelines: list[dict[str, object]]
    chains: list[BackupChain]
    gaps: list[tuple[str, str]]
    segment_size: int | None = None
    freshness: WalFreshness | None = None

    @property
    def ok(self) -> bool:
        return not self.gaps and all(c.ok for c in self.chains)

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "segments": self.segments,
            "newest_segment": self.newest_segment,
            "newest_timeline": self.newest_timeline,
            "segment_size": self.segment_size,
            "timelines": self.timelines,
            "gaps": [{"from": a, "to": b} for a, b in self.gaps],
            "base_backups": [
                {**asdict(c), "gaps": [{"from": a, "to": b} for a, b in c.gaps], "ok": c.ok} for c in self.chains
            ],
            "freshness": self.freshness.as_dict() if self.freshness else None,
        }


def verify_wal(
    catalog: Catalog,
    archive: WalArchive,
    *,
    conninfo: ConnInfo | None = None,
    no_server_reason: str = "no database_url configured",
    now: datetime | None = None,
) -> WalReport:
    """Gaps per base backup and on each timeline, and the archive's freshness (with the server's
    lag when ``conninfo`` is given and the server answers)."""
    listing = list(archive.objects())
    segments = sorted(name for name, _ in listing if len(name) == 24)
    histories = archive.histories(listing)
    backups = catalog.basebackups()
    tli = live_timeline(histories, [b.timeline for b in backups])
    timelines = [
        {
            "timeline": t,
            "parent": h[-1].parent_timeline,
            "switchpoint": walnames.format_lsn(h[-1].switchpoint),
            "reason": h[-1].reason,
        }
        for t, h in sorted(histories.items())
        if h
    ]
    chains: list[BackupChain] = []
    all_gaps: set[tuple[str, str]] = set()
    for b in backups:
        chain = BackupChain(b.id, b.timeline, b.start_wal)
        relevant = {t: h for t, h in histories.items() if t <= tli} or None
        try:
            chain.gaps = walnames.find_gaps(segments, b.start_wal, None, relevant, b.wal_segment_size)
            # Up to the newest file the gap check cannot see a missing tail: the backup's own range
            # must be whole too, or the backup is not restorable at all.
            own = walnames.find_gaps(segments, b.start_wal, b.stop_wal, relevant, b.wal_segment_size)
            chain.gaps = sorted(set(chain.gaps) | set(own))
        except walnames.WalNameError as exc:
            chain.error = str(exc)
        all_gaps.update(chain.gaps)
        chains.append(chain)
    sizes = {b.wal_segment_size for b in backups}
    size = sizes.pop() if len(sizes) == 1 else None
    if not backups and segments:
        # No base backup yet: still check the archive is continuous on each timeline.
        size = archive.segment_size(listing)
        by_tli: dict[str, list[str]] = {}
        for s in segments:
            by_tli.setdefault(s[:8], []).append(s)
        assert size is not None  # there are segments
        for segs in by_tli.values():
            try:
                all_gaps.update(walnames.find_gaps(segs, segs[0], segs[-1], segment_size=size))
            except walnames.WalNameError as exc:  # a name that does not fit the archive's segment size
                raise VerifyError(f"the WAL archive is inconsistent: {exc}") from None
    newest = max(segments, key=walnames.segment_sort_key) if segments else None
    freshness = measure(
        archive, listing, now=now or datetime.now(UTC), conninfo=conninfo, no_server_reason=no_server_reason
    )
    return WalReport(len(segments), newest, tli, timelines, chains, sorted(all_gaps), size, freshness)
