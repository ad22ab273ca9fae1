"""PostgreSQL WAL file names, LSN arithmetic and timeline histories.

Pure functions used by the per-segment archive commands, by retention and by
point-in-time recovery planning; they do no I/O and import only the standard
library, because ``archive_command`` pays their import cost once per segment.

Facts from PostgreSQL's ``xlog_internal.h`` that the code relies on:

* An LSN is a 64-bit byte position, printed ``%X/%X`` (high and low 32 bits,
  upper-case hex, no leading zeros): ``0/3000028``, ``16/B374D848``.
* The segment size is fixed at ``initdb``: a power of two from 1 MB to 1 GB,
  16 MB by default. Segment number ``segno = lsn // segment_size``.
* A segment file name is ``TTTTTTTTXXXXXXXXYYYYYYYY``: timeline, then
  ``segno // segments_per_xlogid`` and ``segno % segments_per_xlogid``, each as
  eight upper-case hex digits, where ``segments_per_xlogid = 2**32 //
  segment_size``. So the last eight digits wrap at 0x100 with 16 MB segments
  and at 0x40 with 64 MB ones; the same name means different segments under
  different sizes, which is why every function takes ``segment_size``.
* Other files in a WAL archive: ``TTTTTTTT.history`` (a timeline's ancestry),
  ``<segment>.<offset>.backup`` (backup history file, offset of the backup start
  inside the segment) and ``<segment>.partial`` (last, incomplete segment of an
  old timeline after promotion, or written by ``pg_receivewal``).

Timeline switches: when timeline N+1 branches from N at LSN S, the segment
containing S exists on both timelines — N's copy is N's WAL up to and past S,
N+1's copy starts with N's WAL up to S and continues with N+1's. Recovery that
follows N+1 reads every segment *before* the one containing S from N and the
segment containing S and everything after from N+1 (``XLogFileReadAnyTLI``
takes a timeline from the first segment containing its begin point). See
:func:`timeline_of_segment_at` and :func:`find_gaps`.

Every invalid input raises :class:`WalNameError` (a :class:`ValueError`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Literal

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
MIN_SEGMENT_SIZE = 1024 * 1024
MAX_SEGMENT_SIZE = 1024 * 1024 * 1024
MAX_LSN = 0xFFFF_FFFF_FFFF_FFFF
MAX_TIMELINE = 0xFFFF_FFFF

WalKind = Literal["segment", "partial", "history", "backup"]

# PostgreSQL's pg_lsn input takes 1-8 hex digits per half in either case; we
# accept the same and nothing else (no sign, no spaces, no 0x).
_LSN_RE = re.compile(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})")
# Archive names are upper-case only: PostgreSQL never writes lower case, and a
# second spelling of the same segment would let two objects claim one name.
_SEGMENT_RE = re.compile(r"[0-9A-F]{24}")
_ARCHIVE_RE = re.compile(
    r"(?P<seg>[0-9A-F]{24})(?:(?P<partial>\.partial)|\.(?P<offset>[0-9A-F]{8})\.backup)?"
    r"|(?P<tli>[0-9A-F]{8})\.history"
)
# timeline.c writes "%u\t%X/%X\t%s\n"; readers (like PostgreSQL's sscanf) are
# lenient about the whitespace between fields.
_HISTORY_LINE_RE = re.compile(r"[ \t]*([0-9]{1,10})[ \t]+([0-9A-Fa-f]{1,8}/[0-9A-Fa-f]{1,8})(?:[ \t]+(.*?))?[ \t]*")


class WalNameError(ValueError):
    """A WAL file name, LSN, segment size or history file is not valid."""


@dataclass(frozen=True)
class WalFile:
    """A classified WAL archive file name. ``segno`` is None for history files."""

    name: str
    kind: WalKind
    timeline: int
    segno: int | None


@dataclass(frozen=True)
class HistoryEntry:
    """One line of a ``.history`` file: ``parent_timeline`` ended at ``switchpoint``."""

    parent_timeline: int
    switchpoint: int  # LSN where the child timeline begins
    reason: str


def _show(value: object) -> str:
    # Names come from directory listings and the command line; keep junk short.
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _per_xlogid(segment_size: int) -> int:
    """Validate the segment size and return segments per 4 GB "xlogid"."""
    if (
        not isinstance(segment_size, int)
        or not MIN_SEGMENT_SIZE <= segment_size <= MAX_SEGMENT_SIZE
        or segment_size & (segment_size - 1)
    ):
        raise WalNameError(f"WAL segment size must be a power of two from 1 MB to 1 GB, got {_show(segment_size)}")
    return 0x1_0000_0000 // segment_size


def _check_lsn(lsn: int) -> int:
    if not isinstance(lsn, int) or not 0 <= lsn <= MAX_LSN:
        raise WalNameError(f"LSN must be an integer from 0 to 2**64-1, got {_show(lsn)}")
    return lsn


def _check_timeline(timeline: int) -> int:
    # Timeline 0 is never used by PostgreSQL; the first timeline is 1.
    if not isinstance(timeline, int) or not 1 <= timeline <= MAX_TIMELINE:
        raise WalNameError(f"timeline must be from 1 to 0xFFFFFFFF, got {_show(timeline)}")
    return timeline


def _check_segno(segno: int, segment_size: int) -> int:
    if not isinstance(segno, int) or not 0 <= segno <= MAX_LSN // segment_size:
        raise WalNameError(f"segment number {_show(segno)} is out of range for {segment_size}-byte segments")
    return segno


def parse_lsn(text: str) -> int:
    """Parse ``"X/Y"`` (hex, either case) into a 64-bit LSN."""
    m = _LSN_RE.fullmatch(text) if isinstance(text, str) else None
    if m is None:
        raise WalNameError(f"not an LSN (expected hex 'X/Y'): {_show(text)}")
    return int(m[1], 16) << 32 | int(m[2], 16)


def format_lsn(lsn: int) -> str:
    """Format an LSN the way PostgreSQL prints ``pg_lsn``: ``16/B374D848``."""
    _check_lsn(lsn)
    return f"{lsn >> 32:X}/{lsn & 0xFFFF_FFFF:X}"


def segment_name(timeline: int, segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The file name of segment ``segno`` on ``timeline`` (``XLogFileName``)."""
    per = _per_xlogid(segment_size)
    _check_timeline(timeline)
    _check_segno(segno, segment_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment_name(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """Split a plain segment file name into ``(timeline, segno)``.

    Only the 24-character form is accepted; use :func:`classify` for
    ``.partial``, ``.backup`` and ``.history`` names.
    """
    per = _per_xlogid(segment_size)
    if not isinstance(name, str) or _SEGMENT_RE.fullmatch(name) is None:
        raise WalNameError(f"not a WAL segment name: {_show(name)}")
    timeline = int(name[:8], 16)
    log = int(name[8:16], 16)
    seg = int(name[16:], 16)
    if timeline == 0:
        raise WalNameError(f"WAL segment name with timeline 0: {name}")
    if seg >= per:
        # e.g. ...000000FF exists with 16 MB segments but not with 64 MB ones.
        raise WalNameError(
            f"{name} is not a valid segment name for {segment_size}-byte segments (last part must be below {per:08X})"
        )
    return timeline, log * per + seg


def lsn_to_segno(lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The number of the segment containing byte ``lsn`` (``XLByteToSeg``)."""
    _per_xlogid(segment_size)
    return _check_lsn(lsn) // segment_size


def segment_for_lsn(timeline: int, lsn: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The name of the segment that contains byte ``lsn`` on ``timeline``.

    Unlike ``pg_walfile_name()``, which uses ``XLByteToPrevSeg`` and so names
    the *previous* segment when ``lsn`` is exactly on a segment boundary, this
    always names the containing segment. For an exclusive end position (the
    stop LSN of a backup, the end of WAL) pass ``lsn - 1`` to get the last
    segment that is actually needed.
    """
    return segment_name(timeline, lsn_to_segno(lsn, segment_size), segment_size)


def segment_start_lsn(segno: int, segment_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    """The LSN of the first byte of segment ``segno``."""
    _per_xlogid(segment_size)
    return _check_segno(segno, segment_size) * segment_size


def next_segment(name: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    """The segment after ``name`` on the same timeline."""
    timeline, segno = parse_segment_name(name, segment_size)
    return segment_name(timeline, segno + 1, segment_size)


def segment_range(first: str, last: str, segment_size: int = DEFAULT_SEGMENT_SIZE) -> Iterator[str]:
    """Segment names from ``first`` to ``last`` inclusive, on one timeline.

    Empty when ``last`` comes before ``first``. Arguments are checked now, not
    when iteration starts, so a bad name fails where it was passed.
    """
    first_tli, first_segno = parse_segment_name(first, segment_size)
    last_tli, last_segno = parse_segment_name(last, segment_size)
    if first_tli != last_tli:
        raise WalNameError(f"segment range spans timelines: {first} .. {last}")
    return (segment_name(first_tli, s, segment_size) for s in range(first_segno, last_segno + 1))


def classify(name: str, segment_size: int | None = DEFAULT_SEGMENT_SIZE) -> WalFile:
    """Say which kind of WAL archive file ``name`` is, or raise :class:`WalNameError`.

    Accepts exactly the names PostgreSQL hands to ``archive_command`` and asks
    of ``restore_command``: plain segments, ``.partial`` segments, ``.history``
    and ``.backup`` files, upper-case hex only. Anything else (paths,
    compression suffixes, lower case, ``.history.partial``) is rejected, which
    makes this the check to run on names that arrive from outside.

    ``segment_size=None`` means the size is not known (a name arriving at
    ``wal-fetch``, an archive listing): the name must be valid for *some*
    segment size, i.e. for the smallest (which allows the most segments per
    4 GB), and ``segno`` is None because it depends on the size.
    """
    size = MIN_SEGMENT_SIZE if segment_size is None else segment_size
    _per_xlogid(size)
    m = _ARCHIVE_RE.fullmatch(name) if isinstance(name, str) else None
    if m is None:
        raise WalNameError(f"not a WAL archive file name: {_show(name)}")
    if m["tli"] is not None:
        timeline = int(m["tli"], 16)
        if timeline == 0:
            raise WalNameError(f"history file for timeline 0: {name}")
        return WalFile(name=name, kind="history", timeline=timeline, segno=None)
    timeline, segno = parse_segment_name(m["seg"], size)
    kind: WalKind = "segment"
    if m["partial"] is not None:
        kind = "partial"
    elif m["offset"] is not None:
        # The offset is where the backup started inside the named segment.
        if int(m["offset"], 16) >= (MAX_SEGMENT_SIZE if segment_size is None else segment_size):
            raise WalNameError(f"backup history file offset beyond the segment: {name}")
        kind = "backup"
    return WalFile(name=name, kind=kind, timeline=timeline, segno=None if segment_size is None else segno)


def is_wal_name(name: str, segment_size: int | None = DEFAULT_SEGMENT_SIZE) -> bool:
    """True if :func:`classify` accepts ``name`` (any of the four kinds); ``None``: for some size."""
    try:
        classify(name, segment_size)
    except WalNameError:
        return False
    return True


def segment_sort_key(name: str) -> tuple[int, int, int]:
    """Order segment names by position in WAL, whatever the segment size.

    ``(log, seg, timeline)``: within one size, segment numbers grow with
    ``(log, seg)`` (both halves of the name), so no size is needed to find the
    newest segment of a listing.
    """
    if not isinstance(name, str) or _SEGMENT_RE.fullmatch(name[:24]) is None:
        raise WalNameError(f"not a WAL segment name: {_show(name)}")
    return int(name[8:16], 16), int(name[16:24], 16), int(name[:8], 16)


def parse_history(text: str) -> list[HistoryEntry]:
    """Parse the contents of a ``TTTTTTTT.history`` file.

    Each line is ``parentTLI<TAB>X/Y<TAB>reason``: the timeline that ended and
    the LSN where its child began. Blank lines and lines starting with ``#``
    are skipped (PostgreSQL writes a blank line between the copied parent
    history and the new entry). Parent timelines must increase, as
    PostgreSQL's own reader demands; anything else means a corrupt file.
    Switchpoints need not: a recovery that follows timeline N but stops before
    N began (e.g. at a restore point on N's parent) writes a history whose last
    switchpoint lies before the one above it. See :func:`timeline_of_lsn`.
    """
    entries: list[HistoryEntry] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        m = _HISTORY_LINE_RE.fullmatch(line)
        if m is None:
            raise WalNameError(f"history file line {lineno} is not 'TLI<TAB>X/Y<TAB>reason': {_show(line)}")
        entry = HistoryEntry(parent_timeline=int(m[1]), switchpoint=parse_lsn(m[2]), reason=m[3] or "")
        try:
            _check_timeline(entry.parent_timeline)
            _check_next_entry(entries, entry)
        except WalNameError as exc:
            raise WalNameError(f"history file line {lineno}: {exc}") from None
        entries.append(entry)
    return entries


def _check_next_entry(previous: list[HistoryEntry], entry: HistoryEntry) -> None:
    if not previous:
        return
    last = previous[-1]
    if entry.parent_timeline <= last.parent_timeline:
        raise WalNameError(f"timeline {entry.parent_timeline} does not follow {last.parent_timeline}")


def _check_history(history: list[HistoryEntry], current_tli: int) -> None:
    _check_timeline(current_tli)
    for i, entry in enumerate(history):
        _check_timeline(entry.parent_timeline)
        _check_lsn(entry.switchpoint)
        _check_next_entry(history[:i], entry)
    if history and history[-1].parent_timeline >= current_tli:
        raise WalNameError(
            f"history lists timeline {history[-1].parent_timeline}, which is not an ancestor of timeline {current_tli}"
        )


def timeline_of_lsn(timeline_history: list[HistoryEntry], current_tli: int, lsn: int) -> int:
    """The timeline that WAL position ``lsn`` belongs to when following ``current_tli``.

    Like PostgreSQL's ``tliOfPointInHistory``: each timeline covers
    ``[begin, switchpoint)``, where it begins at its parent's switchpoint, and
    the newest timeline that covers a position owns it; so a switchpoint
    belongs to the child, and a timeline whose switchpoint lies before its own
    begin (a recovery that stopped before that timeline began) owns nothing.
    Use this on exact positions (is a base backup's end on the history of the
    target timeline?); use :func:`timeline_of_segment_at` to pick segment files.
    """
    _check_history(timeline_history, current_tli)
    _check_lsn(lsn)
    for timeline, begin, end in reversed(_intervals(timeline_history, current_tli)):
        if begin <= lsn and (end is None or lsn < end):
            return timeline
    raise AssertionError("unreachable: the first timeline covers every position before its switchpoint")


def _intervals(history: list[HistoryEntry], current_tli: int) -> list[tuple[int, int, int | None]]:
    """``(timeline, begin, end)`` LSN ranges, oldest first; ``end`` is exclusive, None for the current one."""
    out: list[tuple[int, int, int | None]] = []
    begin = 0
    for entry in history:
        out.append((entry.parent_timeline, begin, entry.switchpoint))
        begin = entry.switchpoint
    out.append((current_tli, begin, None))
    return out


def timeline_of_segment_at(
    timeline_history: list[HistoryEntry],
    current_tli: int,
    lsn: int,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> int:
    """The timeline whose file recovery reads for the segment containing ``lsn``.

    Following ``current_tli`` (whose parsed ``.history`` is
    ``timeline_history``), the segment that contains a switchpoint is read from
    the *child* timeline, so this can differ from :func:`timeline_of_lsn` for
    positions just before a switchpoint in the same segment.
    """
    _check_lsn(lsn)
    segno = lsn // segment_size
    for timeline, first, last in _path(timeline_history, current_tli, segment_size):
        if first <= segno <= last:
            return timeline
    raise AssertionError("unreachable: the path covers every segment number")


def _path(history: list[HistoryEntry], current_tli: int, segment_size: int) -> list[tuple[int, int, int]]:
    """``(timeline, first_segno, last_segno)`` pieces that recovery reads, in order.

    For each segment recovery reads the file of the newest timeline that began
    at or before it (PostgreSQL's ``XLogFileReadAnyTLI``). So a timeline left in
    the same segment it began in gets no piece (the child's copy of that
    segment is the one read), and neither does one that a later timeline's
    history left before it began.
    """
    _per_xlogid(segment_size)
    _check_history(history, current_tli)
    pieces: list[tuple[int, int, int]] = []
    upper = MAX_LSN // segment_size + 1  # exclusive; walking from the newest timeline down
    for timeline, begin, _end in reversed(_intervals(history, current_tli)):
        first = begin // segment_size
        if first < upper:
            pieces.append((timeline, first, upper - 1))
            upper = first
    pieces.reverse()
    return pieces


def _span(history: list[HistoryEntry], current_tli: int, timeline: int, segment_size: int) -> tuple[int, int] | None:
    """Segments from which a segment named on ``timeline`` can start a replay to ``current_tli``.

    From the first segment of ``timeline`` up to and including the segment
    where the path leaves it (the earliest begin of any later timeline; that
    segment's file then comes from the child), or None when ``timeline`` is
    not on ``current_tli``'s history or owns no position on it.
    """
    intervals = _intervals(history, current_tli)
    for i, (tli, begin, _end) in enumerate(intervals):
        if tli != timeline:
            continue
        later = [b for _, b, _ in intervals[i + 1 :]]
        if not later:
            return begin // segment_size, MAX_LSN // segment_size
        leave = min(later)
        if leave <= begin:
            return None  # a later timeline begins before this one did: it owns nothing
        return begin // segment_size, leave // segment_size
    return None


def find_gaps(
    names: Iterable[str],
    start: str,
    end: str | None = None,
    histories: dict[int, list[HistoryEntry]] | None = None,
    segment_size: int = DEFAULT_SEGMENT_SIZE,
) -> list[tuple[str, str]]:
    """Missing segments needed to replay from ``start`` to ``end``, as inclusive ranges.

    ``names`` is a listing of the archive. Only plain segment names count as
    present (a ``.partial`` segment is not replayed by ``restore_command``);
    history, backup and ``.partial`` names and non-WAL names are ignored, but a
    24-hex-digit name that is invalid for ``segment_size`` raises, because it
    usually means the wrong segment size was passed.

    The target timeline is ``end``'s. With ``end=None`` it is the newest
    timeline reachable from ``start`` — ``start``'s own, or the highest one in
    ``histories`` that descends from it (like ``recovery_target_timeline =
    'latest'``) — and the end is the newest present segment on that path, so
    segments missing after it cannot be seen (pass ``end`` to check up to a
    known position); if none is present, ``start`` itself is reported missing.
    Timelines that have segments but no history file cannot be followed and are
    ignored.

    ``histories`` maps a timeline to its parsed ``.history`` file; it is needed
    whenever the target timeline differs from ``start``'s. Along the path,
    every segment before the one containing a switchpoint is needed from the
    parent timeline, and that segment and later ones from the child (see the
    module docstring), so the needed copy of ``start`` itself may be the
    child's. Ranges never span a timeline switch: a gap that crosses one is
    reported as two ranges. Names only locate a start to a segment; whether a
    backup's exact start LSN precedes a switchpoint in the same segment is for
    the caller to check with :func:`timeline_of_lsn`.
    """
    start_tli, start_segno = parse_segment_name(start, segment_size)
    histories = histories or {}
    present: dict[int, set[int]] = {}
    for name in names:
        if isinstance(name, str) and _SEGMENT_RE.fullmatch(name):
            timeline, segno = parse_segment_name(name, segment_size)
            present.setdefault(timeline, set()).add(segno)

    if end is not None:
        target, end_segno = parse_segment_name(end, segment_size)
        path = _target_path(start_tli, start_segno, target, histories, segment_size, strict=True)
        assert path is not None  # strict=True raises instead of returning None
        if end_segno < start_segno:
            raise WalNameError(f"end {end} comes before start {start}")
        if end_segno < path[-1][1]:
            raise WalNameError(f"end {end} is before timeline {target} began")
    else:
        path = None
        for target in sorted({start_tli, *histories}, reverse=True):
            if target < start_tli:
                break
            path = _target_path(start_tli, start_segno, target, histories, segment_size, strict=False)
            if path is not None:
                break
        if path is None:  # only if start's own history says start is not on it
            path = _target_path(start_tli, start_segno, start_tli, histories, segment_size, strict=True)
            assert path is not None
        on_path = [
            segno
            for timeline, first, last in path
            for segno in present.get(timeline, ())
            if first <= segno <= last and segno >= start_segno
        ]
        end_segno = max(on_path, default=start_segno)

    gaps: list[tuple[str, str]] = []
    for timeline, first, last in path:
        lo, hi = max(first, start_segno), min(last, end_segno)
        if lo > hi:
            continue
        missing_from = lo
        for segno in sorted(s for s in present.get(timeline, ()) if lo <= s <= hi):
            if segno > missing_from:
                gaps.append(_name_range(timeline, missing_from, segno - 1, segment_size))
            missing_from = segno + 1
        if missing_from <= hi:
            gaps.append(_name_range(timeline, missing_from, hi, segment_size))
    return gaps


def _name_range(timeline: int, first: int, last: int, segment_size: int) -> tuple[str, str]:
    return segment_name(timeline, first, segment_size), segment_name(timeline, last, segment_size)


def _target_path(
    start_tli: int,
    start_segno: int,
    target: int,
    histories: dict[int, list[HistoryEntry]],
    segment_size: int,
    *,
    strict: bool,
) -> list[tuple[int, int, int]] | None:
    """The replay path from ``start`` to ``target``, or None (or raise if strict)."""
    if target == start_tli:
        history = histories.get(target, [])
    elif target in histories:
        history = histories[target]
    elif strict:
        raise WalNameError(f"no history for timeline {target}: cannot follow it from timeline {start_tli}")
    else:
        return None
    # A corrupt history raises even when not strict: silently skipping it
    # would pick an older timeline and report a wrong, reassuring answer.
    path = _path(history, target, segment_size)
    span = _span(history, target, start_tli, segment_size)
    if span is None or not span[0] <= start_segno <= span[1]:
        if strict:
            raise WalNameError(
                f"{segment_name(start_tli, start_segno, segment_size)} is not on the history of timeline {target}"
            )
        return None
    return path
