"""``reindex``: rebuild an OpenSearch index from PostgreSQL with no downtime.

Full rebuild, for an alias ``NAME`` that clients query:

1. create ``NAME-<utc stamp>`` with the configured mappings, refresh off and
   no replicas (marked incomplete in its mapping ``_meta``);
2. stream the rows of the configured query from one repeatable-read
   snapshot (a server-side cursor; PostgreSQL renders each row as JSON) into
   bounded ``_bulk`` requests, a few in flight; rejected items (HTTP 429) are
   sent again with backoff, any other item error aborts the run;
3. restore refresh and replicas, refresh, and compare ``_count`` with the
   snapshot's row count;
4. mark the index complete and move the alias in one atomic ``_aliases``
   call; keep the previous index for ``--rollback``, delete older ones.

A failed run never touches the alias: searches keep hitting the old index.
``--since`` upserts rows changed since a time into the live index instead.
"""

from __future__ import annotations

import json
import logging
import queue
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from p88backup.errors import ConfigError, DatabaseError, SearchError
from p88backup.pg.conn import ConnInfo, first_line
from p88backup.search.client import Search

log = logging.getLogger(__name__)
META_KEY = "p88backup"
REJECTED = ("rejected_execution_exception", "es_rejected_execution_exception")


@dataclass
class IndexDefinition:
    alias: str
    query: str
    id_column: str = "id"
    updated_at_column: str | None = None
    mappings: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(
        cls,
        alias: str,
        query: str,
        id_column: str,
        updated_at_column: str | None,
        mappings_file: Path | None,
        settings_file: Path | None,
    ) -> IndexDefinition:
        def read(path: Path | None) -> dict[str, Any]:
            if path is None:
                return {}
            try:
                doc = json.loads(path.read_text())
            except (OSError, ValueError) as exc:
                raise ConfigError(f"cannot read {path}: {exc}") from None
            if not isinstance(doc, dict):
                raise ConfigError(f"{path} must hold a JSON object")
            return doc

        mappings, settings = read(mappings_file), read(settings_file)
        if "mappings" in mappings or "settings" in mappings:  # a whole create-index body
            settings = {**mappings.get("settings", {}), **settings}
            mappings = mappings.get("mappings", {})
        return cls(alias, query, id_column, updated_at_column, mappings, settings)


@dataclass
class ReindexOptions:
    chunk_bytes: int = 8 * 1024 * 1024
    concurrency: int = 2
    fetch_rows: int = 5000
    keep_failed: bool = False
    max_errors_shown: int = 5


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

    @property
    def docs_per_second(self) -> float:
        return round(self.actions / self.seconds, 1) if self.seconds else 0.0


def _flat(settings: dict[str, Any]) -> dict[str, Any]:
    """{"index": {"a": 1}} or {"index.a": 1} or {"a": 1} -> {"a": 1} (index-level keys)."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if k == "index" and isinstance(v, dict):
            out.update(_flat(v))
        else:
            out[k.removeprefix("index.")] = v
    return out


class BulkFailed(SearchError):
    pass


class Reindexer:
    def __init__(
        self,
        ci: ConnInfo,
        search: Search,
        definition: IndexDefinition,
        options: ReindexOptions | None = None,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        progress: Callable[[int], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ci, self.search, self.d = ci, search, definition
        self.opt = options or ReindexOptions()
        self.clock, self.progress, self.sleep = clock, progress, sleep
        self.rejected_retries = 0

    # -- naming ---------------------------------------------------------------

    def _ours(self) -> dict[str, dict[str, Any]]:
        """Indices built for this alias (ours by name), with their _meta and settings."""
        pattern = re.compile(rf"^{re.escape(self.d.alias)}-(legacy-)?(\d{{8}}t\d{{6}}z)(-\d+)?$")
        return {n: v for n, v in self.search.indices(f"{self.d.alias}-*").items() if pattern.match(n)}

    @staticmethod
    def _age_key(name: str) -> tuple[str, int]:
        """Build time order of our index names: the stamp, then -N; a legacy clone
        predates the index built in the same run."""
        m = re.search(r"(\d{8}t\d{6}z)(?:-(\d+))?$", name)
        if not m:
            return ("", 0)
        return (m.group(1), 0 if "-legacy-" in name else int(m.group(2) or 1))

    def _new_name(self, taken: set[str]) -> str:
        base = f"{self.d.alias}-{self.clock().strftime('%Y%m%dt%H%M%Sz')}"
        name, n = base, 1
        while name in taken:
            n += 1
            name = f"{base}-{n}"
        return name

    # -- PostgreSQL -----------------------------------------------------------

    def _sql(self, since: bool) -> Any:
        from psycopg import sql

        # PostgreSQL renders each whole _bulk item (action line + document): far cheaper there
        # than per-row JSON work in Python. A NULL id makes the item NULL.
        text = sql.SQL(
            "SELECT '{{\"index\":{{\"_id\":' || to_json(({id})::text)::text || E'}}}}\\n'"
            " || row_to_json(q)::text || E'\\n' FROM ({query}) q"
        ).format(
            id=sql.SQL("q.") + sql.Identifier(self.d.id_column),
            # with a parameter (--since) psycopg reads % as a placeholder: a LIKE '%x' must survive
            query=sql.SQL(self.d.query.replace("%", "%%") if since else self.d.query),
        )
        if since:
            if not self.d.updated_at_column:
                raise ConfigError(f"index {self.d.alias!r} has no updated_at_column: --since needs one")
            text += sql.SQL(" WHERE q.") + sql.Identifier(self.d.updated_at_column) + sql.SQL(" >= %s")
        return text

    def _count_sql(self) -> Any:
        from psycopg import sql

        return sql.SQL("SELECT count(*) FROM ({query}) q").format(query=sql.SQL(self.d.query))

    def _snapshot(self) -> Any:
        conn = self.ci.connect(autocommit=False)
        try:
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        except Exception as exc:
            conn.close()
            raise DatabaseError(f"cannot open a snapshot: {first_line(exc)}") from None
        return conn

    def _rows(self, conn: Any, since: datetime | None) -> Iterator[tuple[bytes | None]]:
        from psycopg.adapt import Loader

        class RawText(Loader):
            """Items stay the UTF-8 bytes the server sent: no decode here, no encode to post."""

            def load(self, data: Any) -> bytes:
                return bytes(data)

        try:
            with conn.cursor(name="p88reindex") as cur:
                cur.adapters.register_loader("text", RawText)
                cur.itersize = self.opt.fetch_rows
                cur.execute(self._sql(since is not None), (since,) if since is not None else None)
                yield from cur
        except (SearchError, ConfigError):
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg"):
                raise DatabaseError(f"reading rows for {self.d.alias}: {first_line(exc)}") from None
            raise

    # -- bulk -----------------------------------------------------------------

    def _chunks(self, rows: Iterator[tuple[bytes | None]]) -> Iterator[list[bytes]]:
        """Bulk bodies as lists of items (action line + document line), bounded in size."""
        items: list[bytes] = []
        size = 0
        for (item,) in rows:
            if item is None:
                raise SearchError(f"a row of {self.d.alias}'s query has a NULL {self.d.id_column}")
            items.append(item)
            size += len(item)
            if size >= self.opt.chunk_bytes:
                yield items
                items, size = [], 0
        if items:
            yield items

    def _post(self, items: list[bytes], target: str) -> int:
        """Send one bulk body; resend rejected (429) items with backoff. Returns items indexed."""
        pending = items
        delay = 0.2
        deadline = time.monotonic() + self.search.retry_deadline
        while True:
            resp = self._bulk(b"".join(pending), target)
            if not resp.get("errors"):
                return len(items)
            rejected, failed = [], []
            for item, result in zip(pending, resp.get("items", []), strict=False):
                r = next(iter(result.values()))
                if r.get("status", 200) < 300:
                    continue
                err = r.get("error") or {}
                if r.get("status") == 429 or err.get("type") in REJECTED:
                    rejected.append(item)
                else:
                    failed.append((r.get("_id"), err.get("type"), err.get("reason"), err.get("caused_by", {})))
            if failed:
                shown = "; ".join(
                    f"id {i}: {t}: {reason}" + (f" ({c.get('reason')})" if c.get("reason") else "")
                    for i, t, reason, c in failed[: self.opt.max_errors_shown]
                )
                raise BulkFailed(f"{len(failed)} documents were rejected: {shown}")
            if len(rejected) < len(pending):  # progress: the node is busy, not stuck
                deadline = time.monotonic() + self.search.retry_deadline
                delay = max(0.2, delay / 2)
            elif time.monotonic() > deadline:
                raise SearchError(f"OpenSearch kept rejecting writes (429) for {self.search.retry_deadline:.0f}s")
            self.rejected_retries += 1
            log.warning(
                "OpenSearch is busy (429), resending rejected documents",
                extra={"p88": {"rejected": len(rejected), "in_seconds": round(delay, 2)}},
            )
            self.sleep(delay)
            delay = min(delay * 2, 10.0)
            pending = rejected

    def _bulk(self, body: bytes, target: str) -> Any:
        params = {"filter_path": "errors,items.*.status,items.*.error,items.*._id"}
        return self.search.call("bulk", lambda: self.search.client.bulk(body=body, index=target, params=params))

    def _load(self, rows: Iterator[tuple[bytes | None]], target: str) -> int:
        """Stream rows into ``target``, a few bulk requests in flight; returns actions sent."""
        # Bounded: at most `concurrency` bodies wait while as many are in flight.
        chunks: queue.Queue[list[bytes] | None] = queue.Queue(maxsize=self.opt.concurrency)
        stop = threading.Event()
        produced: list[BaseException] = []

        def produce() -> None:
            try:
                for chunk in self._chunks(rows):
                    while not stop.is_set():
                        try:
                            chunks.put(chunk, timeout=0.5)
                            break
                        except queue.Full:
                            continue
                    if stop.is_set():
                        return
            except BaseException as exc:  # raised in the caller's thread below
                produced.append(exc)
            finally:
                for _ in range(self.opt.concurrency):
                    try:
                        chunks.put(None, timeout=5)
                    except queue.Full:
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
        alias = self.d.alias
        result = ReindexResult(alias, "full", dry_run=dry_run)
        concrete = self.search.is_concrete_index(alias)
        live = [] if concrete else self.search.alias_targets(alias)
        ours = self._ours()
        new = self._new_name(set(ours) | set(live))
        result.index, result.previous = new, (alias if concrete else (live[0] if live else None))
        conn = self._snapshot()
        try:
            result.rows = int(conn.execute(self._count_sql()).fetchone()[0])
            if dry_run:
                result.deleted = self._to_delete(ours, keep={new, *(live or [])})
                conn.rollback()
                return result
            self._create(new)
            try:
                result.actions = self._load(self._rows(conn, None), new)
                result.count = self._finish(new, live, ours, result.rows)
            except BaseException:
                self._drop_failed(new)
                raise
        finally:
            try:
                conn.rollback()
            except Exception:
                pass
            conn.close()
        result.rejected_retries = self.rejected_retries
        if concrete:
            legacy = self._migrate_concrete(new, new.removeprefix(alias + "-"))
            result.previous = legacy
        else:
            self._swap(new, live)
        keep = {new} | ({result.previous} if result.previous else set())
        result.deleted = self._to_delete(self._ours(), keep=keep)
        for name in result.deleted:
            self._delete(name)
        result.seconds = round(time.monotonic() - t0, 2)
        return result

    def _create(self, name: str) -> None:
        index_settings = {**_flat(self.d.settings), "refresh_interval": "-1", "number_of_replicas": 0}
        mappings = dict(self.d.mappings)
        mappings["_meta"] = {
            **mappings.get("_meta", {}),
            META_KEY: {"alias": self.d.alias, "complete": False, "started_at": self.clock().isoformat()},
        }
        body = {"settings": {"index": index_settings}, "mappings": mappings}
        self.search.call(f"create {name}", lambda: self.search.client.indices.create(index=name, body=body))
        log.info("index created", extra={"p88": {"index": name, "alias": self.d.alias}})

    def _finish(self, name: str, live: list[str], ours: dict[str, dict[str, Any]], rows: int) -> int:
        """Settings back, refresh, count check, mark complete. Returns the count."""
        wanted = _flat(self.d.settings)
        previous = ours.get(live[0], {}).get("settings", {}) if live else {}
        final = {
            "refresh_interval": wanted.get("refresh_interval", previous.get("refresh_interval")),
            "number_of_replicas": wanted.get("number_of_replicas", previous.get("number_of_replicas")),
        }
        self.search.call(
            f"settings {name}", lambda: self.search.client.indices.put_settings(index=name, body={"index": final})
        )
        self.search.call(f"refresh {name}", lambda: self.search.client.indices.refresh(index=name))
        count = self.search.count(name)
        if count != rows:
            raise SearchError(
                f"{name} holds {count} documents but the snapshot has {rows} rows; alias not moved",
                hint="are ids unique in the query? duplicates overwrite each other",
            )
        meta = {
            META_KEY: {"alias": self.d.alias, "complete": True, "rows": rows, "finished_at": self.clock().isoformat()}
        }
        self.search.call(
            f"mark {name} complete",
            lambda: self.search.client.indices.put_mapping(
                index=name, body={"_meta": {**self.d.mappings.get("_meta", {}), **meta}}
            ),
        )
        return count

    def _swap(self, new: str, live: list[str]) -> None:
        actions: list[dict[str, Any]] = [{"add": {"index": new, "alias": self.d.alias}}]
        actions += [{"remove": {"index": old, "alias": self.d.alias}} for old in live]
        self.search.call("move alias", lambda: self.search.client.indices.update_aliases(body={"actions": actions}))
        log.info("alias moved", extra={"p88": {"alias": self.d.alias, "to": new, "from": live}})

    def _migrate_concrete(self, new: str, stamp: str) -> str:
        """First run where NAME is a plain index: keep a clone for rollback, then swap atomically."""
        alias = self.d.alias
        legacy = f"{alias}-legacy-{stamp}"
        c = self.search.client
        self.search.call("block writes", lambda: c.indices.put_settings(index=alias, body={"index.blocks.write": True}))
        self.search.call(
            "clone", lambda: c.indices.clone(index=alias, target=legacy, params={"wait_for_active_shards": "1"})
        )
        self.search.call(
            "unblock clone", lambda: c.indices.put_settings(index=legacy, body={"index.blocks.write": None})
        )
        # One request: the alias appears as the index disappears, so no search finds nothing;
        # a search in flight on the old index at that instant may still fail once (503).
        log.warning(
            "replacing the plain index by an alias; in-flight searches may fail once",
            extra={"p88": {"index": alias, "kept_as": legacy}},
        )
        actions = [{"add": {"index": new, "alias": alias}}, {"remove_index": {"index": alias}}]
        self.search.call("replace index by alias", lambda: c.indices.update_aliases(body={"actions": actions}))
        log.info("plain index replaced by an alias", extra={"p88": {"alias": alias, "to": new, "kept_as": legacy}})
        return legacy

    def _to_delete(self, ours: dict[str, dict[str, Any]], keep: set[str]) -> list[str]:
        return sorted(n for n in ours if n not in keep)

    def _delete(self, name: str) -> None:
        self.search.call(f"delete {name}", lambda: self.search.client.indices.delete(index=name))

    def _drop_failed(self, name: str) -> None:
        if self.opt.keep_failed:
            log.warning("kept the failed index for inspection (--keep-failed)", extra={"p88": {"index": name}})
            return
        try:
            self._delete(name)
            log.info("deleted the half-built index", extra={"p88": {"index": name}})
        except SearchError as exc:
            log.warning(
                "could not delete the half-built index; the next run will",
                extra={"p88": {"index": name, "error": str(exc)}},
            )

    def since(self, when: datetime) -> ReindexResult:
        """Upsert rows changed since ``when`` into the live index (idempotent)."""
        t0 = time.monotonic()
        live = self.search.alias_targets(self.d.alias)
        if len(live) != 1:
            raise SearchError(
                f"alias {self.d.alias!r} must point to one index for --since (found {live or 'none'})",
                hint="run a full reindex first",
            )
        result = ReindexResult(self.d.alias, "since", index=live[0])
        conn = self._snapshot()
        try:
            result.actions = self._load(self._rows(conn, when), live[0])
        finally:
            conn.rollback()
            conn.close()
        result.rows = result.actions
        self.search.call("refresh", lambda: self.search.client.indices.refresh(index=live[0]))
        result.rejected_retries = self.rejected_retries
        result.seconds = round(time.monotonic() - t0, 2)
        return result

    def rollback(self) -> ReindexResult:
        """Point the alias back at the newest complete index older than the live one."""
        live = self.search.alias_targets(self.d.alias)
        if len(live) != 1:
            raise SearchError(f"alias {self.d.alias!r} points to {live or 'nothing'}; nothing to roll back")
        ours = self._ours()
        older = sorted(
            (
                n
                for n, v in ours.items()
                if self._age_key(n) < self._age_key(live[0])
                and (v["meta"].get(META_KEY, {}).get("complete") or "-legacy-" in n)
            ),
            key=self._age_key,
        )
        if not older:
            raise SearchError(f"no earlier complete index of {self.d.alias!r} to roll back to")
        self._swap(older[-1], live)
        return ReindexResult(self.d.alias, "rollback", index=older[-1], previous=live[0])


def parse_since(text: str) -> datetime:
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ConfigError(f"--since {text!r}: expected an ISO-8601 time with zone") from None
    if when.tzinfo is None:
        raise ConfigError(f"--since {text!r} has no time zone (add +00:00 or Z)")
    return when
