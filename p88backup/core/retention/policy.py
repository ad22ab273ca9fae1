"""Retention policy: which backups to keep and which to expire.

Pure functions over a list of :class:`Candidate` backups; nothing here reads
storage or the clock (the caller passes ``now``). Two planners:

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
order; ``Decision.expire`` lists ids to delete, oldest first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

REASON_NEWEST = "newest"
REASON_MIN = "min"
REASON_COUNT = "count"
REASON_WINDOW = "window"
REASON_FUTURE = "future"
REASON_NEWER_THAN_GOOD = "newer than last good"


@dataclass(frozen=True)
class Candidate:
    """One backup as retention sees it."""

    id: str
    time: datetime  # timezone-aware; bucketed in UTC
    good: bool = True  # False: failed verification, never kept by a rule


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
    """The plan: kept ids (oldest first) with why, and ids to delete (oldest first)."""

    keep: dict[str, list[str]]
    expire: list[str]


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


def _decide(rows: list[tuple[datetime, Candidate]], reasons: dict[str, list[str]]) -> Decision:
    keep = {c.id: reasons[c.id] for _, c in rows if reasons[c.id]}
    expire = [c.id for _, c in rows if not reasons[c.id]]
    return Decision(keep=keep, expire=expire)


def plan_gfs(candidates: Sequence[Candidate], policy: GfsPolicy, now: datetime) -> Decision:
    """Plan grandfather-father-son retention; see the module docstring for the rules."""
    now = _aware(now, "now")
    rows = _sorted(candidates)
    # Reasons are appended in a fixed order (rules, newest, min, future, bad) so
    # the output reads the same whatever order the candidates came in.
    reasons: dict[str, list[str]] = {c.id: [] for _, c in rows}
    newest_first = [(t, c) for t, c in reversed(rows) if c.good]

    for label, field, period_of in _GFS_RULES:
        quota: int = getattr(policy, field)
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
    return _decide(rows, reasons)


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
    return _decide(rows, reasons)
