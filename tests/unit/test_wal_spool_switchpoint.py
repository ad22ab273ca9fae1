"""The wal-stream spool when the server's new timeline forked exactly on a segment boundary.

That is where ``restore --pitr latest`` ends when the newest archived segment was closed by a WAL
switch (``archive_timeout``, ``pg_switch_wal``, the restore point ``scripts/stack-restore`` makes):
recovery replays the switch record, which fills its segment, and promotes at the start of the
next one. pg_receivewal cannot resume the parent timeline at that point (the server answers
START_REPLICATION with the next timeline instead of streaming, which pg_receivewal reports as
"could not send replication command" and exits 1): before, a spool whose newest file ended or
started there made wal-stream retry that for ever, and the new timeline was never archived.
"""

from __future__ import annotations

import pytest

from p88backup.core.wal.names import HistoryEntry, parse_lsn
from p88backup.core.wal.spool import SetAside
from tests.unit.test_wal_spool import plan, s

# Timeline 2 forked from 1 exactly at the start of segment 6 (a restore that ended after a switch).
AT_BOUNDARY = [HistoryEntry(1, parse_lsn("0/6000000"), "")]


@pytest.mark.parametrize(
    ("names", "aside", "seed", "start"),
    [
        # the parent's .partial that starts at the switch point holds only WAL past it
        pytest.param(
            [s(1, 6, True)],
            [SetAside(s(1, 6, True), "off-history")],
            s(2, 6, True),
            (2, "0/6000000"),
            id="parent-partial-at-the-switch-point",
        ),
        # a completed parent segment that ends at the switch point stays (it is history, to be
        # shipped), but streaming starts on the child there
        pytest.param([s(1, 5)], [], s(2, 6, True), (2, "0/6000000"), id="parent-segment-ending-at-the-switch-point"),
        pytest.param(
            [s(1, 5), s(1, 6, True)],
            [SetAside(s(1, 6, True), "off-history")],
            s(2, 6, True),
            (2, "0/6000000"),
            id="both",
        ),
        # unchanged: a parent .partial before the switch point resumes on the parent and follows the switch
        pytest.param([s(1, 5, True)], [], None, (1, "0/5000000"), id="parent-partial-before-the-switch-point"),
        # unchanged: the child's own files say where to resume
        pytest.param([s(1, 5), s(2, 7, True)], [], None, (2, "0/7000000"), id="child-files"),
    ],
)
def test_a_fork_on_a_segment_boundary_streams_the_child_from_there(
    names: list[str], aside: list[SetAside], seed: str | None, start: tuple[int, str]
) -> None:
    p = plan(names, 2, AT_BOUNDARY)
    assert list(p.set_aside) == aside
    assert p.seed == seed
    assert (p.start_timeline, p.start_lsn) == (start[0], parse_lsn(start[1]))
