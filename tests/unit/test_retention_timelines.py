"""Table tests: base-backup and WAL retention across timelines (issue 10 item 4, DESIGN §3.6, §3.11).

The running example is item 4's story. Timeline 1 has base backups B1 (2026-11-20, WAL from
segment 2) and B2 (2026-11-24, from segment 8). A point-in-time restore to a moment between
them promoted timeline 2, which left timeline 1 at 0/5800000 (inside segment 5): B2 is on the
abandoned branch, and B1 is the only backup timeline 2's early history can be replayed from.
Later, B3 (2026-11-26) is taken on timeline 2, from its segment 8.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from p88backup.core.retention.policy import (
    REASON_ABANDONED_NEWER,
    REASON_ABANDONED_WINDOW,
    REASON_COUNT,
    REASON_FUTURE,
    REASON_NEWER_THAN_GOOD,
    REASON_NEWEST,
    REASON_UNFOLLOWED,
    REASON_WINDOW,
    BaseBackupPolicy,
    BaseCandidate,
    WalNeed,
    hold_base_backups,
    plan_base_backups,
    plan_wal,
)
from p88backup.core.wal import names as walnames
from p88backup.core.wal.timelines import backup_on_history, live_timeline

SEG = walnames.DEFAULT_SEGMENT_SIZE
NOW = datetime(2026, 11, 27, 3, 0, tzinfo=UTC)


def history(*entries: tuple[int, str]) -> list[walnames.HistoryEntry]:
    """A parsed .history file, written the way PostgreSQL writes it."""
    text = "".join(f"{parent}\t{lsn}\tno recovery target specified\n\n" for parent, lsn in entries)
    return walnames.parse_history(text)


FORK = "0/5800000"  # where timeline 2 left timeline 1 (segment 5)
H2 = {2: history((1, FORK))}


def bb(day: str, timeline: int, stop_lsn: str, good: bool = True) -> BaseCandidate:
    """A base backup whose id is its start time ('11-20' -> 2026-11-20T02:00 UTC)."""
    when = datetime.fromisoformat(f"2026-{day}T02:00+00:00")
    return BaseCandidate(when.strftime("%Y%m%dT%H%M%SZ"), when, good, timeline=timeline, stop_lsn=stop_lsn)


B1 = bb("11-20", 1, "0/2000128")
B2 = bb("11-24", 1, "0/8000128")
B3 = bb("11-26", 2, "0/8000128")
ID = {"B1": B1.id, "B2": B2.id, "B3": B3.id}


def ids(*names: str) -> list[str]:
    return [ID[n] for n in names]


# -- the shared definition of "live" ------------------------------------------


@pytest.mark.parametrize(
    ("histories", "backup_timelines", "live"),
    [
        pytest.param({}, [], 1, id="nothing-yet"),
        pytest.param({}, [1, 1], 1, id="one-timeline"),
        pytest.param(H2, [1], 2, id="after-a-restore"),
        pytest.param({2: 0, 3: 0}, [1], 3, id="two-restores"),
        pytest.param({3: 0}, [1], 1, id="missing-history-stops-the-walk"),
        pytest.param({3: 0}, [2, 4], 3, id="from-the-oldest-backups-timeline"),
    ],
)
def test_live_timeline(histories: dict[int, object], backup_timelines: list[int], live: int) -> None:
    assert live_timeline(histories, backup_timelines) == live


ON_HISTORY_CASES = [
    (1, "0/2000128", H2, 2, True),  # B1: ended before the fork
    (1, "0/8000128", H2, 2, False),  # B2: on timeline 1 past the fork
    (1, "0/57FFFFF", H2, 2, True),  # ended just before the switchpoint
    (1, "0/5800000", H2, 2, True),  # ended exactly at the switchpoint: its last byte is before it
    (1, "0/5800001", H2, 2, False),  # its last byte is the switchpoint, which belongs to the child
    (2, "0/8000128", H2, 2, True),  # B3: on the live timeline itself
    (2, "0/8000128", {2: history((1, FORK)), 3: history((1, "0/3800000"))}, 3, False),  # sibling branch
    (1, "0/2000128", {2: history((1, FORK)), 3: history((1, FORK), (2, "0/9800000"))}, 3, True),
    (1, "0/2000128", {}, 2, False),  # no history for the target: cannot follow it
    (1, "not an lsn", H2, 2, False),
]


@pytest.mark.parametrize(("timeline", "stop_lsn", "histories", "target", "expected"), ON_HISTORY_CASES)
def test_backup_on_history_agrees_with_the_pitr_planner(
    timeline: int, stop_lsn: str, histories: dict[int, list[walnames.HistoryEntry]], target: int, expected: bool
) -> None:
    from p88backup.core.pitr.plan import on_history

    assert backup_on_history(timeline, stop_lsn, histories, target) is expected
    backup = SimpleNamespace(
        id="x", timeline=timeline, start_lsn="0/0", stop_lsn=stop_lsn, stop_time=NOW, end_snapshot=None
    )
    assert on_history(backup, histories, target) is expected  # restore --pitr judges alike


# -- base backups -------------------------------------------------------------

BASE_CASES = [
    pytest.param(
        [B1, B2],
        BaseBackupPolicy(keep=1),
        {},
        {B2.id: [REASON_NEWEST, REASON_COUNT]},
        ids("B1"),
        id="one-timeline-is-plain-count",
    ),
    pytest.param(
        [B1, B2],
        BaseBackupPolicy(keep=1),
        H2,
        {B1.id: [REASON_NEWEST, REASON_COUNT], B2.id: [REASON_ABANDONED_NEWER]},
        [],
        id="item4-the-live-historys-only-backup-is-kept",
    ),
    pytest.param(
        [B1, B2],
        BaseBackupPolicy(keep=2),
        H2,
        {B1.id: [REASON_NEWEST, REASON_COUNT], B2.id: [REASON_ABANDONED_NEWER]},
        [],
        id="item4-abandoned-backup-is-not-counted",
    ),
    pytest.param(
        [B1, B2, B3],
        BaseBackupPolicy(keep=2),
        H2,
        {B1.id: [REASON_COUNT], B3.id: [REASON_NEWEST, REASON_COUNT]},
        ids("B2"),
        id="item4-abandoned-goes-once-the-live-timeline-has-its-own",
    ),
    pytest.param(
        [B1, B2, B3],
        BaseBackupPolicy(keep=1),
        H2,
        {B3.id: [REASON_NEWEST, REASON_COUNT]},
        ids("B1", "B2"),
        id="item4-keep-1",
    ),
    pytest.param(
        [B1, B2, B3],
        BaseBackupPolicy(keep=1, window=timedelta(days=5)),
        H2,
        {B2.id: [REASON_ABANDONED_WINDOW], B3.id: [REASON_WINDOW, REASON_NEWEST, REASON_COUNT]},
        ids("B1"),
        id="abandoned-kept-while-in-the-window",
    ),
    pytest.param(
        [B1, B2, B3],
        BaseBackupPolicy(keep=1, window=timedelta(days=8)),
        H2,
        {
            B1.id: [REASON_WINDOW],
            B2.id: [REASON_ABANDONED_WINDOW],
            B3.id: [REASON_WINDOW, REASON_NEWEST, REASON_COUNT],
        },
        [],
        id="window-covers-all",
    ),
    pytest.param(
        [B1, bb("11-21", 1, "0/5900000"), B3],
        BaseBackupPolicy(keep=3),
        H2,
        {B1.id: [REASON_COUNT], B3.id: [REASON_NEWEST, REASON_COUNT]},
        ["20261121T020000Z"],
        id="ended-after-the-switchpoint-is-abandoned",
    ),
    pytest.param(
        [B1, bb("11-21", 1, "0/57FFFFF"), B3],
        BaseBackupPolicy(keep=3),
        H2,
        {B1.id: [REASON_COUNT], "20261121T020000Z": [REASON_COUNT], B3.id: [REASON_NEWEST, REASON_COUNT]},
        [],
        id="ended-before-the-switchpoint-is-live",
    ),
    pytest.param(
        [B1, bb("11-22", 2, "0/7000128"), bb("11-25", 3, "0/6000128")],
        BaseBackupPolicy(keep=1),
        {2: history((1, FORK)), 3: history((1, "0/3800000"))},
        {"20261125T020000Z": [REASON_NEWEST, REASON_COUNT]},
        [B1.id, "20261122T020000Z"],
        id="sibling-timeline-is-abandoned",
    ),
    pytest.param(
        [B1, bb("11-26", 3, "0/9000128")],
        BaseBackupPolicy(keep=1),
        H2,
        {B1.id: [REASON_NEWEST, REASON_COUNT], "20261126T020000Z": [REASON_UNFOLLOWED]},
        [],
        id="timeline-without-history-is-never-expired",
    ),
    pytest.param(
        [B2, bb("11-25", 1, "0/9000128")],
        BaseBackupPolicy(keep=1),
        H2,
        {B2.id: [REASON_ABANDONED_NEWER], "20261125T020000Z": [REASON_ABANDONED_NEWER]},
        [],
        id="nothing-on-the-live-history-keeps-everything",
    ),
    pytest.param(
        [B1, bb("12-01", 1, "0/9000128"), bb("12-02", 2, "0/9000128")],
        BaseBackupPolicy(keep=1),
        H2,
        {"20261201T020000Z": [REASON_FUTURE], "20261202T020000Z": [REASON_NEWEST, REASON_COUNT, REASON_FUTURE]},
        [B1.id],
        id="future-abandoned-backup-is-kept",
    ),
    pytest.param(
        [B1, B2, bb("11-26", 2, "0/8000128", good=False)],
        BaseBackupPolicy(keep=1),
        H2,
        {
            B1.id: [REASON_NEWEST, REASON_COUNT],
            B2.id: [REASON_ABANDONED_NEWER],
            "20261126T020000Z": [REASON_NEWER_THAN_GOOD],
        },
        [],
        id="a-bad-backup-is-not-coverage",
    ),
]


@pytest.mark.parametrize(("candidates", "policy", "histories", "keep", "expire"), BASE_CASES)
def test_plan_base_backups(
    candidates: list[BaseCandidate],
    policy: BaseBackupPolicy,
    histories: dict[int, list[walnames.HistoryEntry]],
    keep: dict[str, list[str]],
    expire: list[str],
) -> None:
    decision = plan_base_backups(candidates, policy, NOW, histories)
    assert decision.keep == keep
    assert decision.expire == expire
    assert set(decision.expire_reasons) == set(expire)
    assert list(decision.keep) == sorted(decision.keep, key=lambda i: next(c.time for c in candidates if c.id == i))
    assert plan_base_backups(list(reversed(candidates)), policy, NOW, histories) == decision


def test_every_decision_says_why() -> None:
    decision = plan_base_backups([B1, B2, B3], BaseBackupPolicy(keep=1, window=timedelta(days=2)), NOW, H2)
    assert decision.live_timeline == 2
    assert decision.branch == {B1.id: "live", B2.id: "abandoned", B3.id: "live"}
    assert decision.notes == {B2.id: "timeline 1 past 0/5800000, where the live timeline 2's history left it"}
    assert decision.expire_reasons == {
        B1.id: "older than the newest 1 and than the window (2 days, 0:00:00)",
        B2.id: "abandoned branch, older than the window (2 days, 0:00:00); timeline 2 has a newer base backup",
    }
    held = hold_base_backups([B1, B2], "cannot read 00000002.history")
    assert held.expire == [] and set(held.keep) == {B1.id, B2.id} and held.live_timeline is None


def test_duplicate_ids_are_refused() -> None:
    with pytest.raises(ValueError, match="duplicate"):
        plan_base_backups([B1, B1], BaseBackupPolicy(keep=1), NOW, H2)


# -- WAL ----------------------------------------------------------------------


def seg(timeline: int, segno: int) -> str:
    return walnames.segment_name(timeline, segno)


# Timeline 1 went on to segment 0xC on the old primary; timeline 2 starts with its copy of
# segment 5 (the fork segment), and the new primary archived timeline 1's partial segment 5.
ARCHIVE = (
    [seg(1, n) for n in range(1, 0xD)]
    + [seg(1, 5) + ".partial", seg(1, 3) + ".00000028.backup", "00000002.history"]
    + [seg(2, n) for n in range(5, 0xA)]
)


def need(b: BaseCandidate, start_segno: int, follows: int) -> WalNeed:
    return WalNeed(b.id, seg(b.timeline, start_segno), follows)


WAL_CASES = [
    pytest.param(
        [seg(1, n) for n in range(1, 9)] + [seg(1, 3) + ".00000028.backup"],
        [WalNeed("b", seg(1, 5), 1)],
        {},
        1,
        [seg(1, 1), seg(1, 2), seg(1, 3), seg(1, 3) + ".00000028.backup", seg(1, 4)],
        id="one-timeline-below-the-oldest-start",
    ),
    pytest.param(
        ARCHIVE,
        [need(B1, 2, 2), need(B2, 8, 1)],
        H2,
        2,
        [seg(1, 1), seg(1, 5), seg(1, 5) + ".partial", seg(1, 6), seg(1, 7)],
        id="item4-before-b3",
    ),
    pytest.param(
        ARCHIVE,
        [need(B1, 2, 2), need(B3, 8, 2)],
        H2,
        2,
        [seg(1, 1)] + [seg(1, n) for n in range(5, 0xD)] + [seg(1, 5) + ".partial"],
        id="item4-after-b3-abandoned-branch-goes",
    ),
    pytest.param(
        ARCHIVE,
        [need(B3, 8, 2)],
        H2,
        2,
        [seg(1, n) for n in range(1, 0xD)]
        + [seg(1, 3) + ".00000028.backup", seg(1, 5) + ".partial", seg(2, 5), seg(2, 6), seg(2, 7)],
        id="only-b3",
    ),
    pytest.param(
        ARCHIVE,
        [WalNeed("b", seg(1, 5), 2)],  # started in the fork segment, before the switchpoint
        H2,
        2,
        [seg(1, n) for n in range(1, 0xD)] + [seg(1, 3) + ".00000028.backup", seg(1, 5) + ".partial"],
        id="start-in-the-fork-segment-reads-the-childs-copy",
    ),
    pytest.param(
        [*ARCHIVE, seg(3, 9), "not-wal", seg(1, 0x1FF)[:16] + "000001FF"],
        [need(B1, 2, 2)],
        H2,
        2,
        [seg(1, 1)] + [seg(1, n) for n in range(5, 0xD)] + [seg(1, 5) + ".partial"],
        id="unreachable-timelines-and-strange-names-stay",
    ),
]


@pytest.mark.parametrize(("names", "needs", "histories", "live", "expire"), WAL_CASES)
def test_plan_wal(
    names: list[str],
    needs: list[WalNeed],
    histories: dict[int, list[walnames.HistoryEntry]],
    live: int,
    expire: list[str],
) -> None:
    decision = plan_wal(names, needs, histories, live)
    assert decision.held is None
    assert sorted(decision.expire) == sorted(expire)
    assert not any(n.endswith(".history") for n in decision.expire)


@pytest.mark.parametrize(
    ("needs", "histories", "live", "held"),
    [
        pytest.param([], H2, 2, "no retained base backup lies on the live timeline 2", id="no-backup"),
        pytest.param([need(B2, 8, 1)], H2, 2, "no retained base backup lies on the live timeline 2", id="abandoned"),
        pytest.param([need(B1, 2, 2), WalNeed("x", seg(3, 9), 3)], H2, 2, "timeline 3", id="above-live"),
        pytest.param(
            [need(B1, 2, 2)], {2: [walnames.HistoryEntry(2, SEG, "")]}, 2, "cannot follow", id="corrupt-history"
        ),
        pytest.param([WalNeed("x", "garbage", 2)], H2, 2, "cannot follow", id="bad-start"),
    ],
)
def test_plan_wal_holds_when_unsure(
    needs: list[WalNeed], histories: dict[int, list[walnames.HistoryEntry]], live: int, held: str
) -> None:
    decision = plan_wal(ARCHIVE, needs, histories, live)
    assert decision.expire == []
    assert decision.held is not None and held in decision.held


# -- retention and the PITR planner agree, on random timeline trees ------------


def _random_story(
    rng: random.Random,
) -> tuple[list[str], dict[int, list[walnames.HistoryEntry]], dict[int, int], list[tuple[BaseCandidate, int]]]:
    """A complete archive of 1-4 timelines, each forked from an earlier one, and base backups on them.

    Returns (archive names, histories, last segno per timeline, [(backup, start segno)]).
    """
    begin = {1: SEG + 0x28}  # LSN where each timeline begins (the archive starts at segment 1)
    end = {1: rng.randint(3, 40) * SEG + 0x100}  # LSN where its WAL ends
    histories: dict[int, list[walnames.HistoryEntry]] = {}
    for tli in range(2, rng.randint(1, 4) + 1):
        parent = rng.randint(1, tli - 1)
        switch = rng.randint(begin[parent], end[parent])
        histories[tli] = [*histories.get(parent, []), walnames.HistoryEntry(parent, switch, "")]
        begin[tli] = switch
        end[tli] = switch + rng.randint(0, 30) * SEG + rng.randint(1, SEG)
    names = [f"{tli:08X}.history" for tli in histories]
    for tli in begin:
        first = 1 if tli == 1 else begin[tli] // SEG
        names += [seg(tli, n) for n in range(first, end[tli] // SEG + 1)]
    backups = []
    when = datetime(2026, 10, 1, tzinfo=UTC)
    for i in range(rng.randint(0, 8)):
        tli = rng.choice(list(begin))
        start = rng.randint(begin[tli], end[tli] - 1)
        stop = min(start + rng.randint(0x100, 2 * SEG), end[tli])
        when += timedelta(hours=rng.randint(1, 72))
        c = BaseCandidate(f"b{i}", when, rng.random() < 0.9, timeline=tli, stop_lsn=walnames.format_lsn(stop))
        backups.append((c, start // SEG))
    return names, histories, {t: e // SEG for t, e in end.items()}, backups


@pytest.mark.parametrize("seed", range(300))
def test_retained_backups_stay_restorable(seed: int) -> None:
    """After expiry, wal-verify's gap finder sees no gap for any retained backup that is usable."""
    rng = random.Random(seed)
    names, histories, last, backups = _random_story(rng)
    now = datetime(2026, 10, 1, tzinfo=UTC) + timedelta(days=rng.randint(0, 30))
    policy = BaseBackupPolicy(keep=rng.randint(0, 3), window=rng.choice([None, timedelta(days=rng.randint(0, 9))]))
    decision = plan_base_backups([c for c, _ in backups], policy, now, histories)
    live = decision.live_timeline
    assert live is not None
    start = {c.id: s for c, s in backups}
    live_good = [c for c, _ in backups if decision.branch[c.id] == "live" and c.good]
    if live_good:
        assert REASON_NEWEST in decision.keep[max(live_good, key=lambda c: (c.time, c.id)).id]
    kept = [c for c, _ in backups if c.id in decision.keep]
    needs = [
        WalNeed(c.id, seg(c.timeline, start[c.id]), live if decision.branch[c.id] == "live" else c.timeline)
        for c in kept
    ]
    wal = plan_wal(names, needs, histories, live)
    if wal.held is not None:
        assert wal.expire == [] and not any(n.timeline == live for n in needs)
        return
    left = set(names) - set(wal.expire)
    assert {n for n in names if n.endswith(".history")} <= left
    for c in kept:
        follows = live if decision.branch[c.id] == "live" else c.timeline
        relevant = {t: h for t, h in histories.items() if t <= follows}
        gaps = walnames.find_gaps(left, seg(c.timeline, start[c.id]), seg(follows, last[follows]), relevant)
        assert gaps == [], (c, follows)
