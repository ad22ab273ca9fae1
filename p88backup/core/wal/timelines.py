"""Which timeline is live: the one definition that PITR planning, wal-verify and retention share.

After a point-in-time restore promotes a new timeline, the archive holds
several branches. The *live* timeline is the one a restore with
``recovery_target_timeline = 'latest'`` follows, and so the one whose history
retention must keep restorable (DESIGN §3.11). PostgreSQL finds it the way
``findNewestTimeLine`` does: from the timeline recovery starts on, probe
``N+1.history``, ``N+2.history``, ... and stop at the first one missing.

A base backup is usable for a timeline only if its WAL range lies on that
timeline's history (:func:`backup_on_history`); backups on branches the
live history left are *abandoned*.

Pure, standard library only.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from p88backup.core.wal import names as walnames


def live_timeline(histories: Mapping[int, object], backup_timelines: Iterable[int] = ()) -> int:
    """The timeline ``recovery_target_timeline = 'latest'`` reaches from the oldest backup's timeline.

    ``histories`` maps each timeline that has an archived ``.history`` file to
    anything (only the keys are read); ``backup_timelines`` are the timelines
    of the base backups in the catalog (none: start at timeline 1). A missing
    history file stops the walk, as it stops PostgreSQL.
    """
    tli = min(backup_timelines, default=1)
    while tli + 1 in histories:
        tli += 1
    return tli


def backup_on_history(
    timeline: int, stop_lsn: str, histories: Mapping[int, list[walnames.HistoryEntry]], target_tli: int
) -> bool:
    """Does a base backup taken on ``timeline`` and consistent at ``stop_lsn`` lie on ``target_tli``'s history?

    Its whole WAL range must: the position where it became consistent must
    still belong to its own timeline when following ``target_tli`` (a
    switchpoint belongs to the child, as in PostgreSQL's
    ``tliOfPointInHistory``). A backup on timeline 1 that ended after timeline
    2 branched off holds pages timeline 2 never had.
    """
    if timeline == target_tli:
        return True
    history = histories.get(target_tli)
    if history is None:
        return False
    try:
        # The last byte the backup needs is stop_lsn - 1 (stop_lsn is exclusive): a backup that ended
        # exactly where the child timeline began - e.g. the one a `--pitr immediate` restore promoted
        # from - lies on the child's history, as PostgreSQL checks it (minRecoveryPoint - 1).
        last = max(walnames.parse_lsn(stop_lsn) - 1, 0)
        return walnames.timeline_of_lsn(history, target_tli, last) == timeline
    except walnames.WalNameError:  # a corrupt history or LSN: not provably on it
        return False
