"""One SearchAdapter contract suite, run on the in-memory fake and on a real OpenSearch 2.19 node.

The unit tests of reindex's decisions (tests/unit/test_reindexer.py) trust the fake; this suite
is why they may: every behaviour they rely on is checked here on both.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator

import pytest

from p88backup.errors import SearchError
from p88backup.search.adapter import AddAlias, RemoveAlias, RemoveIndex, SearchAdapter
from tests.harness.fake_search import FakeSearch

MAPPINGS = {"properties": {"title": {"type": "text"}, "n": {"type": "long"}}}
LOADING = {"refresh_interval": "-1", "number_of_replicas": 0}


@pytest.fixture(params=["fake", pytest.param("opensearch", marks=pytest.mark.opensearch)])
def search(request: pytest.FixtureRequest) -> Iterator[SearchAdapter]:
    if request.param == "fake":
        yield FakeSearch()
        return
    from p88backup.search.client import Search

    s = Search(request.getfixturevalue("opensearch"), retry_deadline=10)
    yield s
    s.close()


@pytest.fixture
def p(search: SearchAdapter) -> Iterator[str]:
    """A name prefix of this test's own: the real node is shared by the session."""
    prefix = f"ct-{uuid.uuid4().hex[:8]}"
    yield prefix
    for name in search.indices(f"{prefix}*"):
        search.delete_index(name)


def body(*docs: tuple[str, dict[str, object]]) -> bytes:
    return b"".join((json.dumps({"index": {"_id": i}}) + "\n" + json.dumps(d) + "\n").encode() for i, d in docs)


def test_missing_names(search: SearchAdapter, p: str) -> None:
    assert search.alias_targets(f"{p}-x") == []
    assert search.is_concrete_index(f"{p}-x") is False
    assert search.indices(f"{p}-*") == {} and search.indices(f"{p}-x") == {}
    for call in (
        lambda: search.count(f"{p}-x"),
        lambda: search.delete_index(f"{p}-x"),
        lambda: search.put_settings(f"{p}-x", {"refresh_interval": "1s"}),
        lambda: search.update_aliases([AddAlias(f"{p}-x", f"{p}-alias")]),
    ):
        with pytest.raises(SearchError, match="404"):
            call()


def test_documents_are_counted_after_a_refresh(search: SearchAdapter, p: str) -> None:
    meta = {"p88backup": {"alias": p, "complete": False}}
    search.create_index(f"{p}-a", settings=LOADING, mappings={**MAPPINGS, "_meta": meta})
    with pytest.raises(SearchError, match="resource_already_exists_exception"):
        search.create_index(f"{p}-a", settings={}, mappings={})
    assert search.bulk(f"{p}-a", body(("1", {"n": 1}), ("2", {"n": 2}), ("3", {"title": "x"}))) == []
    assert search.count(f"{p}-a") == 0  # refresh is off
    search.refresh(f"{p}-a")
    assert search.count(f"{p}-a") == 3
    assert search.bulk(f"{p}-a", body(("3", {"n": 33}))) == []  # an upsert: still 3
    search.refresh(f"{p}-a")
    assert search.count(f"{p}-a") == 3

    info = search.indices(f"{p}-*")[f"{p}-a"]
    assert info.meta == meta
    assert (info.settings["refresh_interval"], info.settings["number_of_replicas"]) == ("-1", "0")
    search.put_meta(f"{p}-a", {"p88backup": {"complete": True}})
    search.put_settings(f"{p}-a", {"refresh_interval": None, "number_of_replicas": 2})
    info = search.indices(f"{p}-a")[f"{p}-a"]
    assert info.meta == {"p88backup": {"complete": True}}
    assert "refresh_interval" not in info.settings and info.settings["number_of_replicas"] == "2"


def test_bulk_reports_failed_items_by_position(search: SearchAdapter, p: str) -> None:
    search.create_index(f"{p}-a", settings=LOADING, mappings=MAPPINGS)
    failures = search.bulk(f"{p}-a", body(("1", {"n": 1}), ("777", {"n": "not a number"}), ("3", {"n": 3})))
    assert [(f.position, f.status, f.id, f.type) for f in failures] == [(1, 400, "777", "mapper_parsing_exception")]
    assert failures[0].reason and "failed to parse field [n] of type [long]" in failures[0].reason
    search.refresh(f"{p}-a")
    assert search.count(f"{p}-a") == 2


def test_alias_actions_are_atomic(search: SearchAdapter, p: str) -> None:
    a, b, alias = f"{p}-a", f"{p}-b", f"{p}-alias"
    for name, n in ((a, 1), (b, 2)):
        search.create_index(name, settings={}, mappings=MAPPINGS)
        search.bulk(name, body(*((str(i), {"n": i}) for i in range(n))))
        search.refresh(name)
    search.update_aliases([AddAlias(a, alias)])
    assert search.alias_targets(alias) == [a] and search.is_concrete_index(alias) is False
    assert search.count(alias) == 1 and list(search.indices(alias)) == [a]
    assert sorted(search.indices(f"{p}-*")) == [a, b]  # the alias is not an index

    search.update_aliases([AddAlias(b, alias), RemoveAlias(a, alias)])
    assert search.alias_targets(alias) == [b] and search.count(alias) == 2
    # one action that cannot apply: none does
    with pytest.raises(SearchError, match="index_not_found_exception: no such index"):
        search.update_aliases([AddAlias(a, alias), RemoveAlias(b, alias), AddAlias(f"{p}-missing", alias)])
    assert search.alias_targets(alias) == [b]
    # removing an alias an index does not have is dropped quietly, unless nothing else is left:
    # a swap sent again after its answer was lost succeeds
    with pytest.raises(SearchError, match="aliases_not_found_exception"):
        search.update_aliases([RemoveAlias(a, alias)])
    search.update_aliases([AddAlias(b, alias), RemoveAlias(a, alias)])
    assert search.alias_targets(alias) == [b]

    search.update_aliases([AddAlias(a, alias)])
    assert search.alias_targets(alias) == [a, b] and search.count(alias) == 3
    with pytest.raises(SearchError):
        search.delete_index(alias)  # an alias is not an index
    search.delete_index(a)
    assert search.alias_targets(alias) == [b]


def test_a_plain_index_is_replaced_by_an_alias_in_one_call(search: SearchAdapter, p: str) -> None:
    plain, new = f"{p}-plain", f"{p}-new"
    search.create_index(plain, settings={}, mappings=MAPPINGS)
    search.create_index(new, settings={}, mappings=MAPPINGS)
    assert search.is_concrete_index(plain) and search.alias_targets(plain) == []
    with pytest.raises(SearchError):
        search.update_aliases([AddAlias(new, plain)])  # the name is taken by the index
    assert search.is_concrete_index(plain)
    search.update_aliases([AddAlias(new, plain), RemoveIndex(plain)])
    assert search.alias_targets(plain) == [new] and search.is_concrete_index(plain) is False


def test_clone_needs_a_write_block_and_copies_it(search: SearchAdapter, p: str) -> None:
    src, clone = f"{p}-src", f"{p}-clone"
    search.create_index(src, settings={"number_of_replicas": 0}, mappings=MAPPINGS)
    search.bulk(src, body(("1", {"n": 1}), ("2", {"n": 2})))
    search.refresh(src)
    with pytest.raises(SearchError, match="must block write operations"):
        search.clone_index(src, clone)
    search.put_settings(src, {"blocks.write": True})
    blocked = search.bulk(src, body(("3", {"n": 3})))
    assert [(f.position, f.status, f.type) for f in blocked] == [(0, 403, "cluster_block_exception")]
    search.clone_index(src, clone)
    assert search.count(clone) == 2
    assert search.indices(clone)[clone].settings["blocks"]["write"] == "true"
    search.put_settings(clone, {"blocks.write": None})
    assert search.bulk(clone, body(("3", {"n": 3}))) == []
    search.put_settings(src, {"blocks.write": None})
    assert "blocks" not in search.indices(src)[src].settings
