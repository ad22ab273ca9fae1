"""[schedule] cron expressions: what is accepted, what each means, the trigger APScheduler gets, and
both settings readers checking them alike.

Before: the [schedule] values were free strings nobody checked (a typo was found at 02:15, or
never), every job was off unless set, and the obvious way to build a trigger,
CronTrigger.from_crontab, runs "45 2 * * 0" on Mondays (APScheduler 3 counts weekdays from
Monday = 0) and needs day-of-month AND day-of-week to match.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from p88backup.errors import ConfigError
from p88backup.rawconfig import load_archive_config
from p88backup.schedule.cron import CronError, parse_schedule, trigger
from p88backup.settings import load_settings

THURSDAY = datetime(2026, 1, 1, tzinfo=UTC)  # 2026-01-01 is a Thursday


@pytest.mark.parametrize(
    ("text", "minutes", "hours", "days", "months", "weekdays"),
    [
        ("15 2 * * *", (15,), (2,), tuple(range(1, 32)), tuple(range(1, 13)), tuple(range(7))),
        ("*/20 1-3 * * *", (0, 20, 40), (1, 2, 3), tuple(range(1, 32)), tuple(range(1, 13)), tuple(range(7))),
        ("0 0 1,15 * *", (0,), (0,), (1, 15), tuple(range(1, 13)), tuple(range(7))),
        ("0 0 * jan,JUL *", (0,), (0,), tuple(range(1, 32)), (1, 7), tuple(range(7))),
        ("0 0 * * 7", (0,), (0,), tuple(range(1, 32)), tuple(range(1, 13)), (0,)),  # 7 is Sunday too
        ("0 0 * * 5-7", (0,), (0,), tuple(range(1, 32)), tuple(range(1, 13)), (0, 5, 6)),
        ("0 0 * * mon-fri", (0,), (0,), tuple(range(1, 32)), tuple(range(1, 13)), (1, 2, 3, 4, 5)),
        ("0 0 * * */2", (0,), (0,), tuple(range(1, 32)), tuple(range(1, 13)), (0, 2, 4, 6)),
        ("0 10-20/5 * * *", (0,), (10, 15, 20), tuple(range(1, 32)), tuple(range(1, 13)), tuple(range(7))),
        ("  30   4 * *  *  ", (30,), (4,), tuple(range(1, 32)), tuple(range(1, 13)), tuple(range(7))),
    ],
)
def test_five_field_expressions(
    text: str,
    minutes: tuple[int, ...],
    hours: tuple[int, ...],
    days: tuple[int, ...],
    months: tuple[int, ...],
    weekdays: tuple[int, ...],
) -> None:
    cron = parse_schedule(text)
    assert cron is not None
    assert (cron.seconds, cron.minutes, cron.hours, cron.days, cron.months, cron.weekdays) == (
        (0,),
        minutes,
        hours,
        days,
        months,
        weekdays,
    )


def test_off_and_seconds() -> None:
    assert parse_schedule("off") is None and parse_schedule(" OFF ") is None
    cron = parse_schedule("*/5 * * * * *")  # six fields: seconds first (tests)
    assert cron is not None and cron.seconds == tuple(range(0, 60, 5)) and cron.minutes == tuple(range(60))


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "it has 0"),
        ("daily", "it has 1"),
        ("15 2 * *", "of 5 fields (minute hour day-of-month month day-of-week, UTC); it has 4"),
        ("0 0 0 * * * *", "it has 7"),
        ("61 * * * *", "minute 61 is out of range 0-59"),
        ("0 24 * * *", "hour 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month 0 is out of range 1-31"),
        ("0 0 * 13 *", "month 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week 8 is out of range 0-7"),
        ("0 0 * * funday", "day-of-week 'funday' is not a number or sun..sat"),
        ("0 0 * foo *", "month 'foo' is not a number or jan..dec"),
        ("x * * * *", "minute 'x' is not a number"),
        ("*/0 * * * *", "the step after / must be a whole number from 1"),
        ("5/15 * * * *", "a step needs * or a range before it"),
        ("30-10 * * * *", "the range goes backwards"),
        ("1,,2 * * * *", "has an empty list item"),
        ("-5 * * * *", "minute '' is not a number"),
        ("@daily", "it has 1"),
    ],
)
def test_what_is_refused_and_why(text: str, problem: str) -> None:
    with pytest.raises(CronError) as exc:
        parse_schedule(text)
    assert problem in str(exc.value)


def fires(text: str, start: datetime, n: int) -> list[datetime]:
    cron = parse_schedule(text)
    assert cron is not None
    trig = trigger(cron)
    out: list[datetime] = []
    when: datetime | None = start
    for _ in range(n):
        assert when is not None
        when = trig.get_next_fire_time(None, when)
        assert when is not None
        out.append(when)
        when += timedelta(seconds=1)
    return out


def at(day: int, hour: int, minute: int, month: int = 1, second: int = 0) -> datetime:
    return datetime(2026, month, day, hour, minute, second, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Sunday is 0 (and 7), as in crontab: from_crontab would say Monday 2026-01-05
        ("45 2 * * 0", [at(4, 2, 45), at(11, 2, 45)]),
        ("0 5 * * 7", [at(4, 5, 0), at(11, 5, 0)]),
        ("0 5 * * sun", [at(4, 5, 0), at(11, 5, 0)]),
        ("30 4 * * 1-5", [at(1, 4, 30), at(2, 4, 30), at(5, 4, 30)]),
        # day-of-month and day-of-week both restricted: either matches (Vixie cron, cronie)
        ("0 0 1 * mon", [at(1, 0, 0), at(5, 0, 0), at(12, 0, 0)]),
        # a star-led day-of-month ("*/10") is not a restriction: both must match
        ("0 0 */10 * fri", [at(1, 0, 0, month=5), at(31, 0, 0, month=7), at(21, 0, 0, month=8)]),
        ("15 2 * * *", [at(1, 2, 15), at(2, 2, 15)]),
        ("*/5 * * * * *", [at(1, 0, 0), at(1, 0, 0, second=5), at(1, 0, 0, second=10)]),
        ("0 0 29 2 *", [datetime(2028, 2, 29, tzinfo=UTC)]),
    ],
)
def test_the_trigger_fires_when_cron_would(text: str, expected: list[datetime]) -> None:
    assert fires(text, THURSDAY, len(expected)) == expected


@pytest.mark.parametrize(
    "text", ["45 2 * * 0", "0 0 1 * mon", "0 0 */3 * fri", "*/7 1-3 * * 6,0", "5 * 13 * 5", "0 12 * jan-mar 2-4"]
)
def test_the_trigger_and_the_parsed_fields_agree_minute_by_minute(text: str) -> None:
    """Every minute of ten weeks: the trigger fires exactly at the minutes Cron.matches accepts."""
    cron = parse_schedule(text)
    assert cron is not None
    end = THURSDAY + timedelta(weeks=10)
    expected = []
    when = THURSDAY
    while when < end:
        if cron.matches(when):
            expected.append(when)
        when += timedelta(minutes=1)
    trig = trigger(cron)
    got: list[datetime] = []
    nxt = trig.get_next_fire_time(None, THURSDAY)
    while nxt is not None and nxt < end:
        got.append(nxt)
        nxt = trig.get_next_fire_time(nxt, nxt + timedelta(seconds=1))
    assert got == expected and expected


# -- schedules that never fire ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("0 0 30 2 *", "never fires: feb has no day 30 (at most 29 days), so the job would never run"),
        ("0 0 31 feb *", "feb has no day 31"),
        ("0 0 30,31 2 *", "feb has no day 30,31"),
        ("0 0 31 4,6,9,11 *", "apr,jun,sep,nov have no day 31 (at most 30 days)"),
        ("0 0 30-31/1 2 */2", "feb has no day 30,31"),  # a star-led weekday field restricts nothing: both must match
        ("0 0 0 30 2 *", "feb has no day 30"),  # six fields
    ],
)
def test_a_schedule_that_never_fires_is_refused(text: str, problem: str) -> None:
    """Before: accepted; `schedule --list` showed '-' as for 'off', and the job silently never ran."""
    with pytest.raises(CronError) as exc:
        parse_schedule(text)
    assert problem in str(exc.value)


@pytest.mark.parametrize(
    ("text", "fires"),
    [
        ("0 0 30 2 *", False),
        ("0 0 31 4,6,9,11 *", False),
        ("0 0 30-31 2 */2", False),
        ("0 0 29 2 *", True),  # leap years
        ("0 0 31 * *", True),
        ("0 0 31 2,3 *", True),
        ("0 0 30 2 mon", True),  # both day fields restricted: every Monday of February
        ("0 0 */10 2 fri", True),  # star-led: day 1 (or 11, 21) of February on a Friday
        ("0 0 29 2 */7", True),  # February 29 on a Sunday: 2032
        ("0 0 1 1 *", True),
    ],
)
def test_refused_exactly_when_apscheduler_finds_no_fire_time(
    text: str, fires: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from p88backup.schedule.cron import never_fires

    monkeypatch.setattr("p88backup.schedule.cron.never_fires", lambda _cron: None)  # the fields as parsed
    cron = parse_schedule(text)
    assert cron is not None
    assert (trigger(cron).get_next_fire_time(None, THURSDAY) is not None) is fires
    assert (never_fires(cron) is None) is fires


# -- the settings ---------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.lower().startswith("p88_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("clean_env")
def test_defaults_are_the_cron_files_times_and_every_default_parses() -> None:
    s = load_settings(None).schedule
    assert (s.dump, s.basebackup, s.expire, s.wal_verify, s.drill, s.reindex) == (
        "15 2 * * *",
        "45 2 * * 0",
        "30 4 * * *",
        "5 * * * *",
        "0 5 * * 0",
        "off",
    )
    assert (s.listen, s.stop_grace_seconds) == ("0.0.0.0:9188", 90.0)


@pytest.mark.usefixtures("clean_env")
def test_a_job_is_switched_off_and_timed_from_the_environment_or_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "p88.toml").write_text('[schedule]\ndrill = "off"\nexpire = "0 6 * * *"\n')
    monkeypatch.setenv("P88_SCHEDULE__DUMP", "0 1 * * *")
    s = load_settings(Path("p88.toml")).schedule
    assert (s.dump, s.drill, s.expire) == ("0 1 * * *", "off", "0 6 * * *")


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize(
    ("env", "toml", "message"),
    [
        (
            {"P88_SCHEDULE__DUMP": "15 2 * *"},
            "",
            "invalid setting schedule.dump (env P88_SCHEDULE__DUMP): must be off or a cron expression of 5 fields",
        ),
        ({}, '[schedule]\nwal_verify = "5 * * * 8"\n', "schedule.wal_verify (env P88_SCHEDULE__WAL_VERIFY): day-of"),
        (
            {},
            '[schedule]\ndrill = "0 5 30 2 *"\n',
            "schedule.drill (env P88_SCHEDULE__DRILL): never fires: feb has no day 30 (at most 29 days)",
        ),
        ({"P88_SCHEDULE__DUMP": "15 2 31 apr,jun *"}, "", "never fires: apr,jun have no day 31 (at most 30 days)"),
        ({"P88_SCHEDULE__LISTEN": "9188"}, "", "schedule.listen (env P88_SCHEDULE__LISTEN): must be HOST:PORT"),
        ({"P88_SCHEDULE__LISTEN": "0.0.0.0:99999"}, "", "with a port from 1 to 65535"),
        ({"P88_SCHEDULE__LISTEN": ":::9188"}, "", "an IPv6 address goes in brackets"),
        ({"P88_SCHEDULE__STOP_GRACE_SECONDS": "0"}, "", "schedule.stop_grace_seconds"),
    ],
)
def test_both_readers_refuse_a_bad_schedule_alike(
    env: dict[str, str], toml: str, message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    cfg = None
    if toml:
        (tmp_path / "p88.toml").write_text(toml)
        cfg = Path("p88.toml")
    with pytest.raises(ConfigError) as full:
        load_settings(cfg)
    with pytest.raises(ConfigError) as fast:
        load_archive_config(cfg)
    assert str(fast.value) == str(full.value)
    assert message in str(full.value)


@pytest.mark.usefixtures("clean_env")
@pytest.mark.parametrize("listen", ["0.0.0.0:9188", "127.0.0.1:1", "[::]:9188", ":9188", "backup:65535"])
def test_listen_addresses_accepted(listen: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P88_SCHEDULE__LISTEN", listen)
    assert load_settings(None).schedule.listen == listen
