"""``reindex``: rebuild an OpenSearch index from PostgreSQL with no downtime.

Full rebuild, for an alias ``NAME`` that clients query:

1. create ``NAME-<utc stamp>`` with the configured mappings, refresh off and
   no replicas (marked incomplete in its mapping ``_meta``);
2. stream the rows of the configured query from one repeatable-read
   snapshot (:mod:`p88backup.search.source`) into bounded ``_bulk``
   requests, a few in flight; rejected items (HTTP 429) are sent again with
   backoff, any other item error aborts the run;
3. restore refresh and replicas, refresh, and compare ``_count`` with the
   snapshot's row count;
4. mark the index complete and move the alias in one atomic ``_aliases``
   call; keep the previous index for ``--rollback``, delete older ones.

A failed run never touches the alias: searches keep hitting the old index.
``--since`` upserts rows changed since a time into the live index instead.

Every decision (names, what the swap does, what is kept and deleted, where
rollback and ``--since`` go) is made by :mod:`p88backup.search.plan` from
what the :class:`~p88backup.search.adapter.SearchAdapter` reports; this
module carries the plans out, through the adapter only.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime

from p88backup.errors import ConfigError, SearchError
from p88backup.search.adapter import BulkFailure, SearchAdapter
from p88backup.search.definition import IndexDefinition, flat_settings
from p88backup.search.plan import (
    META_KEY,
    AliasState,
    FullPlan,
    build_settings,
    final_settings,
    is_ours,
    plan_full,
    plan_rollback,
    since_target,
)
from p88backup.search.source import DocumentSource

log = logging.getLogger(__name__)
REJECTED = ("rejected_execution_exception", "es_rejected_execution_exception")


@dataclass
class ReindexOptions:
    chunk_bytes: int = 8 * 1024 * 1024
    concurrency: int = 2
    fetch_rows: int = 5000
    keep_failed: bool = False
    max_errors_shown: int = 5
    rejected_deadline: float = 120.0
    """How long items the node keeps rejecting (429) are resent without any getting through."""


@dataclass
class ReindexResult:
    alias: str
    mode: str
    index: str | None = None
    previous: str | None = None
    rows: int = 0
    actions: int = 0
    count: int | None = None
    rejected_retries: int = 0
    deleted: list[str] = field(default_factory=list)
    seconds: float = 0.0
    dry_run: bool = False
    migrated: bool = False
    """The alias's name was a plain index, replaced by the alias (its data kept as ``previous``)."""

    @property
    def docs_per_second(self) -> float:
        return round(self.actions / self.seconds, 1) if self.seconds else 0.0


class BulkFailed(SearchError):
    pass


def split_failures(failures: Sequence[BulkFailure]) -> tuple[list[int], list[BulkFailure]]:
    """Positions to send again (the node was busy: 429) and the items that failed for good."""
    rejected = [f.position for f in failures if f.status == 429 or f.type in REJECTED]
    failed = [f for f in failures if not (f.status == 429 or f.type in REJECTED)]
    return rejected, failed


def describe_failures(failed: Sequence[BulkFailure], shown: int) -> str:
    parts = [f"id {f.id}: {f.type}: {f.reason}" + (f" ({f.cause})" if f.cause else "") for f in failed[:shown]]
    return f"{len(failed)} documents were rejected: " + "; ".join(parts)


class Reindexer:
    def __init__(
        self,
        search: SearchAdapter,
        source: DocumentSource,
        definition: IndexDefinition,
        options: ReindexOptions | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        progress: Callable[[int], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.search, self.source, self.d = search, source, definition
        self.opt = options or ReindexOptions()
        self.clock, self.progress, self.sleep, self.monotonic = clock, progress, sleep, monotonic
        self.rejected_retries = 0

    # -- what OpenSearch holds ------------------------------------------------

    def state(self) -> AliasState:
        alias = self.d.alias
        live = tuple(self.search.alias_targets(alias))
        concrete = not live and self.search.is_concrete_index(alias)
        infos = {n: i for n, i in self.search.indices(f"{alias}-*").items() if is_ours(alias, n)}
        # The live or plain indices too (their settings carry over), whatever their names.
        for name in [alias] if concrete else live:
            if name not in infos:
                infos.update(self.search.indices(name))
        return AliasState(alias, live, concrete, infos)

    # -- bulk -----------------------------------------------------------------

    def _chunks(self, items: Iterator[bytes | None]) -> Iterator[list[bytes]]:
        """Bulk bodies as lists of items (action line + document line), bounded in size."""
        chunk: list[bytes] = []
        size = 0
        for item in items:
            if item is None:
                raise SearchError(f"a row of {self.d.alias}'s query has a NULL {self.d.id_column}")
            chunk.append(item)
            size += len(item)
            if size >= self.opt.chunk_bytes:
                yield chunk
                chunk, size = [], 0
        if chunk:
            yield chunk

    def _post(self, items: list[bytes], target: str) -> int:
        """Send one bulk body; resend rejected (429) items with backoff. Returns items indexed."""
        pending = items
        delay = 0.2
        deadline = self.monotonic() + self.opt.rejected_deadline
        while True:
            failures = self.search.bulk(target, b"".join(pending))
            if not failures:
                return len(items)
            rejected, failed = split_failures(failures)
            if failed:
                raise BulkFailed(describe_failures(failed, self.opt.max_errors_shown))
            if len(rejected) < len(pending):  # progress: the node is busy, not stuck
                deadline = self.monotonic() + self.opt.rejected_deadline
                delay = max(0.2, delay / 2)
            elif self.monotonic() > deadline:
                raise SearchError(f"OpenSearch kept rejecting writes (429) for {self.opt.rejected_deadline:.0f}s")
            self.rejected_retries += 1
            log.warning(
                "OpenSearch is busy (429), resending rejected documents",
                extra={"p88": {"rejected": len(rejected), "in_seconds": round(delay, 2)}},
            )
            self.sleep(delay)
            delay = min(delay * 2, 10.0)
            pending = [pending[i] for i in rejected]

    def _load(self, items: Iterator[bytes | None], target: str) -> int:
        """Stream items into ``target``, a few bulk requests in flight; returns actions sent."""
        # Bounded: at most `concurrency` bodies wait while as many are in flight.
        chunks: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=self.opt.concurrency)
        stop = threading.Event()
        produced: list[BaseException] = []

        def produce() -> None:
            try:
                for chunk in self._chunks(items):
                    while not stop.is_set():
                        try:
                            chunks.put(chunk, timeout=0.1)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as exc:  # raised in the caller's thread below
                produced.append(exc)
            finally:
                # One end mark per consumer. When the load stops on an error, unsent bodies are
                # dropped to make room: waiting for consumers that have gone would hold the
                # failure back (seconds, for nothing).
                for _ in range(self.opt.concurrency):
                    while True:
                        try:
                            chunks.put(None, timeout=0.1)
                            break
                        except queue.Full:
                            if stop.is_set():
                                try:
                                    chunks.get_nowait()
                                except queue.Empty:
                                    pass

        sent = 0
        lock = threading.Lock()

        def consume() -> None:
            nonlocal sent
            while not stop.is_set():
                chunk = chunks.get()
                if chunk is None:
                    return
                try:
                    n = self._post(chunk, target)
                except BaseException:
                    stop.set()
                    raise
                with lock:
                    sent += n
                if self.progress:
                    self.progress(n)

        producer = threading.Thread(target=produce, name="reindex-rows", daemon=True)
        producer.start()
        try:
            with ThreadPoolExecutor(self.opt.concurrency, thread_name_prefix="bulk") as pool:
                futures = [pool.submit(consume) for _ in range(self.opt.concurrency)]
                for f in futures:
                    f.result()
        finally:
            stop.set()
            while True:  # unblock the producer if it waits on a full queue
                try:
                    chunks.get_nowait()
                except queue.Empty:
                    break
            producer.join(timeout=30)
        if produced:
            raise produced[0]
        return sent

    # -- operations -----------------------------------------------------------

    def full(self, *, dry_run: bool = False) -> ReindexResult:
        t0 = time.monotonic()
        plan = plan_full(self.state(), self.clock())
        result = ReindexResult(
            self.d.alias,
            "full",
            index=plan.new,
            previous=plan.previous,
            deleted=list(plan.delete),
            dry_run=dry_run,
            migrated=plan.legacy is not None,
        )
        with self.source.snapshot() as snap:
            result.rows = snap.count()
            if dry_run:
                return result
            self._create(plan.new)
            try:
                result.actions = self._load(snap.items(None), plan.new)
                result.count = self._finish(plan, result.rows)
            except BaseException:
                self._drop_failed(plan.new)
                raise
        result.rejected_retries = self.rejected_retries
        self._switch(plan)
        # Older versions go only once the alias has left them; planned from the listing taken
        # before the run, so an index that appeared meanwhile (someone else's) is never touched.
        for name in plan.delete:
            self.search.delete_index(name)
            log.info("deleted an older version", extra={"p88": {"index": name, "alias": self.d.alias}})
        result.seconds = round(time.monotonic() - t0, 2)
        return result

    def _create(self, name: str) -> None:
        mappings = dict(self.d.mappings)
        mappings["_meta"] = {
            **mappings.get("_meta", {}),
            META_KEY: {"alias": self.d.alias, "complete": False, "started_at": self.clock().isoformat()},
        }
        self.search.create_index(name, settings=build_settings(flat_settings(self.d.settings)), mappings=mappings)
        log.info("index created", extra={"p88": {"index": name, "alias": self.d.alias}})

    def _finish(self, plan: FullPlan, rows: int) -> int:
        """Settings back, refresh, count check, mark complete. Returns the count."""
        name = plan.new
        self.search.put_settings(name, final_settings(flat_settings(self.d.settings), plan.previous_settings))
        self.search.refresh(name)
        count = self.search.count(name)
        if count != rows:
            raise SearchError(
                f"{name} holds {count} documents but the snapshot has {rows} rows; alias not moved",
                hint="are ids unique in the query? duplicates overwrite each other",
            )
        meta = {
            META_KEY: {"alias": self.d.alias, "complete": True, "rows": rows, "finished_at": self.clock().isoformat()}
        }
        self.search.put_meta(name, {**self.d.mappings.get("_meta", {}), **meta})
        return count

    def _switch(self, plan: FullPlan) -> None:
        """Move the alias to the new index (replacing a plain index by it when migrating).

        If that fails, what happens next depends on where the alias is: an answer lost after
        OpenSearch applied the call is success; if the alias did not move, the new index is
        dropped (and a migration undone); if nobody can tell, everything is kept.
        """
        try:
            if plan.legacy:
                self._prepare_migration(plan.alias, plan.legacy)
            self.search.update_aliases(plan.swap)
        except BaseException as exc:
            moved = self._alias_at(plan.new)
            if moved and isinstance(exc, SearchError):
                log.warning(
                    "the alias moved although OpenSearch answered with an error",
                    extra={"p88": {"alias": plan.alias, "to": plan.new, "error": str(exc)}},
                )
                self._log_moved(plan)
                return
            if moved is False:
                if plan.legacy:
                    self._undo_migration(plan.alias, plan.legacy)
                self._drop_failed(plan.new)
            elif moved is None:
                log.warning(
                    "cannot tell whether the alias moved: kept every index",
                    extra={"p88": {"alias": plan.alias, "new": plan.new}},
                )
            raise
        self._log_moved(plan)

    def _log_moved(self, plan: FullPlan) -> None:
        if plan.legacy:
            log.info(
                "plain index replaced by an alias",
                extra={"p88": {"alias": plan.alias, "to": plan.new, "kept_as": plan.legacy}},
            )
        else:
            log.info("alias moved", extra={"p88": {"alias": plan.alias, "to": plan.new, "from": plan.previous}})

    def _alias_at(self, index: str) -> bool | None:
        """Does the alias point to ``index`` now? None if OpenSearch cannot say."""
        try:
            return index in self.search.alias_targets(self.d.alias)
        except SearchError:
            return None

    def _prepare_migration(self, alias: str, legacy: str) -> None:
        """First run where NAME is a plain index: keep a clone of it for rollback."""
        # The clone must not miss a write: the application's writes to the plain index fail
        # from here until the alias replaces it (a few seconds).
        self.search.put_settings(alias, {"blocks.write": True})
        self.search.clone_index(alias, legacy)
        self.search.put_settings(legacy, {"blocks.write": None})
        # One request: the alias appears as the index disappears, so no search finds nothing;
        # a search in flight on the old index at that instant may still fail once (503).
        log.warning(
            "replacing the plain index by an alias; in-flight searches may fail once",
            extra={"p88": {"index": alias, "kept_as": legacy}},
        )

    def _undo_migration(self, alias: str, legacy: str) -> None:
        """The plain index is still the live one: let the application write to it again."""
        try:
            self.search.put_settings(alias, {"blocks.write": None})
        except SearchError as exc:
            log.error(
                "the plain index is still write-blocked: unblock it by hand",
                extra={
                    "p88": {
                        "index": alias,
                        "error": str(exc),
                        "how": f'PUT /{alias}/_settings {{"index.blocks.write": null}}',
                    }
                },
            )
        try:
            if self.search.indices(legacy):  # the clone may not have been made
                self.search.delete_index(legacy)
        except SearchError as exc:
            log.warning("could not delete the clone", extra={"p88": {"index": legacy, "error": str(exc)}})

    def _drop_failed(self, name: str) -> None:
        if self.opt.keep_failed:
            log.warning("kept the failed index for inspection (--keep-failed)", extra={"p88": {"index": name}})
            return
        try:
            self.search.delete_index(name)
            log.info("deleted the half-built index", extra={"p88": {"index": name}})
        except SearchError as exc:
            log.warning(
                "could not delete the half-built index; the next run will",
                extra={"p88": {"index": name, "error": str(exc)}},
            )

    def since(self, when: datetime) -> ReindexResult:
        """Upsert rows changed since ``when`` into the live index (idempotent)."""
        t0 = time.monotonic()
        if not self.d.updated_at_column:
            raise ConfigError(f"index {self.d.alias!r} has no updated_at_column: --since needs one")
        target = since_target(self.state())
        result = ReindexResult(self.d.alias, "since", index=target)
        with self.source.snapshot() as snap:
            result.actions = self._load(snap.items(when), target)
        result.rows = result.actions
        self.search.refresh(target)
        result.rejected_retries = self.rejected_retries
        result.seconds = round(time.monotonic() - t0, 2)
        return result

    def rollback(self) -> ReindexResult:
        """Point the alias back at the newest complete index older than the live one."""
        plan = plan_rollback(self.state())
        self.search.update_aliases(plan.swap)
        log.info("alias moved back", extra={"p88": {"alias": plan.alias, "to": plan.target, "from": plan.current}})
        return ReindexResult(self.d.alias, "rollback", index=plan.target, previous=plan.current)
