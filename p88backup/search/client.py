"""OpenSearch access for ``reindex``: one client, bounded retries, our errors.

Transient trouble (connection refused or reset, timeouts, HTTP 429 and
502/503/504) is retried with exponential backoff until a deadline, each
attempt logged; anything else fails at once. opensearch-py exceptions are
translated here; nothing above imports them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from p88backup.errors import SearchError
from p88backup.redact import redact_url
from p88backup.retry import call_with_retries

log = logging.getLogger(__name__)
T = TypeVar("T")
TRANSIENT_STATUS = {429, 502, 503, 504}


class TransientSearchError(SearchError):
    """Worth retrying: the node is busy (429) or unreachable for now."""


def translate(exc: Exception, what: str) -> SearchError:
    import opensearchpy.exceptions as ose

    if isinstance(exc, SearchError):
        return exc
    if isinstance(exc, ose.ConnectionError):  # includes timeouts
        return TransientSearchError(f"{what}: cannot reach OpenSearch ({type(exc).__name__})")
    if isinstance(exc, ose.TransportError):
        status = exc.status_code if isinstance(exc.status_code, int) else 0
        detail = exc.error if isinstance(exc.error, str) else str(exc.error)
        if status in TRANSIENT_STATUS:
            return TransientSearchError(f"{what}: OpenSearch answered {status} ({detail})")
        return SearchError(f"{what}: OpenSearch answered {status}: {detail}")
    return SearchError(f"{what}: {exc}")


class Search:
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
        self.client = OpenSearch(
            hosts=[url], timeout=timeout, max_retries=0, retry_on_timeout=False, http_compress=False
        )

    def call(self, what: str, fn: Callable[[], T]) -> T:
        return call_with_retries(
            what,
            fn,
            translate=translate,
            transient=TransientSearchError,
            deadline=self.retry_deadline,
            log=log,
            sleep=self._sleep,
        )

    # -- the calls reindex needs ------------------------------------------------

    def alias_targets(self, alias: str) -> list[str]:
        """Indices the alias points to ([] if there is no such alias)."""
        from opensearchpy.exceptions import NotFoundError

        def get() -> list[str]:
            try:
                return sorted(self.client.indices.get_alias(name=alias))
            except NotFoundError:
                return []

        return self.call(f"get alias {alias}", get)

    def is_concrete_index(self, name: str) -> bool:
        """True if ``name`` is an index (not an alias)."""
        from opensearchpy.exceptions import NotFoundError

        def get() -> bool:
            try:
                found = self.client.indices.get(index=name)
            except NotFoundError:
                return False
            return name in found

        return self.call(f"get index {name}", get)

    def indices(self, pattern: str) -> dict[str, dict[str, Any]]:
        """name -> {"meta": mapping _meta, "settings": index settings} for indices matching pattern."""
        from opensearchpy.exceptions import NotFoundError

        def get() -> dict[str, dict[str, Any]]:
            try:
                found = self.client.indices.get(index=pattern, params={"expand_wildcards": "open"})
            except NotFoundError:
                return {}
            return {
                name: {
                    "meta": (body.get("mappings") or {}).get("_meta") or {},
                    "settings": (body.get("settings") or {}).get("index", {}),
                }
                for name, body in found.items()
            }

        return self.call(f"list indices {pattern}", get)

    def count(self, index: str) -> int:
        return int(self.call(f"count {index}", lambda: self.client.count(index=index))["count"])
