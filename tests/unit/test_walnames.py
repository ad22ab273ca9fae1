"""Table tests for WAL names, LSN arithmetic and timeline following (p88backup.core.wal.names)."""

from __future__ import annotations

import pytest

from p88backup.core.wal.names import (
    DEFAULT_SEGMENT_SIZE,
    HistoryEntry,
    WalFile,
    WalNameError,
    classify,
    find_gaps,
    format_lsn,
    is_wal_name,
    lsn_to_segno,
    next_segment,
    parse_history,
    parse_lsn,
    parse_segment_name,
    segment_for_lsn,
    segment_name,
    segment_range,
    segment_sort_key,
    segment_start_lsn,
    timeline_of_lsn,
    timeline_of_segment_at,
)

MB = 1024 * 1024
GB = 1024 * MB


def seg(timeline: int, segno: int, size: int = DEFAULT_SEGMENT_SIZE) -> str:
    return segment_name(timeline, segno, size)


# -- LSNs --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value", "canonical"),
    [
        pytest.param("0/0", 0, "0/0", id="zero"),
        pytest.param("0/3000028", 0x3000028, "0/3000028", id="small"),
        pytest.param("1/0", 1 << 32, "1/0", id="one-xlogid"),
        pytest.param("16/B374D848", 0x16_B374D848, "16/B374D848", id="typical"),
        pytest.param("16/b374d848", 0x16_B374D848, "16/B374D848", id="lower-case-input"),
        pytest.param("00000000/03000028", 0x3000028, "0/3000028", id="leading-zeros-input"),
        pytest.param("FFFFFFFF/FFFFFFFF", 2**64 - 1, "FFFFFFFF/FFFFFFFF", id="max"),
    ],
)
def test_lsn_round_trip(text: str, value: int, canonical: str) -> None:
    assert parse_lsn(text) == value
    assert format_lsn(value) == canonical
    assert parse_lsn(format_lsn(value)) == value


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("", id="empty"),
        pytest.param("0", id="no-slash"),
        pytest.param("/", id="slash-only"),
        pytest.param("0/", id="no-low"),
        pytest.param("/0", id="no-high"),
        pytest.param("123456789/0", id="high-too-long"),
        pytest.param("0/123456789", id="low-too-long"),
        pytest.param("0x1/0", id="0x-prefix"),
        pytest.param(" 0/0", id="leading-space"),
        pytest.param("0/0\n", id="trailing-newline"),
        pytest.param("-1/0", id="sign"),
        pytest.param("G/0", id="not-hex"),
        pytest.param("0/0/0", id="two-slashes"),
        pytest.param("\uff11/0", id="fullwidth-digit"),
    ],
)
def test_parse_lsn_rejects(text: str) -> None:
    with pytest.raises(WalNameError):
        parse_lsn(text)


@pytest.mark.parametrize("value", [-1, 2**64], ids=["negative", "too-big"])
def test_format_lsn_rejects(value: int) -> None:
    with pytest.raises(WalNameError):
        format_lsn(value)


# -- segment names -------------------------------------------------------------


@pytest.mark.parametrize(
    ("timeline", "lsn", "size", "name"),
    [
        pytest.param(1, "0/3000028", 16 * MB, "000000010000000000000003", id="16MB-small"),
        pytest.param(1, "0/FFFFFFFF", 16 * MB, "0000000100000000000000FF", id="16MB-last-of-xlogid"),
        pytest.param(1, "1/0", 16 * MB, "000000010000000100000000", id="16MB-1/0"),
        pytest.param(2, "16/B374D848", 16 * MB, "0000000200000016000000B3", id="16MB-typical"),
        pytest.param(0x1F, "FFFFFFFF/FFFFFFFF", 16 * MB, "0000001FFFFFFFFF000000FF", id="16MB-max"),
        pytest.param(1, "0/3000028", 1 * MB, "000000010000000000000030", id="1MB-small"),
        pytest.param(1, "0/FFFFFFFF", 1 * MB, "000000010000000000000FFF", id="1MB-last-of-xlogid"),
        pytest.param(1, "1/0", 1 * MB, "000000010000000100000000", id="1MB-1/0"),
        pytest.param(1, "0/3000028", 64 * MB, "000000010000000000000000", id="64MB-small"),
        pytest.param(1, "0/FC000000", 64 * MB, "00000001000000000000003F", id="64MB-last-of-xlogid"),
        pytest.param(1, "1/0", 64 * MB, "000000010000000100000000", id="64MB-1/0"),
        pytest.param(1, "2/C0000000", 1 * GB, "000000010000000200000003", id="1GB"),
    ],
)
def test_segment_for_lsn(timeline: int, lsn: str, size: int, name: str) -> None:
    assert segment_for_lsn(timeline, parse_lsn(lsn), size) == name
    segno = lsn_to_segno(parse_lsn(lsn), size)
    assert parse_segment_name(name, size) == (timeline, segno)
    assert segment_start_lsn(segno, size) <= parse_lsn(lsn) < segment_start_lsn(segno, size) + size


@pytest.mark.parametrize(
    ("timeline", "segno", "size", "name"),
    [
        pytest.param(1, 0, 16 * MB, "000000010000000000000000", id="first"),
        pytest.param(1, 255, 16 * MB, "0000000100000000000000FF", id="16MB-255"),
        pytest.param(1, 256, 16 * MB, "000000010000000100000000", id="16MB-256"),
        pytest.param(1, 64, 64 * MB, "000000010000000100000000", id="64MB-64"),
        pytest.param(1, 65, 64 * MB, "000000010000000100000001", id="64MB-65"),
        pytest.param(3, 4096 + 5, 1 * MB, "000000030000000100000005", id="1MB"),
        pytest.param(0xABCDEF01, 7, 16 * MB, "ABCDEF010000000000000007", id="big-timeline"),
    ],
)
def test_segment_name(timeline: int, segno: int, size: int, name: str) -> None:
    assert segment_name(timeline, segno, size) == name
    assert parse_segment_name(name, size) == (timeline, segno)


def test_segment_start_lsn() -> None:
    assert format_lsn(segment_start_lsn(3)) == "0/3000000"
    assert format_lsn(segment_start_lsn(256)) == "1/0"
    assert format_lsn(segment_start_lsn(65, 64 * MB)) == "1/4000000"


@pytest.mark.parametrize(
    ("name", "size"),
    [
        pytest.param("000000010000000000000040", 64 * MB, id="64MB-low-part-too-big"),
        pytest.param("0000000100000000000000FF", 64 * MB, id="16MB-name-under-64MB"),
        pytest.param("000000010000000000000100", 16 * MB, id="16MB-low-part-too-big"),
        pytest.param("000000000000000000000001", 16 * MB, id="timeline-0"),
        pytest.param("0000000100000000000000ff", 16 * MB, id="lower-case"),
        pytest.param("000000010000000000000001.partial", 16 * MB, id="partial-is-not-plain"),
        pytest.param("00000001000000000000001", 16 * MB, id="23-chars"),
    ],
)
def test_parse_segment_name_rejects(name: str, size: int) -> None:
    with pytest.raises(WalNameError):
        parse_segment_name(name, size)


@pytest.mark.parametrize(
    "size",
    [0, 1000, 512 * 1024, 3 * MB, 2 * GB],
    ids=["zero", "not-power-of-two", "too-small", "3MB", "too-big"],
)
def test_invalid_segment_size(size: int) -> None:
    with pytest.raises(WalNameError, match="segment size"):
        segment_name(1, 1, size)


@pytest.mark.parametrize(
    ("call",),
    [
        pytest.param(lambda: segment_name(0, 1), id="timeline-0"),
        pytest.param(lambda: segment_name(2**32, 1), id="timeline-too-big"),
        pytest.param(lambda: segment_name(1, -1), id="negative-segno"),
        pytest.param(lambda: segment_name(1, 2**56), id="segno-too-big-16MB"),
        pytest.param(lambda: segment_start_lsn(2**58, 64 * MB), id="segno-too-big-64MB"),
        pytest.param(lambda: lsn_to_segno(-1), id="negative-lsn"),
    ],
)
def test_out_of_range_numbers(call: object) -> None:
    assert callable(call)
    with pytest.raises(WalNameError):
        call()


@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [
        pytest.param("0000000100000000000000FE", 16 * MB, "0000000100000000000000FF", id="16MB"),
        pytest.param("0000000100000000000000FF", 16 * MB, "000000010000000100000000", id="16MB-xlogid-wrap"),
        pytest.param("00000001000000000000003F", 64 * MB, "000000010000000100000000", id="64MB-xlogid-wrap"),
        pytest.param("000000010000000000000FFF", 1 * MB, "000000010000000100000000", id="1MB-xlogid-wrap"),
        pytest.param("000000050000000A00000003", 1 * GB, "000000050000000B00000000", id="1GB-xlogid-wrap"),
    ],
)
def test_next_segment(name: str, size: int, expected: str) -> None:
    assert next_segment(name, size) == expected


def test_next_segment_past_the_end() -> None:
    with pytest.raises(WalNameError):
        next_segment("00000001FFFFFFFF000000FF")


@pytest.mark.parametrize(
    ("first", "last", "expected"),
    [
        pytest.param(
            "0000000100000000000000FE",
            "000000010000000100000001",
            [
                "0000000100000000000000FE",
                "0000000100000000000000FF",
                "000000010000000100000000",
                "000000010000000100000001",
            ],
            id="across-xlogid",
        ),
        pytest.param(
            "000000010000000000000003",
            "000000010000000000000003",
            ["000000010000000000000003"],
            id="single",
        ),
        pytest.param("000000010000000000000004", "000000010000000000000003", [], id="reversed"),
    ],
)
def test_segment_range(first: str, last: str, expected: list[str]) -> None:
    assert list(segment_range(first, last)) == expected


def test_segment_range_checks_eagerly() -> None:
    with pytest.raises(WalNameError, match="timelines"):
        segment_range("000000010000000000000001", "000000020000000000000003")
    with pytest.raises(WalNameError):
        segment_range("nonsense", "000000010000000000000003")


# -- classify ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        pytest.param(
            "000000010000000000000003",
            WalFile("000000010000000000000003", "segment", 1, 3),
            id="segment",
        ),
        pytest.param(
            "0000000200000001000000A0.partial",
            WalFile("0000000200000001000000A0.partial", "partial", 2, 256 + 0xA0),
            id="partial",
        ),
        pytest.param(
            "0000000A.history",
            WalFile("0000000A.history", "history", 10, None),
            id="history",
        ),
        pytest.param(
            "000000010000000000000002.00000028.backup",
            WalFile("000000010000000000000002.00000028.backup", "backup", 1, 2),
            id="backup",
        ),
        pytest.param(
            "000000010000000000000002.00FFFFFF.backup",
            WalFile("000000010000000000000002.00FFFFFF.backup", "backup", 1, 2),
            id="backup-last-offset",
        ),
    ],
)
def test_classify(name: str, expected: WalFile) -> None:
    assert classify(name) == expected
    assert is_wal_name(name)


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("", id="empty"),
        pytest.param("../x", id="dot-dot"),
        pytest.param("../000000010000000000000001", id="parent-path"),
        pytest.param("dir/000000010000000000000001", id="subdir"),
        pytest.param("000000010000000000000001/", id="trailing-slash"),
        pytest.param("..\\000000010000000000000001", id="backslash"),
        pytest.param("00000001000000000000000", id="23-chars"),
        pytest.param("0000000100000000000000011", id="25-chars"),
        pytest.param("000000010000000000000001.gz", id="gz-suffix"),
        pytest.param("000000010000000000000001.zst", id="zst-suffix"),
        pytest.param("000000010000000000000001.partial.gz", id="partial-gz"),
        pytest.param("0000000100000000000000ab", id="lower-case-hex"),
        pytest.param("0000000a.history", id="lower-case-history"),
        pytest.param("00000001.HISTORY", id="upper-case-suffix"),
        pytest.param("00000001.history.partial", id="history-partial"),
        pytest.param("00000000.history", id="history-timeline-0"),
        pytest.param("000000000000000000000001", id="segment-timeline-0"),
        pytest.param("000000010000000000000100", id="low-part-too-big"),
        pytest.param("000000010000000000000001.backup", id="backup-without-offset"),
        pytest.param("000000010000000000000001.0000002.backup", id="backup-short-offset"),
        pytest.param("000000010000000000000001.01000000.backup", id="backup-offset-past-segment"),
        pytest.param("000000010000000000000001\n", id="trailing-newline"),
        pytest.param(" 000000010000000000000001", id="leading-space"),
        pytest.param(".partial", id="suffix-only"),
        pytest.param("RECOVERYHISTORY", id="recovery-temp-file"),
    ],
)
def test_classify_rejects(name: str) -> None:
    with pytest.raises(WalNameError):
        classify(name)
    assert not is_wal_name(name)


def test_classify_depends_on_segment_size() -> None:
    assert classify("0000000100000000000000FF").segno == 255
    assert not is_wal_name("0000000100000000000000FF", 64 * MB)
    assert classify("000000010000000100000001", 64 * MB).segno == 65
    # A backup starting 32 MB into a 64 MB segment is fine; in a 16 MB one it is not.
    assert is_wal_name("000000010000000000000001.02000000.backup", 64 * MB)
    assert not is_wal_name("000000010000000000000001.02000000.backup")


@pytest.mark.parametrize(
    ("name", "kind"),
    [
        ("000000010000000000000100", "segment"),  # segment 256 of a 1 MB cluster
        ("000000010000000000000FFF.partial", "partial"),
        ("0000000100000000000000FF.3FFFFFFF.backup", "backup"),  # 1 GB segments allow this offset
        ("00000003.history", "history"),
    ],
)
def test_classify_without_a_known_segment_size(name: str, kind: str) -> None:
    # wal-fetch is asked for names of any cluster: valid for some size is enough, segno needs the size.
    f = classify(name, None)
    assert (f.kind, f.segno) == (kind, None) and is_wal_name(name, None)


@pytest.mark.parametrize(
    "name",
    [
        "000000010000000000001000",  # beyond even 1 MB segments
        "0000000100000000000000FF.40000000.backup",  # offset beyond even 1 GB segments
        "000000000000000000000001",
        "000000010000000000000001.zst",
    ],
)
def test_classify_without_a_known_segment_size_rejects(name: str) -> None:
    with pytest.raises(WalNameError):
        classify(name, None)


def test_segment_sort_key_orders_any_segment_size() -> None:
    names = [
        "000000020000000000000001",
        "000000010000000100000000",
        "000000010000000000000FFF",
        "00000001000000000000003F",
    ]
    assert sorted(names, key=segment_sort_key) == [
        "000000020000000000000001",
        "00000001000000000000003F",
        "000000010000000000000FFF",
        "000000010000000100000000",
    ]


# -- timeline history ----------------------------------------------------------

# The history file of timeline 4, as PostgreSQL writes it (each promotion copies
# the parent's file and adds a blank line and one entry).
HISTORY_4 = """1\t0/3000090\tno recovery target specified

2\t0/5000000\tat restore point "before_migration"

3\t1/A2000028\tbefore 2026-11-27 02:15:00.000000+00
"""
H4 = parse_history(HISTORY_4)


def test_parse_history_realistic_file() -> None:
    assert parse_history(HISTORY_4) == [
        HistoryEntry(1, 0x3000090, "no recovery target specified"),
        HistoryEntry(2, 0x5000000, 'at restore point "before_migration"'),
        HistoryEntry(3, 0x1_A2000028, "before 2026-11-27 02:15:00.000000+00"),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("", [], id="empty"),
        pytest.param("# only a comment\n\n", [], id="comment-only"),
        pytest.param(
            "  # indented comment\n1\t0/3000090\treason # with hash\n",
            [HistoryEntry(1, 0x3000090, "reason # with hash")],
            id="comments",
        ),
        pytest.param("1\t0/3000090\n", [HistoryEntry(1, 0x3000090, "")], id="no-reason"),
        pytest.param(
            "1 0/3000090  no recovery target specified  \r\n",
            [HistoryEntry(1, 0x3000090, "no recovery target specified")],
            id="spaces-and-crlf",
        ),
        pytest.param(
            "1\t0/3000090\ta\n2\t0/3000090\tb\n",
            [HistoryEntry(1, 0x3000090, "a"), HistoryEntry(2, 0x3000090, "b")],
            id="equal-switchpoints",
        ),
        pytest.param(
            "1\t0/3000090\ta\n3\t0/5000000\tb\n",
            [HistoryEntry(1, 0x3000090, "a"), HistoryEntry(3, 0x5000000, "b")],
            id="skipped-timeline",
        ),
    ],
)
def test_parse_history(text: str, expected: list[HistoryEntry]) -> None:
    assert parse_history(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("x\t0/3000090\treason\n", id="timeline-not-a-number"),
        pytest.param("1\tnot-an-lsn\treason\n", id="bad-lsn"),
        pytest.param("1\n", id="no-switchpoint"),
        pytest.param("0\t0/3000090\treason\n", id="timeline-0"),
        pytest.param("2\t0/3000090\ta\n1\t0/5000000\tb\n", id="timelines-decrease"),
        pytest.param("1\t0/3000090\ta\n1\t0/5000000\tb\n", id="timeline-repeats"),
    ],
)
def test_parse_history_rejects(text: str) -> None:
    with pytest.raises(WalNameError, match="line"):
        parse_history(text)


@pytest.mark.parametrize(
    ("lsn", "point_tli", "segment_tli"),
    [
        pytest.param("0/1000000", 1, 1, id="well-before-first-switch"),
        pytest.param("0/2FFFFFF", 1, 1, id="segment-before-switch-segment"),
        # Segment 3 holds the TL1->TL2 switch at 0/3000090: its TL2 copy is read.
        pytest.param("0/3000000", 1, 2, id="switch-segment-before-switchpoint"),
        pytest.param("0/300008F", 1, 2, id="byte-before-switchpoint"),
        pytest.param("0/3000090", 2, 2, id="at-switchpoint"),
        pytest.param("0/4FFFFFF", 2, 2, id="end-of-tl2"),
        # TL2->TL3 at exactly 0/5000000: segment 4 is TL2's, segment 5 TL3's.
        pytest.param("0/5000000", 3, 3, id="switch-on-segment-boundary"),
        pytest.param("1/A1FFFFFF", 3, 3, id="before-last-switch-segment"),
        pytest.param("1/A2000027", 3, 4, id="last-switch-segment"),
        pytest.param("1/A2000028", 4, 4, id="at-last-switchpoint"),
        pytest.param("FFFFFFFF/FFFFFFFF", 4, 4, id="end-of-wal"),
    ],
)
def test_timeline_of_lsn_and_segment(lsn: str, point_tli: int, segment_tli: int) -> None:
    assert timeline_of_lsn(H4, 4, parse_lsn(lsn)) == point_tli
    assert timeline_of_segment_at(H4, 4, parse_lsn(lsn)) == segment_tli


def test_timeline_following_an_ancestor() -> None:
    # Following TL2 only needs TL2's own history (the first line of H4).
    assert timeline_of_segment_at(H4[:1], 2, parse_lsn("0/3000000")) == 2
    assert timeline_of_segment_at(H4[:1], 2, parse_lsn("0/9000000")) == 2
    assert timeline_of_segment_at([], 1, parse_lsn("5/0")) == 1


def test_two_switches_in_one_segment() -> None:
    # TL2 began and ended inside segment 3: it has no segment of its own.
    history = parse_history("1\t0/3000010\ta\n2\t0/3000020\tb\n")
    assert timeline_of_lsn(history, 3, parse_lsn("0/3000018")) == 2
    assert timeline_of_segment_at(history, 3, parse_lsn("0/3000018")) == 3
    assert timeline_of_segment_at(history, 3, parse_lsn("0/2FFFFFF")) == 1


# The shape PostgreSQL writes when a recovery following timeline 2 stops (at a restore point)
# before timeline 2 began, and promotes to 3 (issue 10 item 11): switchpoints go backwards.
BACKWARDS = '1\t0/3018CB0\tno recovery target specified\n\n2\t0/3018C48\tat restore point "rp"\n'


def test_history_whose_switchpoints_go_backwards_is_valid() -> None:
    history = parse_history(BACKWARDS)
    assert [(e.parent_timeline, format_lsn(e.switchpoint)) for e in history] == [(1, "0/3018CB0"), (2, "0/3018C48")]


@pytest.mark.parametrize(
    ("lsn", "point_tli"),
    [
        ("0/3018C47", 1),  # before the restore point: timeline 1's WAL
        ("0/3018C48", 3),  # timeline 3 begins at the restore point, before timeline 2 ever began
        ("0/3018CB0", 3),  # where timeline 2 began: timeline 3 owns it (timeline 2 owns nothing)
        ("0/9000000", 3),
    ],
)
def test_timeline_of_lsn_when_switchpoints_go_backwards(lsn: str, point_tli: int) -> None:
    assert timeline_of_lsn(parse_history(BACKWARDS), 3, parse_lsn(lsn)) == point_tli


def test_backwards_history_across_segments() -> None:
    # Timeline 2 began in segment 5; timeline 3 left timeline 2's history at segment 4, before it.
    history = parse_history("1\t0/5000100\ta\n2\t0/4000100\tb\n")
    assert timeline_of_segment_at(history, 3, parse_lsn("0/3FFFFFF")) == 1
    assert timeline_of_segment_at(history, 3, parse_lsn("0/4000000")) == 3  # the fork segment: the child's copy
    assert timeline_of_segment_at(history, 3, parse_lsn("0/5000200")) == 3  # never timeline 2's
    names = [segment_name(1, n) for n in range(2, 4)] + [segment_name(3, n) for n in range(4, 7)]
    assert find_gaps(names, segment_name(1, 2), None, {3: history}) == []
    # A backup on timeline 1 starting in segment 4 is still on timeline 3's history; in segment 5 it is not.
    assert find_gaps(names + [segment_name(1, 4)], segment_name(1, 4), None, {3: history}) == []
    with pytest.raises(WalNameError, match="not on the history"):
        find_gaps(names, segment_name(1, 5), segment_name(3, 6), {3: history})


def test_timeline_of_segment_at_other_segment_size() -> None:
    # With 64 MB segments, 0/3000090 lies in segment 0, so TL2 owns it.
    assert timeline_of_segment_at(H4, 4, parse_lsn("0/0"), 64 * MB) == 2
    assert timeline_of_segment_at(H4, 4, parse_lsn("0/0")) == 1


def test_history_must_be_ancestors() -> None:
    with pytest.raises(WalNameError, match="ancestor"):
        timeline_of_lsn(H4, 3, 0)
    with pytest.raises(WalNameError):
        timeline_of_segment_at(H4, 0, 0)


# -- find_gaps -----------------------------------------------------------------

# TL2 branched from TL1 at 0/3000090 (inside segment 3).
H2 = parse_history("1\t0/3000090\tno recovery target specified\n")
# TL3 branched from TL2 at 0/6000000 (exactly at the start of segment 6).
H3 = parse_history("1\t0/3000090\tno recovery target specified\n\n2\t0/6000000\tpromoted\n")
# TL5 branched from TL1 at 0/4000000, a sibling of TL2.
H5 = parse_history("1\t0/4000000\tsibling\n")


def names(*ranges: tuple[int, int, int]) -> list[str]:
    """Segment names for (timeline, first segno, last segno) inclusive ranges."""
    return [seg(tli, s) for tli, first, last in ranges for s in range(first, last + 1)]


GAP_CASES = [
    pytest.param(names((1, 1, 5)), seg(1, 1), seg(1, 5), None, [], id="no-gap"),
    pytest.param(names((1, 1, 5)), seg(1, 1), None, None, [], id="no-gap-end-is-newest"),
    pytest.param(
        names((1, 1, 2), (1, 5, 6)),
        seg(1, 1),
        None,
        None,
        [(seg(1, 3), seg(1, 4))],
        id="gap-in-middle",
    ),
    pytest.param(
        names((1, 1, 1), (1, 3, 3), (1, 7, 8)),
        seg(1, 1),
        seg(1, 8),
        None,
        [(seg(1, 2), seg(1, 2)), (seg(1, 4), seg(1, 6))],
        id="two-gaps",
    ),
    pytest.param(names((1, 1, 3)), seg(1, 1), seg(1, 6), None, [(seg(1, 4), seg(1, 6))], id="gap-at-end"),
    pytest.param(names((1, 3, 5)), seg(1, 1), seg(1, 5), None, [(seg(1, 1), seg(1, 2))], id="gap-at-start"),
    pytest.param([], seg(1, 1), None, None, [(seg(1, 1), seg(1, 1))], id="nothing-present"),
    pytest.param(
        names((1, 0xFD, 0xFE), (1, 0x101, 0x101)),
        seg(1, 0xFD),
        None,
        None,
        [("0000000100000000000000FF", "000000010000000100000000")],
        id="gap-across-xlogid",
    ),
    pytest.param(names((1, 1, 3), (2, 3, 6)), seg(1, 1), seg(2, 6), {2: H2}, [], id="switch-no-gap"),
    pytest.param(
        names((1, 1, 3), (2, 4, 6)),
        seg(1, 1),
        seg(2, 6),
        {2: H2},
        [(seg(2, 3), seg(2, 3))],
        id="switch-segment-needed-from-new-timeline",
    ),
    pytest.param(
        names((1, 1, 1), (1, 3, 3), (2, 4, 6)),
        seg(1, 1),
        seg(2, 6),
        {2: H2},
        [(seg(1, 2), seg(1, 2)), (seg(2, 3), seg(2, 3))],
        id="gap-across-switch-is-two-ranges",
    ),
    pytest.param(
        names((1, 1, 2), (2, 3, 4)),
        seg(1, 1),
        None,
        {2: H2},
        [],
        id="switch-end-is-newest-on-latest-timeline",
    ),
    pytest.param(
        names((1, 1, 5), (2, 3, 3), (2, 5, 5)),
        seg(1, 1),
        None,
        {2: H2},
        [(seg(2, 4), seg(2, 4))],
        id="old-timeline-copies-do-not-fill-gaps",
    ),
    pytest.param(
        names((1, 1, 2), (2, 3, 5), (3, 6, 8)),
        seg(1, 1),
        None,
        {2: H2, 3: H3},
        [],
        id="two-switches-latest",
    ),
    pytest.param(
        names((1, 1, 2), (2, 3, 4), (3, 6, 8)),
        seg(1, 1),
        None,
        {2: H2, 3: H3},
        [(seg(2, 5), seg(2, 5))],
        id="two-switches-boundary-segment-from-parent",
    ),
    pytest.param(
        names((1, 1, 2), (2, 3, 8)),
        seg(1, 1),
        seg(2, 8),
        {2: H2, 3: H3},
        [],
        id="explicit-end-picks-timeline",
    ),
    pytest.param(
        names((1, 1, 2), (2, 3, 4)),
        seg(1, 3),
        None,
        {2: H2},
        [],
        id="start-in-switch-segment-uses-child-copy",
    ),
    pytest.param(
        names((2, 3, 6), (5, 4, 9)),
        seg(2, 3),
        None,
        {2: H2, 5: H5},
        [],
        id="latest-skips-sibling-timeline",
    ),
    pytest.param(
        names((1, 1, 2), (1, 4, 4))
        + [
            "000000010000000000000003.partial",
            "00000002.history",
            "000000010000000000000001.00000028.backup",
            "README",
        ],
        seg(1, 1),
        None,
        None,
        [(seg(1, 3), seg(1, 3))],
        id="non-segment-names-ignored",
    ),
    pytest.param(
        names((1, 1, 2), (1, 1, 2)),
        seg(1, 1),
        seg(1, 3),
        None,
        [(seg(1, 3), seg(1, 3))],
        id="duplicate-names",
    ),
]


@pytest.mark.parametrize(("present", "start", "end", "histories", "gaps"), GAP_CASES)
def test_find_gaps(
    present: list[str],
    start: str,
    end: str | None,
    histories: dict[int, list[HistoryEntry]] | None,
    gaps: list[tuple[str, str]],
) -> None:
    assert find_gaps(present, start, end, histories) == gaps


def test_find_gaps_64mb_segments() -> None:
    size = 64 * MB
    present = [seg(1, s, size) for s in (62, 65)]
    assert find_gaps(present, seg(1, 62, size), None, segment_size=size) == [
        ("00000001000000000000003F", "000000010000000100000000")
    ]


@pytest.mark.parametrize(
    ("present", "start", "end", "histories", "message"),
    [
        pytest.param([], seg(1, 1), seg(2, 5), None, "no history", id="missing-history"),
        pytest.param([], seg(1, 5), seg(1, 3), None, "before start", id="end-before-start"),
        pytest.param([], seg(1, 5), seg(2, 6), {2: H2}, "not on the history", id="start-after-branch"),
        pytest.param([], seg(2, 3), seg(5, 6), {5: H5}, "not on the history", id="start-on-sibling"),
        pytest.param([], seg(1, 1), seg(2, 2), {2: H2}, "before timeline 2 began", id="end-too-early"),
        pytest.param([], seg(2, 1), None, {2: H2}, "not on the history", id="start-before-own-tl"),
        pytest.param([], seg(1, 1), None, {2: [HistoryEntry(2, 0, "x")]}, "ancestor", id="corrupt-history"),
    ],
)
def test_find_gaps_rejects(
    present: list[str],
    start: str,
    end: str | None,
    histories: dict[int, list[HistoryEntry]] | None,
    message: str,
) -> None:
    with pytest.raises(WalNameError, match=message):
        find_gaps(present, start, end, histories)


def test_find_gaps_wrong_segment_size_is_loud() -> None:
    with pytest.raises(WalNameError, match="segment size|segments"):
        find_gaps(["0000000100000000000000FF"], seg(1, 1, 64 * MB), None, segment_size=64 * MB)
