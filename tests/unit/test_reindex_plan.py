"""Reindex's decisions by tables: names, the swap, cleanup, rollback, migration, --since targets,
settings, bulk failures. Pure functions, no OpenSearch."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from p88backup.errors import SearchError
from p88backup.search.adapter import AddAlias, BulkFailure, IndexInfo, RemoveAlias, RemoveIndex, alias_actions_body
from p88backup.search.client import bulk_failures
from p88backup.search.plan import (
    AliasState,
    age_key,
    build_settings,
    final_settings,
    is_complete,
    is_ours,
    new_names,
    plan_full,
    plan_rollback,
    since_target,
)
from p88backup.search.reindex import describe_failures, split_failures

NOW = datetime(2026, 11, 27, 2, 15, tzinfo=UTC)
NEW = "docs-20261127t021500z"
V1, V2, V3 = "docs-20261120t021500z", "docs-20261125t021500z", "docs-20261126t021500z"
LEGACY_OLD = "docs-legacy-20261101t000000z"
DONE = IndexInfo(meta={"p88backup": {"alias": "docs", "complete": True}})
HALF = IndexInfo(meta={"p88backup": {"alias": "docs", "complete": False}})


def state(live: tuple[str, ...] = (), concrete: bool = False, **infos: IndexInfo) -> AliasState:
    """The state of alias ``docs``; ``infos`` are the indices there by name (``**{V1: DONE}``)."""
    return AliasState("docs", live, concrete, infos)


# -- names ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "ours"),
    [
        (V1, True),
        (f"{V1}-2", True),
        (LEGACY_OLD, True),
        ("docs-legacy-20261101t000000z-3", True),
        ("docs", False),  # the alias itself (or the plain index)
        ("docs-small-20261127t021500z", False),  # another alias's version: docs-small
        ("docs-archive", False),  # someone else's index: never deleted
        ("docs-20261127T021500Z", False),
        ("xdocs-20261127t021500z", False),
    ],
)
def test_which_indices_are_ours(name: str, ours: bool) -> None:
    assert is_ours("docs", name) is ours


def test_index_names_order_by_build_time() -> None:
    names = [
        "docs-20261127t020000z-2",
        "docs-20261126t020000z",
        "docs-legacy-20261127t020000z",
        "docs-20261127t020000z",
    ]
    assert sorted(names, key=age_key) == [
        "docs-20261126t020000z",
        "docs-legacy-20261127t020000z",
        "docs-20261127t020000z",
        "docs-20261127t020000z-2",
    ]
    assert age_key("docs_v1") < age_key(V1)  # a foreign name predates all of ours


@pytest.mark.parametrize(
    ("taken", "now", "expected"),
    [
        ([], NOW, (NEW, "docs-legacy-20261127t021500z")),
        ([NEW], NOW, (f"{NEW}-2", "docs-legacy-20261127t021500z-2")),
        ([NEW, f"{NEW}-2"], NOW, (f"{NEW}-3", "docs-legacy-20261127t021500z-3")),
        # a legacy clone of that second blocks the name too: the pair stays together
        (["docs-legacy-20261127t021500z"], NOW, (f"{NEW}-2", "docs-legacy-20261127t021500z-2")),
        # the stamp is UTC whatever zone the clock answers in
        ([], NOW.astimezone(timezone(timedelta(hours=1))), (NEW, "docs-legacy-20261127t021500z")),
    ],
)
def test_new_names(taken: list[str], now: datetime, expected: tuple[str, str]) -> None:
    assert new_names("docs", now, taken) == expected


@pytest.mark.parametrize(
    ("name", "info", "complete"),
    [
        (V1, DONE, True),
        (V1, HALF, False),  # a failed run kept with --keep-failed
        (V1, IndexInfo(), False),
        (V1, IndexInfo(meta={"p88backup": "complete"}), False),
        (LEGACY_OLD, IndexInfo(), True),  # a clone of the plain index: whole by making
    ],
)
def test_complete_builds(name: str, info: IndexInfo, complete: bool) -> None:
    assert is_complete(name, info) is complete


# -- full rebuild: swap, cleanup, migration ------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "st", "swap", "previous", "delete", "legacy"),
    [
        ("first run: nothing there", state(), (AddAlias(NEW, "docs"),), None, (), None),
        (
            "alias on one index, an older one",
            state((V2,), **{V1: DONE, V2: DONE}),
            (AddAlias(NEW, "docs"), RemoveAlias(V2, "docs")),
            V2,
            (V1,),
            None,
        ),
        (
            "older versions, a failed build and an old legacy clone go; the live one stays",
            state((V3,), **{V1: DONE, V2: HALF, LEGACY_OLD: IndexInfo(), V3: DONE}),
            (AddAlias(NEW, "docs"), RemoveAlias(V3, "docs")),
            V3,
            (V1, V2, LEGACY_OLD),
            None,
        ),
        (
            "alias on several indices: all leave it, the newest is kept",
            state((V1, V2), **{V1: DONE, V2: DONE}),
            (AddAlias(NEW, "docs"), RemoveAlias(V1, "docs"), RemoveAlias(V2, "docs")),
            V2,
            (V1,),
            None,
        ),
        (
            "alias on an index that is not ours: kept, never deleted",
            state(("docs_v1",), **{"docs_v1": IndexInfo(), V1: DONE}),
            (AddAlias(NEW, "docs"), RemoveAlias("docs_v1", "docs")),
            "docs_v1",
            (V1,),
            None,
        ),
        (
            "alias missing but versions left over (deleted by hand): they go",
            state((), **{V1: DONE}),
            (AddAlias(NEW, "docs"),),
            None,
            (V1,),
            None,
        ),
        (
            "a plain index named like the alias: clone kept, index replaced in the same call",
            state((), True, docs=IndexInfo()),
            (AddAlias(NEW, "docs"), RemoveIndex("docs")),
            "docs-legacy-20261127t021500z",
            (),
            "docs-legacy-20261127t021500z",
        ),
        (
            "a plain index and leftovers of ours: the leftovers go",
            state((), True, docs=IndexInfo(), **{V1: DONE}),
            (AddAlias(NEW, "docs"), RemoveIndex("docs")),
            "docs-legacy-20261127t021500z",
            (V1,),
            "docs-legacy-20261127t021500z",
        ),
        (
            "a version of this second exists: the new one is -2",
            state((NEW,), **{NEW: DONE}),
            (AddAlias(f"{NEW}-2", "docs"), RemoveAlias(NEW, "docs")),
            NEW,
            (),
            None,
        ),
    ],
)
def test_plan_full(
    case: str,
    st: AliasState,
    swap: tuple[Any, ...],
    previous: str | None,
    delete: tuple[str, ...],
    legacy: str | None,
) -> None:
    plan = plan_full(st, NOW)
    assert (plan.swap, plan.previous, plan.delete, plan.legacy) == (swap, previous, delete, legacy), case
    assert plan.new == swap[0].index
    assert plan.new not in plan.delete and (plan.previous or "") not in plan.delete


def test_plan_full_takes_the_settings_of_the_index_it_replaces() -> None:
    live = IndexInfo(settings={"refresh_interval": "30s", "number_of_replicas": "2"})
    assert plan_full(state((V1,), **{V1: live}), NOW).previous_settings == live.settings
    plain = IndexInfo(settings={"refresh_interval": "5s"})
    assert plan_full(state((), True, docs=plain), NOW).previous_settings == plain.settings
    assert plan_full(state(), NOW).previous_settings == {}


# -- rollback ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "st", "target"),
    [
        ("previous index present", state((V2,), **{V1: DONE, V2: DONE}), V1),
        ("the newest earlier one", state((V3,), **{V1: DONE, V2: DONE, V3: DONE}), V2),
        ("an incomplete earlier build is skipped", state((V3,), **{V1: DONE, V2: HALF, V3: DONE}), V1),
        (
            "back to the plain index's clone",
            state((NEW,), **{"docs-legacy-20261127t021500z": IndexInfo(), NEW: DONE}),
            "docs-legacy-20261127t021500z",
        ),
        ("a newer index (rolled back from) is not a target", state((V2,), **{V1: DONE, V2: DONE, V3: DONE}), V1),
    ],
)
def test_rollback_target(case: str, st: AliasState, target: str) -> None:
    plan = plan_rollback(st)
    assert plan.target == target, case
    assert plan.swap == (AddAlias(target, "docs"), RemoveAlias(st.live[0], "docs"))


@pytest.mark.parametrize(
    ("case", "st", "message"),
    [
        ("alias missing", state(**{V1: DONE}), "there is no alias 'docs'"),
        ("no previous index", state((V1,), **{V1: DONE}), "no earlier complete index"),
        ("only a failed earlier build", state((V2,), **{V1: HALF, V2: DONE}), "no earlier complete index"),
        ("several indices", state((V1, V2), **{V1: DONE, V2: DONE}), "points to several indices"),
        ("a plain index", state((), True, docs=IndexInfo()), "is a plain index"),
        ("live index not ours", state(("docs_v1",), **{"docs_v1": IndexInfo(), V1: DONE}), "no earlier complete"),
    ],
)
def test_rollback_refusals(case: str, st: AliasState, message: str) -> None:
    with pytest.raises(SearchError, match=message):
        plan_rollback(st)


# -- --since -------------------------------------------------------------------------------------


def test_since_targets_the_one_live_index() -> None:
    assert since_target(state((V2,), **{V1: DONE, V2: DONE})) == V2
    assert since_target(state(("docs_v1",))) == "docs_v1"


@pytest.mark.parametrize(
    ("st", "message"),
    [
        (state(), r"must point to one index for --since \(found none\)"),
        (state((V1, V2)), rf"found {V1}, {V2}"),
        (state((), True), "is a plain index"),
    ],
)
def test_since_refusals(st: AliasState, message: str) -> None:
    with pytest.raises(SearchError, match=message) as err:
        since_target(st)
    assert err.value.hint and "full reindex" in err.value.hint


# -- settings ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("wanted", "previous", "final"),
    [
        ({}, {}, {"refresh_interval": None, "number_of_replicas": None}),  # OpenSearch's defaults
        (
            {},
            {"refresh_interval": "30s", "number_of_replicas": "2"},
            {"refresh_interval": "30s", "number_of_replicas": "2"},
        ),
        (
            {"number_of_replicas": 0},
            {"refresh_interval": "30s", "number_of_replicas": "2"},
            {"refresh_interval": "30s", "number_of_replicas": 0},
        ),
        ({"refresh_interval": "5s", "number_of_shards": 3}, {}, {"refresh_interval": "5s", "number_of_replicas": None}),
    ],
)
def test_final_settings(wanted: dict[str, Any], previous: dict[str, Any], final: dict[str, Any]) -> None:
    assert final_settings(wanted, previous) == final


def test_build_settings_turn_refresh_and_replicas_off() -> None:
    assert build_settings({"number_of_shards": 3, "refresh_interval": "5s", "number_of_replicas": 2}) == {
        "number_of_shards": 3,
        "refresh_interval": "-1",
        "number_of_replicas": 0,
    }


# -- bulk answers --------------------------------------------------------------------------------


def test_bulk_failures_keep_positions() -> None:
    ok = {"index": {"status": 201}}
    busy = {
        "index": {"status": 429, "_id": "2", "error": {"type": "es_rejected_execution_exception", "reason": "busy"}}
    }
    bad = {
        "index": {
            "status": 400,
            "_id": "3",
            "error": {"type": "mapper_parsing_exception", "reason": "failed", "caused_by": {"reason": "For input"}},
        }
    }
    assert bulk_failures({"errors": False}) == []
    assert bulk_failures({"errors": True, "items": [ok, busy, ok, bad]}) == [
        BulkFailure(1, 429, "2", "es_rejected_execution_exception", "busy", None),
        BulkFailure(3, 400, "3", "mapper_parsing_exception", "failed", "For input"),
    ]
    odd = {"errors": True, "items": [{"index": {"status": 500, "_id": "9", "error": "boom"}}]}
    assert bulk_failures(odd) == [BulkFailure(0, 500, "9", None, "boom", None)]


@pytest.mark.parametrize(
    ("failures", "rejected", "failed"),
    [
        ([], [], 0),
        ([BulkFailure(0, 429), BulkFailure(4, 429)], [0, 4], 0),
        ([BulkFailure(2, 503, type="rejected_execution_exception")], [2], 0),
        ([BulkFailure(1, 429), BulkFailure(2, 400, type="mapper_parsing_exception")], [1], 1),
    ],
)
def test_split_failures(failures: list[BulkFailure], rejected: list[int], failed: int) -> None:
    got_rejected, got_failed = split_failures(failures)
    assert got_rejected == rejected and len(got_failed) == failed


def test_describe_failures_names_ids_and_causes() -> None:
    failed = [BulkFailure(i, 400, str(i), "mapper_parsing_exception", "bad n", "For input") for i in range(7)]
    text = describe_failures(failed, 2)
    assert text == (
        "7 documents were rejected: id 0: mapper_parsing_exception: bad n (For input); "
        "id 1: mapper_parsing_exception: bad n (For input)"
    )


def test_alias_actions_body() -> None:
    body = alias_actions_body([AddAlias("n", "a"), RemoveAlias("o", "a"), RemoveIndex("a")])
    assert body == {
        "actions": [
            {"add": {"index": "n", "alias": "a"}},
            {"remove": {"index": "o", "alias": "a"}},
            {"remove_index": {"index": "a"}},
        ]
    }
