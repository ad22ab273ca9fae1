"""The ``wal-stream`` spool against the server's timeline history (pure functions).

``pg_receivewal`` takes its starting point from the spool: the newest file
there (highest segment number, then highest timeline; a completed segment
means "from the next one", a ``.partial`` means "from its start"). After a
promotion the server is on a new timeline, and if that newest file lies on
the abandoned branch - past the point where the new timeline forked -
``pg_receivewal`` asks for a position "not in this server's history" for
ever, and the new timeline is never archived.

:func:`plan_spool` compares the spool with the history the server reports
and says which files to set aside (moved out of the way, never deleted: an
abandoned ``.partial`` may be the newest WAL of its branch anywhere) and,
when the spool alone would not make ``pg_receivewal`` start at the right
place, which empty ``.partial`` to create so that it does: ``pg_receivewal``
accepts an empty file as a segment to fill from its start (PostgreSQL 10-18),
which is how the start is steered without a ``--startpos`` option.

:func:`archived_position` says up to which WAL position everything the
streamer is responsible for is stored, for the lag in the status file.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from p88backup.core.wal import names as walnames


@dataclass(frozen=True)
class SetAside:
    name: str
    reason: str  # "off-history": on a branch the server left; "superseded": a parent timeline's tail


@dataclass(frozen=True)
class SpoolPlan:
    set_aside: tuple[SetAside, ...]
    seed: str | None  # name of an empty .partial to create, or None: the spool already says where to start
    start_timeline: int
    start_lsn: int  # where pg_receivewal will start (a segment boundary)
    fork_lsn: int | None  # where the server's history left the branch the spool was on, if it did


def _spool_files(names: Iterable[str], segment_size: int) -> list[walnames.WalFile]:
    out = []
    for name in names:
        try:
            f = walnames.classify(name, segment_size)
        except walnames.WalNameError:
            continue
        if f.kind in ("segment", "partial"):
            out.append(f)
    return out


def resume_lsn(f: walnames.WalFile, segment_size: int) -> int:
    """Where streaming continues after this file: its start if partial, the next segment if complete."""
    assert f.segno is not None
    return (f.segno + (0 if f.kind == "partial" else 1)) * segment_size


def newest_file(files: Iterable[walnames.WalFile]) -> walnames.WalFile | None:
    """The file ``pg_receivewal`` resumes from (its ``FindStreamingStart``).

    Highest segment number; on a tie the higher timeline, then a completed
    segment over a ``.partial``. Segment 0 never counts (PostgreSQL ignores it).
    """
    best: walnames.WalFile | None = None
    for f in files:
        assert f.segno is not None
        if best is None:
            better = True
        else:
            assert best.segno is not None
            better = (
                f.segno > best.segno
                or (f.segno == best.segno and f.timeline > best.timeline)
                or (
                    f.segno == best.segno
                    and f.timeline == best.timeline
                    and best.kind == "partial"
                    and f.kind != "partial"
                )
            )
        if better:
            best = f
    return best if best is not None and best.segno else None


def plan_spool(
    names: Iterable[str],
    *,
    timeline: int,
    history: list[walnames.HistoryEntry],
    server_lsn: int,
    slot_lsn: int | None,
    timeline_archived: bool,
    segment_size: int = walnames.DEFAULT_SEGMENT_SIZE,
) -> SpoolPlan:
    """What to do with the spool before starting ``pg_receivewal``.

    ``timeline`` and ``history`` are the server's (``IDENTIFY_SYSTEM`` and its
    ``.history`` file), ``server_lsn`` its flush position, ``slot_lsn`` where
    the slot's WAL begins (None if unknown), ``timeline_archived`` whether the
    archive already has the current timeline's history file.

    A file is on the server's history if it is on the current timeline, or on
    a parent timeline and streaming from it would not pass the point where the
    server left that timeline. Other files are set aside. The newest file left
    is where ``pg_receivewal`` resumes, following the history from there. If
    none is left, an empty ``.partial`` is planted: at the earliest point where
    the server left a set-aside file's branch (``fork_lsn``), on the timeline
    it followed from there (the segment containing a switch point is the
    child's copy); at the start of the current timeline if the archive has
    never seen it; else where ``pg_receivewal`` would start anyway (the slot's
    WAL or the server's position), made explicit so the status can say from
    where WAL is archived. A parent timeline's ``.partial`` that is not the
    resume point only repeats what the child's copy holds up to the switch,
    plus an abandoned tail: it is set aside too, so the spool holds one line
    of history.
    """
    switch = {e.parent_timeline: e.switchpoint for e in history}
    began = history[-1].switchpoint if history else 0
    files = _spool_files(names, segment_size)

    def on_history(f: walnames.WalFile) -> bool:
        if f.timeline == timeline:
            return True
        if f.timeline not in switch:
            return False
        # A .partial that starts exactly at the switch point holds nothing of this history.
        if f.kind == "partial":
            return resume_lsn(f, segment_size) < switch[f.timeline]
        return resume_lsn(f, segment_size) <= switch[f.timeline]

    kept = [f for f in files if on_history(f)]
    off = [f for f in files if not on_history(f)]
    newest = newest_file(kept)
    # Resuming a parent timeline exactly at its switch point (a restore that ended on a segment
    # boundary, e.g. after a WAL switch) fails: the server has nothing to stream there and answers
    # START_REPLICATION with the next timeline instead of streaming, which pg_receivewal takes for
    # an error, for ever. Start on the child timeline at that point instead.
    at_switch: int | None = None
    if (
        newest is not None
        and newest.timeline != timeline
        and resume_lsn(newest, segment_size) == switch.get(newest.timeline)
    ):
        at_switch = resume_lsn(newest, segment_size)

    fork: int | None = None
    if off:
        # A timeline the server's history does not name at all: it left it before this timeline began.
        fork = min(switch.get(f.timeline, began) for f in off)
    need = fork
    if need is None and timeline > 1 and not timeline_archived:
        need = began  # never archived: from its very first segment
    # A file on the history is a resume point pg_receivewal follows from there without skipping
    # anything, so only an empty spool needs telling where to start.
    seed: str | None = None
    start: int | None = None
    if at_switch is not None:
        start = at_switch
    elif newest is None:
        start = need if need is not None else slot_lsn if slot_lsn is not None else server_lsn
    if start is None:
        assert newest is not None
        start_tli, start_lsn = newest.timeline, resume_lsn(newest, segment_size)
    else:
        segno = walnames.lsn_to_segno(start, segment_size)
        start_tli = walnames.timeline_of_segment_at(history, timeline, start, segment_size)
        start_lsn = segno * segment_size
        seed = walnames.segment_name(start_tli, segno, segment_size) + ".partial"
        newest = None
    superseded = [f for f in kept if f.kind == "partial" and f.timeline != timeline and f != newest]
    aside = [SetAside(f.name, "off-history") for f in off] + [SetAside(f.name, "superseded") for f in superseded]
    return SpoolPlan(tuple(aside), seed, start_tli, start_lsn, fork)


def archived_position(
    names: Iterable[str],
    *,
    shipped_end: int | None,
    baseline: int | None,
    segment_size: int = walnames.DEFAULT_SEGMENT_SIZE,
) -> int | None:
    """The WAL position up to which everything the streamer handles is stored.

    ``shipped_end``: end of the newest segment this connection stored; ``baseline``:
    where this run started streaming (everything before it was stored by
    earlier runs). The ``.partial`` being received means everything before it
    is stored - unless a completed segment is still waiting in the spool, in
    which case that one's start is the limit. None: nothing to go by yet.
    """
    files = _spool_files(names, segment_size)
    candidates = [p for p in (shipped_end, baseline) if p is not None]
    candidates += [resume_lsn(f, segment_size) for f in files if f.kind == "partial"]
    best = max(candidates, default=None)
    waiting = [resume_lsn(f, segment_size) - segment_size for f in files if f.kind == "segment"]
    if waiting:
        best = min([*waiting, *([best] if best is not None else [])])
    return best


def caught_up(lag_bytes: int | None, segment_size: int = walnames.DEFAULT_SEGMENT_SIZE) -> bool:
    """Archived to within the segment being written (and one on its way to storage)."""
    return lag_bytes is not None and lag_bytes < 2 * segment_size
