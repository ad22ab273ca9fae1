"""The real :class:`~p88backup.search.adapter.SearchAdapter`: OpenSearch through opensearch-py.

Transient trouble (connection refused or reset, timeouts, HTTP 429 and
502/503/504) is retried with exponential backoff until a deadline, each
attempt logged; anything else fails at once. opensearch-py is imported, called
and its exceptions translated here and nowhere else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from p88backup.errors import SearchError
from p88backup.redact import redact_url
from p88backup.retry import call_with_retries
from p88backup.search.adapter import (
    AliasAction,
    BulkFailure,
    IndexInfo,
    TransientSearchError,
    alias_actions_body,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_STATUS = {429, 502, 503, 504}
# Every item's status keeps the answer's items in request order (positions of failures);
# the rest of a successful item's answer (index, version, shards...) is left out.
BULK_FILTER = "errors,items.*.status,items.*.error,items.*._id"


def translate(exc: Exception, what: str) -> SearchError:
    import opensearchpy.exceptions as ose

    if isinstance(exc, SearchError):
        return exc
    if isinstance(exc, ose.ConnectionError):  # includes timeouts
        return TransientSearchError(f"{what}: cannot reach OpenSearch ({type(exc).__name__})")
    if isinstance(exc, ose.TransportError):
        status = exc.status_code if isinstance(exc.status_code, int) else 0
        detail = _detail(exc.error, exc.info)
        if status in TRANSIENT_STATUS:
            return TransientSearchError(f"{what}: OpenSearch answered {status} ({detail})")
        return SearchError(f"{what}: OpenSearch answered {status}: {detail}")
    return SearchError(f"{what}: {exc}")


def _detail(error: object, info: object) -> str:
    """``type: reason`` from an error answer's body (the reason says what to fix), else the type."""
    body = info.get("error") if isinstance(info, dict) else None
    if isinstance(body, dict) and body.get("reason"):
        return f"{body.get('type') or error}: {body['reason']}"
    return error if isinstance(error, str) else str(error)


def bulk_failures(response: Mapping[str, Any]) -> list[BulkFailure]:
    """The failed items of a ``_bulk`` answer (filtered by :data:`BULK_FILTER`), in request order."""
    if not response.get("errors"):
        return []
    out: list[BulkFailure] = []
    for position, item in enumerate(response.get("items", [])):
        r: dict[str, Any] = next(iter(item.values()), {})
        status = int(r.get("status", 200))
        if status < 300:
            continue
        err = r.get("error") or {}
        if not isinstance(err, dict):  # some failures carry a bare string
            err = {"reason": str(err)}
        cause = err.get("caused_by") or {}
        out.append(
            BulkFailure(
                position=position,
                status=status,
                id=r.get("_id"),
                type=err.get("type"),
                reason=err.get("reason"),
                cause=cause.get("reason") if isinstance(cause, dict) else None,
            )
        )
    return out


class Search:
    """OpenSearch at ``url``; calls retried for up to ``retry_deadline`` seconds when transient."""

    def __init__(
        self,
        url: str,
        *,
        retry_deadline: float = 120.0,
        timeout: float = 120.0,
        sleep: Callable[[float], None] | None = None,
    ) -> None:
        from opensearchpy import OpenSearch

        self.url = redact_url(url)
        self.retry_deadline = retry_deadline
        self._sleep = sleep
        # Our retries, not the client's: one policy, logged, with a deadline.
        self._client = OpenSearch(
            hosts=[url], timeout=timeout, max_retries=0, retry_on_timeout=False, http_compress=False
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return call_with_retries(
            what,
            fn,
            translate=translate,
            transient=TransientSearchError,
            deadline=self.retry_deadline,
            log=log,
            sleep=self._sleep,
        )

    def alias_targets(self, alias: str) -> list[str]:
        from opensearchpy.exceptions import NotFoundError

        def get() -> list[str]:
            try:
                return sorted(self._client.indices.get_alias(name=alias))
            except NotFoundError:
                return []

        return self._call(f"get alias {alias}", get)

    def is_concrete_index(self, name: str) -> bool:
        from opensearchpy.exceptions import NotFoundError

        def get() -> bool:
            try:
                found = self._client.indices.get(index=name)
            except NotFoundError:
                return False
            return name in found  # an alias answers with the indices behind it

        return self._call(f"get index {name}", get)

    def indices(self, pattern: str) -> dict[str, IndexInfo]:
        from opensearchpy.exceptions import NotFoundError

        def get() -> dict[str, IndexInfo]:
            try:
                found = self._client.indices.get(index=pattern, params={"expand_wildcards": "open"})
            except NotFoundError:
                return {}
            return {
                name: IndexInfo(
                    meta=(body.get("mappings") or {}).get("_meta") or {},
                    settings=(body.get("settings") or {}).get("index", {}),
                )
                for name, body in found.items()
            }

        return self._call(f"list indices {pattern}", get)

    def create_index(self, name: str, *, settings: Mapping[str, Any], mappings: Mapping[str, Any]) -> None:
        body = {"settings": {"index": dict(settings)}, "mappings": dict(mappings)}
        self._call(f"create {name}", lambda: self._client.indices.create(index=name, body=body))

    def bulk(self, index: str, body: bytes) -> list[BulkFailure]:
        params = {"filter_path": BULK_FILTER}
        # The body goes out as the bytes it is: opensearch-py posts bytes unchanged.
        response = self._call("bulk", lambda: self._client.bulk(body=body, index=index, params=params))
        return bulk_failures(response)

    def put_settings(self, index: str, settings: Mapping[str, Any]) -> None:
        body = {"index": dict(settings)}
        self._call(f"settings {index}", lambda: self._client.indices.put_settings(index=index, body=body))

    def put_meta(self, index: str, meta: Mapping[str, Any]) -> None:
        body = {"_meta": dict(meta)}
        self._call(f"mapping _meta {index}", lambda: self._client.indices.put_mapping(index=index, body=body))

    def refresh(self, index: str) -> None:
        self._call(f"refresh {index}", lambda: self._client.indices.refresh(index=index))

    def count(self, index: str) -> int:
        return int(self._call(f"count {index}", lambda: self._client.count(index=index))["count"])

    def update_aliases(self, actions: Sequence[AliasAction]) -> None:
        body = alias_actions_body(actions)
        self._call("update aliases", lambda: self._client.indices.update_aliases(body=body))

    def clone_index(self, source: str, target: str) -> None:
        self._call(
            f"clone {source} to {target}",
            lambda: self._client.indices.clone(index=source, target=target, params={"wait_for_active_shards": "1"}),
        )

    def delete_index(self, name: str) -> None:
        if not name or any(c in name for c in "*,?") or name.startswith("_"):
            # DELETE takes patterns and lists too: a name that is one must never get this far.
            raise SearchError(f"refusing to delete {name!r}: not a plain index name")
        self._call(f"delete {name}", lambda: self._client.indices.delete(index=name))

    def close(self) -> None:
        self._client.close()
