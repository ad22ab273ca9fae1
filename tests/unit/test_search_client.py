"""The real adapter's own logic, without a node: how opensearch-py's errors become ours, and the
names it refuses to delete. (Its calls to a node: tests/integration/test_search_adapter.py.)"""

from __future__ import annotations

import pytest
from opensearchpy import exceptions as ose

from p88backup.errors import SearchError
from p88backup.search.adapter import TransientSearchError
from p88backup.search.client import Search, translate

CLONE_ERROR = {
    "error": {
        "type": "illegal_state_exception",
        "reason": 'index a must block write operations to resize index. use "index.blocks.write=true"',
    },
    "status": 500,
}


@pytest.mark.parametrize(
    ("exc", "kind", "message"),
    [
        (
            ose.TransportError(500, "illegal_state_exception", CLONE_ERROR),
            SearchError,
            "clone a: OpenSearch answered 500: illegal_state_exception: index a must block write operations to"
            ' resize index. use "index.blocks.write=true"',
        ),
        (
            ose.NotFoundError(404, "index_not_found_exception", {"error": {"reason": "no such index [x]"}}),
            SearchError,
            "clone a: OpenSearch answered 404: index_not_found_exception: no such index [x]",
        ),
        (ose.TransportError(400, "bad", "not json"), SearchError, "clone a: OpenSearch answered 400: bad"),
        (ose.TransportError(429, "too_many_requests", {}), TransientSearchError, "answered 429 (too_many_requests)"),
        (ose.TransportError(503, "unavailable", {}), TransientSearchError, "answered 503"),
        (ose.ConnectionTimeout("TIMEOUT", "timed out", None), TransientSearchError, "cannot reach OpenSearch"),
        (ose.ConnectionError("N/A", "refused", None), TransientSearchError, "cannot reach OpenSearch"),
    ],
)
def test_translate(exc: Exception, kind: type[SearchError], message: str) -> None:
    err = translate(exc, "clone a")
    assert type(err) is kind and message in str(err)


@pytest.mark.parametrize("name", ["docs-*", "docs,other", "_all", "", "do?s"])
def test_delete_refuses_patterns(name: str) -> None:
    search = Search("http://127.0.0.1:9", retry_deadline=0.1)  # never reached: refused before any call
    with pytest.raises(SearchError, match="not a plain index name"):
        search.delete_index(name)
    search.close()
