"""The ``[schedule]`` cron expressions: parsed and checked here, turned into APScheduler triggers.

A schedule is ``off`` (the job never runs) or five fields, as crontab(5) has
them, always in UTC::

    minute  hour  day-of-month  month  day-of-week
    15      2     *             *      *            02:15 every day
    45      2     *             *      0            02:45 on Sundays

A field is ``*``, a number, a range ``a-b``, a step ``*/n`` or ``a-b/n``, or a
comma-separated list of these. Months may be named ``jan``..``dec`` and weekdays
``sun``..``sat``; weekday 0 and 7 are both Sunday. As in Vixie cron and cronie,
when day-of-month and day-of-week are both restricted (neither starts with
``*``) a day matches when *either* matches: ``0 0 1 * mon`` runs on the 1st and
on every Monday.

A schedule that matches no time at all (``0 0 30 2 *``: February has no 30th)
is refused (:func:`never_fires`) rather than accepted as a job that never runs.

Six fields, a seconds field first (``*/5 * * * * *``), are accepted too: the
tests use them to make jobs fire within seconds. Production schedules are
five fields.

Why not APScheduler's ``CronTrigger.from_crontab``: APScheduler 3 numbers
weekdays from Monday = 0, so ``45 2 * * 0`` would run on Mondays (checked on
3.11: its next fire after Thursday 2026-01-01 is Monday 2026-01-05), and it
requires day-of-month *and* day-of-week to match. :func:`trigger` builds the
trigger from the fields parsed here instead, weekdays by name.

Standard library only at import time (the settings readers, the archive fast
path among them, check schedules with :func:`check_schedule`); APScheduler is
imported by :func:`trigger` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from apscheduler.triggers.base import BaseTrigger

OFF = "off"
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
WEEKDAYS = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")  # cron's numbering: 0 = Sunday
FIVE_FIELDS = "minute hour day-of-month month day-of-week"


class CronError(ValueError):
    """Not a schedule we accept; the message says what is wrong, and where."""


@dataclass(frozen=True)
class Cron:
    """A parsed schedule: the values each field allows (weekdays 0 = Sunday .. 6)."""

    expression: str
    seconds: tuple[int, ...]
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    days: tuple[int, ...]
    months: tuple[int, ...]
    weekdays: tuple[int, ...]
    days_restricted: bool
    """Day-of-month does not start with ``*`` (with weekdays restricted too, either may match)."""
    weekdays_restricted: bool

    def matches(self, when: datetime) -> bool:
        """Is ``when`` (UTC, to the second) a time this schedule fires at?"""
        if not (
            when.second in self.seconds
            and when.minute in self.minutes
            and when.hour in self.hours
            and when.month in self.months
        ):
            return False
        day_ok = when.day in self.days
        weekday_ok = (when.isoweekday() % 7) in self.weekdays
        if self.days_restricted and self.weekdays_restricted:
            return day_ok or weekday_ok
        return day_ok and weekday_ok


def _number(text: str, what: str, lo: int, hi: int, names: tuple[str, ...], first: int) -> int:
    lowered = text.lower()
    if lowered in names:
        return names.index(lowered) + first
    if not text.isdigit():
        named = f" or {names[0]}..{names[-1]}" if names else ""
        raise CronError(f"{what} {text!r} is not a number{named}")
    value = int(text)
    if not lo <= value <= hi:
        raise CronError(f"{what} {value} is out of range {lo}-{hi}")
    return value


def _field(
    text: str, what: str, lo: int, hi: int, names: tuple[str, ...] = (), first: int = 0
) -> tuple[tuple[int, ...], bool]:
    """The values a field allows, and whether it is restricted (does not start with ``*``)."""
    values: set[int] = set()
    for item in text.split(","):
        if not item:
            raise CronError(f"{what} {text!r} has an empty list item")
        base, slash, step_text = item.partition("/")
        step = 1
        if slash:
            if not step_text.isdigit() or int(step_text) == 0:
                raise CronError(f"{what} {item!r}: the step after / must be a whole number from 1")
            step = int(step_text)
        if base == "*":
            start, end = lo, hi
        elif "-" in base:
            a, _, b = base.partition("-")
            start, end = _number(a, what, lo, hi, names, first), _number(b, what, lo, hi, names, first)
            if start > end:
                raise CronError(f"{what} {item!r}: the range goes backwards")
        else:
            if slash:
                raise CronError(f"{what} {item!r}: a step needs * or a range before it (*/15, 0-30/5)")
            start = end = _number(base, what, lo, hi, names, first)
        values.update(range(start, end + 1, step))
    return tuple(sorted(values)), not text.startswith("*")


def parse_schedule(text: str) -> Cron | None:
    """The schedule in ``text``, or None for ``off``. Raises :class:`CronError`."""
    stripped = text.strip()
    if stripped.lower() == OFF:
        return None
    fields = stripped.split()
    if len(fields) not in (5, 6):
        raise CronError(f"must be {OFF} or a cron expression of 5 fields ({FIVE_FIELDS}, UTC); it has {len(fields)}")
    seconds: tuple[int, ...] = (0,)
    if len(fields) == 6:
        seconds, _ = _field(fields.pop(0), "second", 0, 59)
    minutes, _ = _field(fields[0], "minute", 0, 59)
    hours, _ = _field(fields[1], "hour", 0, 23)
    days, days_restricted = _field(fields[2], "day-of-month", 1, 31)
    months, _ = _field(fields[3], "month", 1, 12, MONTHS, first=1)
    weekdays7, weekdays_restricted = _field(fields[4], "day-of-week", 0, 7, WEEKDAYS)
    weekdays = tuple(sorted({d % 7 for d in weekdays7}))  # 7 is Sunday too
    cron = Cron(
        " ".join(stripped.split()),
        seconds,
        minutes,
        hours,
        days,
        months,
        weekdays,
        days_restricted,
        weekdays_restricted,
    )
    problem = never_fires(cron)
    if problem:
        raise CronError(problem)
    return cron


# The most days each month ever has (February 29 in leap years).
MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def never_fires(cron: Cron) -> str | None:
    """Why ``cron`` matches no time at all (a job that would silently never run), or None.

    Only day-of-month against month can rule every time out: hours, minutes
    and seconds always have a value, and over the 400-year Gregorian cycle
    every date, February 29 included, falls on every weekday. When both day
    fields are restricted either may match, and the weekdays alone always do.
    """
    if cron.days_restricted and cron.weekdays_restricted:
        return None
    if any(day <= MONTH_DAYS[month - 1] for month in cron.months for day in cron.days):
        return None
    days = ",".join(str(d) for d in cron.days)
    months = ",".join(MONTHS[m - 1] for m in cron.months)
    most = max(MONTH_DAYS[m - 1] for m in cron.months)
    have = "has" if len(cron.months) == 1 else "have"
    return f"never fires: {months} {have} no day {days} (at most {most} days), so the job would never run"


def check_schedule(text: str) -> str | None:
    """The problem with a ``[schedule]`` value, or None (the settings readers' check)."""
    try:
        parse_schedule(text)
    except CronError as exc:
        return str(exc)
    return None


def _values(values: tuple[int, ...], lo: int, hi: int) -> str:
    return "*" if values == tuple(range(lo, hi + 1)) else ",".join(str(v) for v in values)


def trigger(cron: Cron) -> BaseTrigger:
    """The APScheduler trigger that fires exactly at :meth:`Cron.matches` times, in UTC."""
    from datetime import UTC

    from apscheduler.triggers.combining import OrTrigger
    from apscheduler.triggers.cron import CronTrigger

    second, minute, hour = _values(cron.seconds, 0, 59), _values(cron.minutes, 0, 59), _values(cron.hours, 0, 23)
    month = _values(cron.months, 1, 12)
    days = _values(cron.days, 1, 31)
    # By name: APScheduler's weekday numbers start at Monday = 0, cron's at Sunday = 0.
    weekdays = "*" if len(cron.weekdays) == 7 else ",".join(WEEKDAYS[d] for d in cron.weekdays)

    def cron_trigger(day: str, day_of_week: str) -> CronTrigger:
        return CronTrigger(
            second=second,
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=day_of_week,
            timezone=UTC,
        )

    if cron.days_restricted and cron.weekdays_restricted:
        return OrTrigger([cron_trigger(days, "*"), cron_trigger("*", weekdays)])
    return cron_trigger(days, weekdays)
