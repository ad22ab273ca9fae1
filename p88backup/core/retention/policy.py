"""Retention policy: which backups to keep and which to expire.

Pure functions over a list of :class:`Candidate` backups; nothing here reads
storage or the clock (the caller passes ``now``). Two planners, then the
timeline-aware ones for base backups and WAL built on the second:

:func:`plan_gfs` — grandfather-father-son, like ``borg prune`` / ``restic forget``:

* ``keep_daily=N`` keeps the newest backup of each of the last N distinct UTC
  calendar days *that have a backup*; ``keep_weekly`` does the same for ISO
  weeks (``2026-W53``, as :meth:`datetime.isocalendar` numbers them, so the days
  around New Year belong to the ISO week-year, not the calendar year) and
  ``keep_monthly`` for calendar months.
* Periods are counted from the newest backup backwards over the periods that
  have a backup. They are **not** relative to ``now``: if backups stopped a
  month ago, ``keep_daily=7`` still keeps the last seven days that had one. A
  day without a backup does not use up the quota.
* Each rule counts on its own (restic's way, not borg's cascade): a backup that
  is the newest of its day, week and month is kept with all three reasons, and
  the weekly rule does not skip weeks whose backup the daily rule already kept.
* When a period has several backups, the newest represents it; equal times are
  ordered by id so the result never depends on input order.

:func:`plan_count_or_window` — for base backups that WAL replay depends on:
keep the newest ``keep`` good backups, plus every good backup whose age is at
most ``window``.

Guards that both planners apply on top of their rules:

* Only good backups (``good=True``) count toward a rule and are kept by one.
* The newest good backup is always kept (reason ``"newest"``), even when every
  ``keep_*`` is 0: retention must never leave zero restorable backups.
* ``keep_min`` (GFS) keeps the newest ``keep_min`` good backups (reason ``"min"``).
* A bad backup newer than the newest good one is kept (reason ``"newer than
  last good"``): a verify that fails for a transient reason must not cost us a
  backup we may still need. With no good backup at all, every bad one is kept.
  Older bad backups are expired.
* A backup whose time is after ``now`` is never expired (reason ``"future"``):
  the clock of whoever wrote or whoever prunes is wrong, and deleting on a wrong
  clock is not recoverable. ``now`` is used for nothing else in GFS; such a
  backup still takes part in the rules as the ordinary backup it probably is.

Times must be timezone-aware; duplicate or empty ids raise :class:`ValueError`.
``Decision.keep`` lists kept ids oldest first with their reasons in a fixed
order; ``Decision.expire`` lists ids to delete, oldest first, and
``Decision.expire_reasons`` says why each goes.

:func:`plan_base_backups` — the count-or-window rule applied the way WAL
replay works after a point-in-time restore (DESIGN §3.11). The *live*
timeline is the one ``recovery_target_timeline = 'latest'`` follows
(:func:`p88backup.core.wal.timelines.live_timeline`), and each base backup is
one of:

* **live** — its WAL range lies on the live timeline's history
  (:func:`~p88backup.core.wal.timelines.backup_on_history`, as for the PITR
  planner). Only these count toward ``keep`` and the window, and only these
  are coverage: the newest good one is never expired.
* **abandoned** — on a branch the live history left (timeline 1 past the point
  where a restore branched timeline 2 off it, or a sibling timeline). Never
  counted, never coverage. The stated rule: an abandoned backup is kept while
  it is younger than the window (good ones only), or while it is newer than
  every good backup on the live history — that is, until the live timeline
  has a base backup of its own taken after it. So a restore that abandoned a
  branch leaves that branch inspectable (``restore --timeline N``) until the
  next base backup of the new production timeline, and no longer than the
  window after that; it never pins the branch's WAL for ever.
* **unfollowed** — on a timeline above the live one: the history files do not
  reach it (a ``.history`` file is missing from the archive). Kept, and the
  WAL plan is held, until the archive is repaired: deleting on a guess about
  timelines is not recoverable.

:func:`plan_wal` — which archived WAL files no retained base backup needs.
Each kept base backup needs, from its start segment on, every file recovery
reads to reach the end of the timeline it follows (the live one, or its own
for an abandoned backup): the parent timeline's segments before each switch
and the child's from the switch segment on (see
:mod:`p88backup.core.wal.names`). History files are always kept; so is
everything on timelines above the live one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from p88backup.core.wal import names as walnames
from p88backup.core.wal.timelines import backup_on_history, live_timeline

REASON_NEWEST = "newest"
REASON_MIN = "min"
REASON_COUNT = "count"
REASON_WINDOW = "window"
REASON_FUTURE = "future"
REASON_NEWER_THAN_GOOD = "newer than last good"
REASON_ABANDONED_WINDOW = "abandoned branch, window"
REASON_ABANDONED_NEWER = "abandoned branch, newer than every backup on the live timeline"
REASON_UNFOLLOWED = "timeline not reached by the history files"
REASON_HELD = "held: timelines unknown"

Branch = Literal["live", "abandoned", "unfollowed"]


@dataclass(frozen=True)
class Candidate:
    """One backup as retention sees it."""

    id: str
    time: datetime  # timezone-aware; bucketed in UTC
    good: bool = True  # False: failed verification, never kept by a rule


@dataclass(frozen=True, kw_only=True)
class BaseCandidate(Candidate):
    """A base backup: ``time`` is when it started; its timeline and stop LSN place it on a branch."""

    timeline: int
    stop_lsn: str


@dataclass(frozen=True)
class GfsPolicy:
    """How many days / ISO weeks / months to keep, plus a floor of good backups."""

    keep_daily: int
    keep_weekly: int
    keep_monthly: int
    keep_min: int = 1

    def __post_init__(self) -> None:
        for name in ("keep_daily", "keep_weekly", "keep_monthly", "keep_min"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")


@dataclass(frozen=True)
class BaseBackupPolicy:
    """Base backups: keep the newest ``keep``, plus every one younger than ``window``."""

    keep: int = 2
    window: timedelta | None = None


@dataclass(frozen=True)
class Decision:
    """The plan: kept ids (oldest first) with why, and ids to delete (oldest first) with why."""

    keep: dict[str, list[str]]
    expire: list[str]
    expire_reasons: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class BaseBackupDecision(Decision):
    """:func:`plan_base_backups`' plan, and what it saw: the live timeline and each backup's branch.

    ``held`` (with ``live_timeline`` None and every backup kept) when the
    timelines could not be read: see :func:`hold_base_backups`.
    """

    live_timeline: int | None
    branch: dict[str, Branch]
    # id -> where an abandoned or unfollowed backup lies, for people reading the plan
    notes: dict[str, str] = field(default_factory=dict)
    held: str | None = None


@dataclass(frozen=True)
class WalNeed:
    """A retained base backup's claim on the archive: every file from ``start_wal`` to the end of ``timeline``."""

    backup_id: str
    start_wal: str
    timeline: int  # the timeline its recovery follows to the end


@dataclass(frozen=True)
class WalDecision:
    """WAL file names to delete (archive order), or why nothing may be deleted now."""

    expire: list[str]
    held: str | None = None


def _day(t: datetime) -> str:
    return t.strftime("%Y-%m-%d")


def _iso_week(t: datetime) -> str:
    year, week, _ = t.isocalendar()
    return f"{year:04d}-W{week:02d}"


def _month(t: datetime) -> str:
    return t.strftime("%Y-%m")


_GFS_RULES: tuple[tuple[str, str, Callable[[datetime], str]], ...] = (
    ("daily", "keep_daily", _day),
    ("weekly", "keep_weekly", _iso_week),
    ("monthly", "keep_monthly", _month),
)


def _aware(t: datetime, what: str) -> datetime:
    if not isinstance(t, datetime):
        raise ValueError(f"{what} must be a datetime, got {type(t).__name__}")
    if t.tzinfo is None or t.utcoffset() is None:
        # A naive time could be local or UTC; guessing would shift day buckets.
        raise ValueError(f"{what} must be timezone-aware, got {t.isoformat()}")
    return t.astimezone(UTC)


def _sorted(candidates: Sequence[Candidate]) -> list[tuple[datetime, Candidate]]:
    """Validate and order oldest first; ties on time are broken by id."""
    seen: set[str] = set()
    rows: list[tuple[datetime, Candidate]] = []
    for c in candidates:
        if not c.id:
            raise ValueError("backup id must not be empty")
        if c.id in seen:
            raise ValueError(f"duplicate backup id {c.id!r}")
        seen.add(c.id)
        rows.append((_aware(c.time, f"time of backup {c.id!r}"), c))
    rows.sort(key=lambda row: (row[0], row[1].id))
    return rows


def _newest_guards(
    newest_first: list[tuple[datetime, Candidate]],
    floor: int,
    floor_reason: str,
    reasons: dict[str, list[str]],
) -> None:
    if newest_first:
        reasons[newest_first[0][1].id].append(REASON_NEWEST)
    for _, c in newest_first[:floor]:
        reasons[c.id].append(floor_reason)


def _safety_guards(rows: list[tuple[datetime, Candidate]], now: datetime, reasons: dict[str, list[str]]) -> None:
    last_good = max((i for i, (_, c) in enumerate(rows) if c.good), default=-1)
    for i, (t, c) in enumerate(rows):
        if t > now:
            reasons[c.id].append(REASON_FUTURE)
        # By position in the sorted order, so a bad backup with the same time as
        # the newest good one is judged by the same tie-break as everything else.
        if not c.good and i > last_good:
            reasons[c.id].append(REASON_NEWER_THAN_GOOD)


def _decide(
    rows: list[tuple[datetime, Candidate]], reasons: dict[str, list[str]], why_not: Callable[[Candidate], str]
) -> Decision:
    keep = {c.id: reasons[c.id] for _, c in rows if reasons[c.id]}
    expire = [c.id for _, c in rows if not reasons[c.id]]
    by_id = {c.id: c for _, c in rows}
    return Decision(keep=keep, expire=expire, expire_reasons={i: why_not(by_id[i]) for i in expire})


_BAD = "failed verification and a newer good backup exists"


def plan_gfs(candidates: Sequence[Candidate], policy: GfsPolicy, now: datetime) -> Decision:
    """Plan grandfather-father-son retention; see the module docstring for the rules."""
    now = _aware(now, "now")
    rows = _sorted(candidates)
    # Reasons are appended in a fixed order (rules, newest, min, future, bad) so
    # the output reads the same whatever order the candidates came in.
    reasons: dict[str, list[str]] = {c.id: [] for _, c in rows}
    newest_first = [(t, c) for t, c in reversed(rows) if c.good]

    for label, quota_field, period_of in _GFS_RULES:
        quota: int = getattr(policy, quota_field)
        periods_kept = 0
        last_period: str | None = None
        for t, c in newest_first:
            if periods_kept >= quota:
                break
            period = period_of(t)
            # Newest first, so the first backup seen in a period represents it.
            if period != last_period:
                last_period = period
                periods_kept += 1
                reasons[c.id].append(f"{label} {period}")

    _newest_guards(newest_first, policy.keep_min, REASON_MIN, reasons)
    _safety_guards(rows, now, reasons)
    outside = (
        f"not the newest of its day, week or month within keep_daily={policy.keep_daily}, "
        f"keep_weekly={policy.keep_weekly}, keep_monthly={policy.keep_monthly} (keep_min={policy.keep_min})"
    )
    return _decide(rows, reasons, lambda c: outside if c.good else _BAD)


def plan_count_or_window(
    candidates: Sequence[Candidate],
    keep: int,
    window: timedelta | None,
    now: datetime,
) -> Decision:
    """Keep the newest ``keep`` good backups and every good one at most ``window`` old.

    Meant for base backups, where the window is the point-in-time-recovery
    horizon. Reasons are ``"count"`` and ``"window"``. A backup exactly
    ``window`` old is kept (the boundary errs towards keeping). Bad backups are
    not kept by the window; the shared guards (newest, future, newer than last
    good) apply as in :func:`plan_gfs`.
    """
    if not isinstance(keep, int) or keep < 0:
        raise ValueError(f"keep must be a non-negative integer, got {keep!r}")
    if window is not None and window < timedelta(0):
        raise ValueError(f"window must not be negative, got {window}")
    now = _aware(now, "now")
    rows = _sorted(candidates)
    reasons: dict[str, list[str]] = {c.id: [] for _, c in rows}
    newest_first = [(t, c) for t, c in reversed(rows) if c.good]

    if window is not None:
        horizon = now - window
        for t, c in newest_first:
            if t >= horizon:
                reasons[c.id].append(REASON_WINDOW)
    _newest_guards(newest_first, keep, REASON_COUNT, reasons)
    _safety_guards(rows, now, reasons)
    outside = f"older than the newest {keep}" + (f" and than the window ({window})" if window is not None else "")
    return _decide(rows, reasons, lambda c: outside if c.good else _BAD)


DRILL_REPORTS_KEPT = 10


def plan_drill_reports(candidates: Sequence[Candidate], now: datetime, keep: int = DRILL_REPORTS_KEPT) -> Decision:
    """Drill reports: keep the newest ``keep`` (10), passed or failed, and expire older ones.

    Reports are history, not restore points: a count is enough to read trends
    and to see the last failure next to the passes that followed it. The
    guards of :func:`plan_count_or_window` apply (a report dated in the future
    stays).
    """
    return plan_count_or_window(candidates, keep, None, now)


def _branch_note(c: BaseCandidate, histories: Mapping[int, list[walnames.HistoryEntry]], live: int) -> str:
    """Where an off-history backup lies, in words an operator can check against the history files."""
    for entry in histories.get(live, []):
        if entry.parent_timeline == c.timeline:
            return (
                f"timeline {c.timeline} past {walnames.format_lsn(entry.switchpoint)}, "
                f"where the live timeline {live}'s history left it"
            )
    return f"timeline {c.timeline} is not on the live timeline {live}'s history"


def plan_base_backups(
    candidates: Sequence[BaseCandidate],
    policy: BaseBackupPolicy,
    now: datetime,
    histories: Mapping[int, list[walnames.HistoryEntry]],
) -> BaseBackupDecision:
    """Count-or-window over the backups on the live timeline's history; see the module docstring.

    ``histories`` maps each timeline with an archived ``.history`` file to its
    parsed content. Kept ids come oldest first with reasons, expired ones with
    why; ``branch`` says where each backup lies and ``notes`` explains the
    off-history ones.
    """
    now = _aware(now, "now")
    rows = _sorted(candidates)  # validates every candidate, whatever its branch
    live = live_timeline(histories, (c.timeline for c in candidates))
    branch: dict[str, Branch] = {}
    notes: dict[str, str] = {}
    for bc in candidates:
        if bc.timeline > live:
            branch[bc.id] = "unfollowed"
            notes[bc.id] = f"timeline {bc.timeline}: {live + 1:08X}.history is not in the archive"
        elif backup_on_history(bc.timeline, bc.stop_lsn, histories, live):
            branch[bc.id] = "live"
        else:
            branch[bc.id] = "abandoned"
            notes[bc.id] = _branch_note(bc, histories, live)

    on_live = plan_count_or_window(
        [bc for bc in candidates if branch[bc.id] == "live"], policy.keep, policy.window, now
    )
    reasons: dict[str, list[str]] = {c.id: list(on_live.keep.get(c.id, [])) for _, c in rows}
    live_good = [(t, c.id) for t, c in rows if branch[c.id] == "live" and c.good]
    newest_live = max(live_good, default=None)
    horizon = now - policy.window if policy.window is not None else None
    for t, c in rows:
        if branch[c.id] == "unfollowed":
            reasons[c.id].append(REASON_UNFOLLOWED)
        elif branch[c.id] == "abandoned":
            if horizon is not None and c.good and t >= horizon:
                reasons[c.id].append(REASON_ABANDONED_WINDOW)
            if newest_live is None or (t, c.id) > newest_live:
                reasons[c.id].append(REASON_ABANDONED_NEWER)
            if t > now:
                reasons[c.id].append(REASON_FUTURE)

    def why_not(c: Candidate) -> str:
        if branch[c.id] == "live":
            return on_live.expire_reasons[c.id]
        window = f", older than the window ({policy.window})" if policy.window is not None else ""
        return f"abandoned branch{window}; timeline {live} has a newer base backup"

    decided = _decide(rows, reasons, why_not)
    return BaseBackupDecision(
        keep=decided.keep,
        expire=decided.expire,
        expire_reasons=decided.expire_reasons,
        live_timeline=live,
        branch={c.id: branch[c.id] for _, c in rows},
        notes=notes,
    )


def plan_wal(
    names: Iterable[str],
    needs: Sequence[WalNeed],
    histories: Mapping[int, list[walnames.HistoryEntry]],
    live: int,
    segment_size: int = walnames.DEFAULT_SEGMENT_SIZE,
) -> WalDecision:
    """The archived WAL files (``names``) that no retained base backup (``needs``) can use.

    Nothing is deleted — ``held`` says why — when no retained backup follows
    the live timeline (none of the archive is known to be useless then), when
    a retained backup lies on a timeline above the live one (its ancestry is
    unknown), or when a start segment or a history cannot be read. A name that
    is not a WAL file name for ``segment_size`` is kept.
    """
    if not any(n.timeline == live for n in needs):
        return WalDecision([], held=f"no retained base backup lies on the live timeline {live}'s history")
    beyond = sorted({n.timeline for n in needs if n.timeline > live})
    if beyond:
        return WalDecision(
            [], held=f"retained base backups on timeline {beyond[0]}, which the archived history files do not reach"
        )
    try:
        claims = [
            (walnames.parse_segment_name(n.start_wal, segment_size)[1], n.timeline, histories.get(n.timeline, []))
            for n in needs
        ]
        expire = []
        for name in names:
            try:
                wal = walnames.classify(name, segment_size)
            except walnames.WalNameError:
                continue
            if wal.segno is None or wal.timeline > live:
                continue  # history files, and timelines the history files do not reach: always kept
            start = walnames.segment_start_lsn(wal.segno, segment_size)
            if not any(
                wal.segno >= first
                and walnames.timeline_of_segment_at(history, followed, start, segment_size) == wal.timeline
                for first, followed, history in claims
            ):
                expire.append(name)
    except walnames.WalNameError as exc:
        return WalDecision([], held=f"cannot follow the timelines: {exc}")
    return WalDecision(expire)


def hold_base_backups(candidates: Sequence[BaseCandidate], why: str) -> BaseBackupDecision:
    """Keep every base backup: which are coverage depends on timeline histories that could not be read."""
    rows = _sorted(candidates)
    return BaseBackupDecision(
        keep={c.id: [REASON_HELD] for _, c in rows}, expire=[], live_timeline=None, branch={}, held=why
    )
