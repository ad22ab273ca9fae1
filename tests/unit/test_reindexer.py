"""Reindexer against the in-memory OpenSearch (tests/harness/fake_search.py) and a list of rows:
the swap, cleanup, rollback, migration, --since, failures and 429s, in milliseconds.
The same behaviour on a real node: tests/integration/test_reindex.py."""

from __future__ import annotations

import ast
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from p88backup.errors import ConfigError, DatabaseError, SearchError
from p88backup.search.adapter import (
    AddAlias,
    AliasAction,
    BulkFailure,
    RemoveAlias,
    RemoveIndex,
    TransientSearchError,
)
from p88backup.search.definition import IndexDefinition
from p88backup.search.reindex import BulkFailed, Reindexer, ReindexOptions
from tests.harness.fake_search import FakeSearch, ListSource, bulk_item

MAPPINGS = {"properties": {"title": {"type": "text"}, "n": {"type": "long"}, "updated_at": {"type": "date"}}}
OLD = "2026-01-01T00:00:00+00:00"
READS = {"alias_targets", "is_concrete_index", "indices"}


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 20, 2, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def next_day(self) -> None:
        self.now += timedelta(days=1)


def rows(n: int, **changes: dict[str, Any]) -> list[dict[str, Any]]:
    out = [{"id": i, "title": f"title {i}", "n": i, "updated_at": OLD} for i in range(1, n + 1)]
    for key, change in changes.items():
        out[int(key.removeprefix("row")) - 1].update(change)
    return out


class Rig:
    """A fake node, rows, and a Reindexer factory with a clock that moves a day per run."""

    def __init__(self, n: int = 200, *, search: FakeSearch | None = None, **opts: Any) -> None:
        self.search = search or FakeSearch()
        self.source = ListSource(rows(n))
        self.clock = Clock()
        self.slept: list[float] = []
        self.t = 0.0
        self.options = ReindexOptions(**{"chunk_bytes": 2000, "concurrency": 2, **opts})
        self.definition = IndexDefinition("docs", "SELECT * FROM docs", "id", "updated_at", MAPPINGS, {})

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s

    def reindexer(self) -> Reindexer:
        return Reindexer(
            self.search,
            self.source,
            self.definition,
            self.options,
            clock=self.clock,
            sleep=self.sleep,
            monotonic=lambda: self.t,
        )

    def full(self, **kw: Any) -> Any:
        self.clock.next_day()
        return self.reindexer().full(**kw)

    def live(self) -> list[str]:
        return self.search.alias_targets("docs")

    def versions(self) -> list[str]:
        return sorted(n for n in self.search.indices_ if n.startswith("docs-"))


def swaps(search: FakeSearch) -> list[tuple[AliasAction, ...]]:
    return [c[1] for c in search.method_calls("update_aliases")]


# -- full rebuilds: swap and cleanup -------------------------------------------------------------


def test_first_run_builds_an_index_and_creates_the_alias() -> None:
    rig = Rig(200)
    r = rig.full()
    assert r.index == "docs-20261121t020000z" and r.previous is None and r.deleted == []
    assert r.rows == r.actions == r.count == 200
    assert rig.live() == [r.index] and rig.search.count("docs") == 200
    meta = rig.search.indices(r.index)[r.index].meta["p88backup"]
    assert meta["complete"] is True and meta["rows"] == 200
    created = rig.search.method_calls("create_index")[0]
    assert created[2]["refresh_interval"] == "-1" and created[2]["number_of_replicas"] == 0
    # loaded with refresh off; settings back (to the defaults: nothing configured, nothing before)
    assert rig.search.indices_[r.index].settings.get("refresh_interval") is None
    assert rig.source.open == 0  # the snapshot is closed


def test_second_run_swaps_in_one_call_and_keeps_the_previous_index() -> None:
    rig = Rig(50)
    first = rig.full()
    second = rig.full()
    assert second.previous == first.index and rig.live() == [second.index]
    assert swaps(rig.search)[-1] == (AddAlias(second.index, "docs"), RemoveAlias(first.index, "docs"))
    assert rig.versions() == [first.index, second.index]  # kept for --rollback
    third = rig.full()
    assert third.deleted == [first.index] and rig.versions() == [second.index, third.index]
    # deleted only once the alias had left it
    names = [c[0] for c in rig.search.calls]
    assert names.index("delete_index") > len(names) - 1 - names[::-1].index("update_aliases")


def test_several_live_indices_all_leave_the_alias_and_the_newest_is_kept() -> None:
    rig = Rig(30)
    a, b = rig.full().index, rig.full().index
    rig.search.update_aliases([AddAlias(a, "docs")])  # a hand-made state: the alias on both
    assert rig.live() == [a, b]
    r = rig.full()
    assert rig.live() == [r.index] and r.previous == b and r.deleted == [a]
    assert rig.versions() == [b, r.index]


def test_dry_run_changes_nothing_and_names_what_a_run_deletes() -> None:
    rig = Rig(30)
    for _ in range(3):
        rig.full()
    before = (dict(rig.search.aliases), rig.versions())
    n_calls = len(rig.search.calls)
    plan = rig.reindexer().full(dry_run=True)
    assert {c[0] for c in rig.search.calls[n_calls:]} <= READS
    assert (dict(rig.search.aliases), rig.versions()) == before
    assert plan.rows == 30 and plan.dry_run
    done = rig.reindexer().full()  # same clock: the same plan
    assert (done.index, done.previous, done.deleted) == (plan.index, plan.previous, plan.deleted)


def test_bulk_bodies_are_the_source_bytes_unchanged() -> None:
    rig = Rig(300, concurrency=1)
    rig.full()
    items = [bulk_item(r) for r in rig.source.rows]
    assert b"".join(rig.search.bodies) == b"".join(i for i in items if i is not None)
    assert len(rig.search.bodies) > 5  # bounded bodies: 2000 bytes and the item that crosses it
    assert all(len(b) < 2000 + 200 for b in rig.search.bodies)


# -- migration of a plain index -------------------------------------------------------------------


def test_plain_index_is_replaced_by_the_alias_and_kept_for_rollback() -> None:
    rig = Rig(40)
    rig.search.add_plain_index("docs", {"7": {"title": "old"}}, refresh_interval="5s")
    r = rig.full()
    legacy = "docs-legacy-20261121t020000z"
    assert r.migrated and r.previous == legacy and rig.live() == [r.index]
    assert not rig.search.is_concrete_index("docs")
    assert rig.search.docs(legacy) == {"7": {"title": "old"}}
    assert not rig.search.indices_[legacy].write_blocked  # the clone takes writes after a rollback
    assert rig.search.indices_[r.index].settings["refresh_interval"] == "5s"  # as the plain index had it
    assert swaps(rig.search) == [(AddAlias(r.index, "docs"), RemoveIndex("docs"))]
    rolled = rig.reindexer().rollback()
    assert rolled.index == legacy and rig.live() == [legacy]


@pytest.mark.parametrize("fails", ["clone_index", "update_aliases"])
def test_failed_migration_gives_the_plain_index_back(fails: str) -> None:
    # The old code blocked writes to the plain index and left it blocked when a later step failed.
    rig = Rig(40)
    rig.search.add_plain_index("docs", {"7": {"title": "old"}})
    rig.search.fail[fails] = SearchError(f"{fails}: OpenSearch answered 500: boom")
    with pytest.raises(SearchError, match="boom"):
        rig.full()
    assert rig.search.is_concrete_index("docs") and not rig.search.indices_["docs"].write_blocked
    assert rig.search.docs("docs") == {"7": {"title": "old"}}
    assert rig.versions() == []  # neither the new index nor the clone is left


# -- the swap fails ------------------------------------------------------------------------------


def test_swap_refused_leaves_the_alias_and_drops_the_new_index() -> None:
    rig = Rig(30)
    first = rig.full()
    rig.search.fail["update_aliases"] = SearchError("update aliases: OpenSearch answered 400: nope")
    with pytest.raises(SearchError, match="nope"):
        rig.full()
    assert rig.live() == [first.index] and rig.versions() == [first.index]


def test_swap_applied_but_its_answer_lost_is_a_success() -> None:
    # The old code failed the run (exit 14) with the alias already moved, and deleted nothing.
    rig = Rig(30)
    a, b = rig.full().index, rig.full().index
    rig.search.fail_after["update_aliases"] = TransientSearchError("update aliases: cannot reach OpenSearch")
    r = rig.full()
    assert rig.live() == [r.index] and r.previous == b and r.deleted == [a]
    assert rig.versions() == [b, r.index]


def test_swap_failed_and_alias_unknown_keeps_the_new_index() -> None:
    class UnsureAfterSwap(FakeSearch):
        unsure = False

        def update_aliases(self, actions: Sequence[AliasAction]) -> None:
            super().update_aliases(actions)
            self.unsure = True  # applied, but the answer and the next look at the alias fail
            raise TransientSearchError("update aliases: cannot reach OpenSearch")

        def alias_targets(self, alias: str) -> list[str]:
            if self.unsure:
                raise TransientSearchError("get alias: cannot reach OpenSearch")
            return super().alias_targets(alias)

    rig = Rig(30, search=UnsureAfterSwap())
    with pytest.raises(TransientSearchError):
        rig.full()
    rig.search.unsure = False
    new = rig.versions()[0]
    assert rig.live() == [new]  # the index the alias now points to was not dropped


# -- failures during the load ---------------------------------------------------------------------


def test_count_mismatch_fails_before_the_alias_moves() -> None:
    rig = Rig(30)
    first = rig.full()
    rig.source.rows[5]["id"] = 1  # duplicate ids: 29 documents for 30 rows
    with pytest.raises(SearchError, match="holds 29 documents but the snapshot has 30 rows"):
        rig.full()
    assert rig.live() == [first.index] and rig.versions() == [first.index]


def test_keep_failed_keeps_the_half_built_index() -> None:
    rig = Rig(30, keep_failed=True)
    rig.source.rows[5]["id"] = 1
    with pytest.raises(SearchError):
        rig.full()
    assert rig.live() == [] and rig.versions() == ["docs-20261121t020000z"]
    rig.source.rows[5]["id"] = 6
    after = rig.full()  # the next run cleans it up
    assert after.deleted == ["docs-20261121t020000z"] and rig.versions() == [after.index]


def test_a_bad_document_fails_the_run_naming_its_id() -> None:
    rig = Rig(1000)
    first = rig.full()
    rig.source.rows[776]["n"] = "not a number"
    with pytest.raises(BulkFailed, match="1 documents were rejected: id 777: mapper_parsing_exception"):
        rig.full()
    assert rig.live() == [first.index] and rig.versions() == [first.index]


def test_a_null_id_fails_the_run() -> None:
    rig = Rig(30)
    rig.source.rows[3]["id"] = None
    with pytest.raises(SearchError, match="has a NULL id"):
        rig.full()
    assert rig.versions() == [] and rig.live() == []


def test_a_database_error_mid_load_drops_the_new_index() -> None:
    rig = Rig(500)
    first = rig.full()
    rig.source.fail_at, rig.source.failure = 300, DatabaseError("reading rows for docs: connection lost")
    with pytest.raises(DatabaseError, match="connection lost"):
        rig.full()
    assert rig.live() == [first.index] and rig.versions() == [first.index] and rig.source.open == 0


def test_busy_node_rejections_are_resent_until_indexed() -> None:
    rig = Rig(100, concurrency=1)
    rig.search.busy = 7
    r = rig.full()
    assert r.rejected_retries >= 1 and r.count == 100 and rig.slept
    # the resend carried only the rejected items
    assert rig.search.bodies[1] == b"".join(rig.search.bodies[0].splitlines(keepends=True)[:14])


def test_a_node_that_keeps_rejecting_fails_after_the_deadline() -> None:
    rig = Rig(20, concurrency=1, rejected_deadline=30)
    first = rig.full()
    rig.search.busy_forever = True
    with pytest.raises(SearchError, match=r"kept rejecting writes \(429\) for 30s"):
        rig.full()
    assert 30 < rig.t < 60 and max(rig.slept) <= 10
    assert rig.live() == [first.index]


def test_unreachable_node_fails_the_run_without_touching_anything() -> None:
    rig = Rig(20)
    first = rig.full()
    rig.search.fail["bulk"] = TransientSearchError("bulk: cannot reach OpenSearch (ConnectionError)")
    with pytest.raises(TransientSearchError):
        rig.full()
    assert rig.live() == [first.index] and rig.versions() == [first.index]


# -- --since and rollback --------------------------------------------------------------------------


def test_since_upserts_only_changed_rows_into_the_live_index() -> None:
    rig = Rig(100)
    rig.full()
    live = rig.full().index
    cut = datetime(2026, 11, 27, tzinfo=UTC)
    for i in (10, 11, 12):
        rig.source.rows[i].update(title="changed", updated_at="2026-11-27T01:00:00+00:00")
    n_versions = rig.versions()
    r = rig.reindexer().since(cut)
    assert r.mode == "since" and r.index == live and r.actions == r.rows == 3
    assert [rig.search.docs(live)[str(i + 1)]["title"] for i in (10, 11, 12)] == ["changed"] * 3
    assert rig.search.calls[-1] == ("refresh", live)  # searches see the changes now
    assert rig.search.count("docs") == 100 and rig.versions() == n_versions and len(swaps(rig.search)) == 2
    assert rig.reindexer().since(cut).actions == 3  # idempotent


def test_since_needs_an_updated_at_column_and_one_live_index() -> None:
    rig = Rig(10)
    with pytest.raises(SearchError, match="must point to one index"):
        rig.reindexer().since(datetime(2026, 1, 1, tzinfo=UTC))
    rig.definition.updated_at_column = None
    with pytest.raises(ConfigError, match="no updated_at_column"):
        rig.reindexer().since(datetime(2026, 1, 1, tzinfo=UTC))


def test_rollback_goes_back_one_complete_version() -> None:
    rig = Rig(10)
    a, b = rig.full().index, rig.full().index
    r = rig.reindexer().rollback()
    assert (r.index, r.previous) == (a, b) and rig.live() == [a]
    assert swaps(rig.search)[-1] == (AddAlias(a, "docs"), RemoveAlias(b, "docs"))
    with pytest.raises(SearchError, match="no earlier complete index"):
        rig.reindexer().rollback()
    after = rig.full()  # the next rebuild drops the version rolled back from
    assert after.previous == a and after.deleted == [b]


# -- the adapter is the only way to OpenSearch ------------------------------------------------------


def test_only_the_client_adapter_imports_opensearch_py() -> None:
    root = Path(__file__).resolve().parents[2] / "p88backup"
    offenders = []
    for path in root.rglob("*.py"):
        if path == root / "search" / "client.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.relative_to(root)}: {n}" for n in names if n.split(".")[0] == "opensearchpy"]
    assert offenders == []


def test_a_failed_load_stops_at_once() -> None:
    # The old loader's rows thread could wait 5 s to hand its end marks to consumers that had
    # already stopped on the error: a race, likeliest while reading rows outpaces the node.
    class SlowNode(FakeSearch):
        def bulk(self, index: str, body: bytes) -> list[BulkFailure]:
            time.sleep(0.002)
            return super().bulk(index, body)

    for _ in range(10):
        rig = Rig(1000, search=SlowNode(), chunk_bytes=500)
        rig.source.rows[100]["n"] = "not a number"
        t0 = time.monotonic()
        with pytest.raises(BulkFailed):
            rig.full()
        assert time.monotonic() - t0 < 2.0
