"""The contract between ``reindex`` and OpenSearch: every call it makes, typed.

:class:`SearchAdapter` is to OpenSearch what :class:`~p88backup.storage.base.Storage`
is to object storage. :class:`~p88backup.search.client.Search` implements it over
opensearch-py; the tests implement it in memory (``tests/harness/fake_search.py``)
and run the same contract suite on both (``tests/integration/test_search_adapter.py``),
so the decisions of :mod:`p88backup.search.reindex` (which index is live, where the
alias goes, what is deleted) are tested fast against the fake and trusted on the
real node.

Adapters raise only p88backup errors, never their client library's:

* :class:`TransientSearchError` - the node stayed unreachable or busy (connection
  refused or reset, timeouts, HTTP 429/502/503/504) for the adapter's whole retry
  deadline;
* :class:`~p88backup.errors.SearchError` - anything permanent (a missing index, an
  index that already exists, a bad mapping), with OpenSearch's reason.

Bulk items are the exception to "errors are raised": one request carries thousands
of documents, and which of them failed and why is the answer
(:meth:`SearchAdapter.bulk`), so that busy-node rejections can be resent and real
failures reported by document id.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from p88backup.errors import SearchError


class TransientSearchError(SearchError):
    """Worth retrying: the node is busy (429) or unreachable for now."""


@dataclass(frozen=True)
class IndexInfo:
    """What reindex reads back about an existing index."""

    meta: Mapping[str, Any] = field(default_factory=dict)
    """The mapping's ``_meta`` object (p88backup marks its builds there)."""
    settings: Mapping[str, Any] = field(default_factory=dict)
    """Index-level settings without the ``index.`` prefix, as OpenSearch reports them
    (values are strings: ``{"refresh_interval": "1s", "number_of_replicas": "1"}``)."""


@dataclass(frozen=True)
class BulkFailure:
    """One bulk item that was not indexed."""

    position: int
    """Its place in the request body (0 = the first action)."""
    status: int
    id: str | None = None
    type: str | None = None
    """OpenSearch's error type, e.g. ``mapper_parsing_exception``, ``es_rejected_execution_exception``."""
    reason: str | None = None
    cause: str | None = None
    """The reason of the error's ``caused_by``, when there is one."""


@dataclass(frozen=True)
class AddAlias:
    index: str
    alias: str


@dataclass(frozen=True)
class RemoveAlias:
    index: str
    alias: str


@dataclass(frozen=True)
class RemoveIndex:
    """Delete a concrete index in the same atomic step as the other alias actions."""

    index: str


AliasAction = AddAlias | RemoveAlias | RemoveIndex


def alias_actions_body(actions: Sequence[AliasAction]) -> dict[str, Any]:
    """The ``_aliases`` request body for ``actions`` (shared by the real adapter and its tests)."""
    out: list[dict[str, Any]] = []
    for a in actions:
        if isinstance(a, AddAlias):
            out.append({"add": {"index": a.index, "alias": a.alias}})
        elif isinstance(a, RemoveAlias):
            out.append({"remove": {"index": a.index, "alias": a.alias}})
        else:
            out.append({"remove_index": {"index": a.index}})
    return {"actions": out}


@runtime_checkable
class SearchAdapter(Protocol):
    """OpenSearch as reindex needs it. Index and alias names are plain names, never patterns,
    except where a method says so."""

    url: str
    """Where the adapter points, safe to print (no credentials)."""

    def alias_targets(self, alias: str) -> list[str]:
        """The indices ``alias`` points to, sorted; ``[]`` if there is no such alias
        (also when ``alias`` is the name of a concrete index)."""
        ...

    def is_concrete_index(self, name: str) -> bool:
        """True if ``name`` is an index; False if it is an alias or nothing."""
        ...

    def indices(self, pattern: str) -> dict[str, IndexInfo]:
        """Open indices matching ``pattern`` (a name or a ``*`` wildcard; an alias stands for
        its indices), by name; ``{}`` if none match."""
        ...

    def create_index(self, name: str, *, settings: Mapping[str, Any], mappings: Mapping[str, Any]) -> None:
        """Create ``name`` with index-level ``settings`` (keys without ``index.``) and ``mappings``.
        ``SearchError`` if an index or alias of that name exists."""
        ...

    def bulk(self, index: str, body: bytes) -> list[BulkFailure]:
        """Send one NDJSON ``_bulk`` body (actions without ``_index`` go to ``index``) as it is:
        the bytes are posted unchanged. Returns the items that failed, in request order
        (``[]``: all indexed). Documents become visible to count and search at the next
        :meth:`refresh` (or by the index's own refresh interval)."""
        ...

    def put_settings(self, index: str, settings: Mapping[str, Any]) -> None:
        """Update index-level settings (keys without ``index.``); ``None`` restores the default."""
        ...

    def put_meta(self, index: str, meta: Mapping[str, Any]) -> None:
        """Replace the mapping's ``_meta`` object."""
        ...

    def refresh(self, index: str) -> None:
        """Make every document written so far visible (an alias refreshes its indices)."""
        ...

    def count(self, index: str) -> int:
        """Visible documents in an index or behind an alias. ``SearchError`` if there is neither."""
        ...

    def update_aliases(self, actions: Sequence[AliasAction]) -> None:
        """Apply every action in one atomic step: searches see the state before or after,
        never between. If any action cannot be applied (a missing index or alias), nothing
        is and ``SearchError`` is raised."""
        ...

    def clone_index(self, source: str, target: str) -> None:
        """Copy ``source`` (which must be write-blocked) with its documents, mappings and settings,
        the write block included, to the new index ``target``; returns once ``target`` is usable."""
        ...

    def delete_index(self, name: str) -> None:
        """Delete the concrete index ``name``. ``SearchError`` if it does not exist."""
        ...

    def close(self) -> None:
        """Release connections. The adapter is unusable afterwards."""
        ...
