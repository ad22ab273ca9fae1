"""An in-memory OpenSearch behind the :class:`~p88backup.search.adapter.SearchAdapter` contract,
and a list of documents behind :class:`~p88backup.search.source.DocumentSource`.

``FakeSearch`` behaves like an OpenSearch 2.19 node wherever reindex's logic depends on it:
indices and aliases by name, wildcards, atomic ``_aliases`` (``remove_index`` first, all or
nothing; removing an alias an index does not have is dropped quietly unless nothing else is
left), documents visible to ``count`` only after a refresh, clones that need a write block and
copy it, per-item bulk failures (mapping errors on numeric fields, write blocks), and the same
errors (status, type, reason) for missing or existing indices.
``tests/integration/test_search_adapter.py`` runs one suite on it and on a real node, so a
difference shows there.

For faults it can be told to reject the next bulk items with 429 (``busy``, or ``busy_forever``),
to raise before a method runs (``fail``) or after it ran (``fail_after``: an answer lost on the
way back), or to be unreachable (``down``). ``calls`` records every call, in order.
"""

from __future__ import annotations

import copy
import fnmatch
import json
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from p88backup.errors import SearchError
from p88backup.search.adapter import (
    AddAlias,
    AliasAction,
    BulkFailure,
    IndexInfo,
    RemoveAlias,
    RemoveIndex,
    TransientSearchError,
)

NUMERIC = {"long", "integer", "short", "byte"}


def _setting_value(v: Any) -> str:
    """OpenSearch reports every setting as a string."""
    if isinstance(v, bool):
        return "true" if v else "false"
    return str(v)


def _nest(flat: Mapping[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


@dataclass
class FakeIndex:
    settings: dict[str, str]
    mappings: dict[str, Any]
    docs: dict[str, dict[str, Any]] = field(default_factory=dict)
    visible: int = 0

    @property
    def meta(self) -> dict[str, Any]:
        m = self.mappings.get("_meta")
        return m if isinstance(m, dict) else {}

    @property
    def write_blocked(self) -> bool:
        return self.settings.get("blocks.write") == "true"

    def seen(self) -> int:
        """Documents a count sees: those there at the last refresh. (A real node also refreshes
        every ``refresh_interval`` unless it is ``-1``; code that counts must not rely on that timing.)"""
        return self.visible


def _error(status: int, type_: str, reason: str, what: str) -> SearchError:
    """The message the real adapter makes of an OpenSearch error answer."""
    return SearchError(f"{what}: OpenSearch answered {status}: {type_}: {reason}")


class FakeSearch:
    url = "fake://opensearch"

    def __init__(self) -> None:
        self.indices_: dict[str, FakeIndex] = {}
        self.aliases: dict[str, set[str]] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.bodies: list[bytes] = []
        self.busy = 0
        self.busy_forever = False
        self.fail: dict[str, SearchError] = {}
        self.fail_after: dict[str, SearchError] = {}
        self.down = False
        self.closed = False

    # -- set-up helpers for tests (not part of the contract) -------------------

    def add_plain_index(self, name: str, docs: Mapping[str, dict[str, Any]], **settings: Any) -> None:
        """An index as the application made it before p88backup (refreshed, default settings)."""
        flat = {
            "number_of_shards": "1",
            "number_of_replicas": "1",
            **{k: _setting_value(v) for k, v in settings.items()},
        }
        self.indices_[name] = FakeIndex(flat, {}, dict(docs), len(docs))

    def docs(self, name: str) -> dict[str, dict[str, Any]]:
        return self.indices_[name].docs

    def method_calls(self, *names: str) -> list[tuple[Any, ...]]:
        return [c for c in self.calls if c[0] in names]

    # -- machinery --------------------------------------------------------------

    def _enter(self, method: str, *args: Any) -> None:
        if self.closed:
            raise RuntimeError("the adapter was closed")
        self.calls.append((method, *args))
        if self.down:
            raise TransientSearchError(f"{method}: cannot reach OpenSearch (ConnectionError)")
        if method in self.fail:
            raise self.fail.pop(method)

    def _leave(self, method: str) -> None:
        if method in self.fail_after:
            raise self.fail_after.pop(method)

    def _resolve(self, name: str, what: str) -> list[str]:
        """Concrete indices behind a name (an index or an alias); 404 if neither."""
        if name in self.indices_:
            return [name]
        if name in self.aliases:
            return sorted(self.aliases[name])
        raise _error(404, "index_not_found_exception", f"no such index [{name}]", what)

    def _concrete(self, name: str, what: str) -> FakeIndex:
        if name not in self.indices_:
            raise _error(404, "index_not_found_exception", f"no such index [{name}]", what)
        return self.indices_[name]

    # -- the contract -------------------------------------------------------------

    def alias_targets(self, alias: str) -> list[str]:
        self._enter("alias_targets", alias)
        out = sorted(self.aliases.get(alias, ()))
        self._leave("alias_targets")
        return out

    def is_concrete_index(self, name: str) -> bool:
        self._enter("is_concrete_index", name)
        out = name in self.indices_
        self._leave("is_concrete_index")
        return out

    def indices(self, pattern: str) -> dict[str, IndexInfo]:
        self._enter("indices", pattern)
        names: set[str] = set()
        for p in pattern.split(","):
            names.update(n for n in self.indices_ if fnmatch.fnmatchcase(n, p))
            for alias, targets in self.aliases.items():  # wildcards and names match aliases too
                if fnmatch.fnmatchcase(alias, p):
                    names.update(targets)
        out = {
            n: IndexInfo(meta=copy.deepcopy(self.indices_[n].meta), settings=_nest(self.indices_[n].settings))
            for n in sorted(names)
        }
        self._leave("indices")
        return out

    def create_index(self, name: str, *, settings: Mapping[str, Any], mappings: Mapping[str, Any]) -> None:
        self._enter("create_index", name, dict(settings), dict(mappings))
        what = f"create {name}"
        if name in self.indices_:
            raise _error(400, "resource_already_exists_exception", f"index [{name}] already exists", what)
        if name in self.aliases:
            raise _error(
                400, "invalid_index_name_exception", f"Invalid index name [{name}], already exists as alias", what
            )
        flat = {"number_of_shards": "1", "number_of_replicas": "1"}
        flat.update({k: _setting_value(v) for k, v in settings.items() if v is not None})
        self.indices_[name] = FakeIndex(flat, copy.deepcopy(dict(mappings)))
        self._leave("create_index")

    def bulk(self, index: str, body: bytes) -> list[BulkFailure]:
        if not isinstance(body, bytes):
            raise TypeError(f"bulk bodies are bytes, not {type(body).__name__}")
        self._enter("bulk", index, len(body))
        self.bodies.append(body)
        lines = body.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        if len(lines) % 2:
            raise _error(400, "illegal_argument_exception", "The bulk request must be terminated by a newline", "bulk")
        failures: list[BulkFailure] = []
        for position in range(len(lines) // 2):
            action = json.loads(lines[2 * position])
            doc = json.loads(lines[2 * position + 1])
            op = action["index"]
            doc_id = str(op["_id"])
            target = op.get("_index", index)
            failure = self._index_one(target, doc_id, doc)
            if failure is not None:
                failures.append(BulkFailure(position, *failure))
        self._leave("bulk")
        return failures

    def _index_one(self, target: str, doc_id: str, doc: dict[str, Any]) -> tuple[int, str, str, str, str | None] | None:
        if self.busy_forever or self.busy > 0:
            self.busy = max(0, self.busy - 1)
            return (
                429,
                doc_id,
                "es_rejected_execution_exception",
                "rejected execution of coordinating operation",
                None,
            )
        if target in self.aliases:
            targets = sorted(self.aliases[target])
            if len(targets) != 1:
                reason = f"no write index is defined for alias [{target}]"
                return (400, doc_id, "illegal_argument_exception", reason, None)
            target = targets[0]
        if target not in self.indices_:  # auto-created, like action.auto_create_index=true
            self.indices_[target] = FakeIndex({"number_of_shards": "1", "number_of_replicas": "1"}, {})
        idx = self.indices_[target]
        if idx.write_blocked:
            reason = f"index [{target}] blocked by: [FORBIDDEN/8/index write (api)];"
            return (403, doc_id, "cluster_block_exception", reason, None)
        props = idx.mappings.get("properties", {})
        for field_name, value in doc.items():
            kind = props.get(field_name, {}).get("type")
            if kind in NUMERIC and value is not None and not _is_number(value):
                reason = (
                    f"failed to parse field [{field_name}] of type [{kind}] in document with id '{doc_id}'. "
                    f"Preview of field's value: '{value}'"
                )
                return (400, doc_id, "mapper_parsing_exception", reason, f'For input string: "{value}"')
        idx.docs[doc_id] = doc
        return None

    def put_settings(self, index: str, settings: Mapping[str, Any]) -> None:
        self._enter("put_settings", index, dict(settings))
        what = f"settings {index}"
        for name in self._resolve(index, what):
            flat = self.indices_[name].settings
            for k, v in settings.items():
                if v is None:
                    flat.pop(k, None)
                else:
                    flat[k] = _setting_value(v)
        self._leave("put_settings")

    def put_meta(self, index: str, meta: Mapping[str, Any]) -> None:
        self._enter("put_meta", index, copy.deepcopy(dict(meta)))
        for name in self._resolve(index, f"mapping _meta {index}"):
            self.indices_[name].mappings["_meta"] = copy.deepcopy(dict(meta))
        self._leave("put_meta")

    def refresh(self, index: str) -> None:
        self._enter("refresh", index)
        for name in self._resolve(index, f"refresh {index}"):
            self.indices_[name].visible = len(self.indices_[name].docs)
        self._leave("refresh")

    def count(self, index: str) -> int:
        self._enter("count", index)
        out = sum(self.indices_[n].seen() for n in self._resolve(index, f"count {index}"))
        self._leave("count")
        return out

    def update_aliases(self, actions: Sequence[AliasAction]) -> None:
        self._enter("update_aliases", tuple(actions))
        what = "update aliases"
        indices = dict(self.indices_)
        aliases = {a: set(t) for a, t in self.aliases.items()}
        # Like OpenSearch: indices are removed first, then the alias actions run in order,
        # on a copy that replaces the state only if every action applied.
        for a in actions:
            if isinstance(a, RemoveIndex):
                if a.index in aliases:
                    raise _error(400, "illegal_argument_exception", _matches_alias(a.index), what)
                if a.index not in indices:
                    raise _error(404, "index_not_found_exception", f"no such index [{a.index}]", what)
                del indices[a.index]
                for targets in aliases.values():
                    targets.discard(a.index)
        applied = sum(isinstance(a, RemoveIndex) for a in actions)
        for a in actions:
            if isinstance(a, AddAlias):
                if a.index not in indices:
                    raise _error(404, "index_not_found_exception", f"no such index [{a.index}]", what)
                if a.alias in indices:
                    reason = f"an index or data stream exists with the same name as the alias [{a.alias}]"
                    raise _error(400, "invalid_alias_name_exception", reason, what)
                aliases.setdefault(a.alias, set()).add(a.index)
                applied += 1
            elif isinstance(a, RemoveAlias):
                if a.index not in indices:
                    raise _error(404, "index_not_found_exception", f"no such index [{a.index}]", what)
                # Like OpenSearch: removing an alias the index does not have is dropped quietly...
                if a.index in aliases.get(a.alias, set()):
                    aliases[a.alias].discard(a.index)
                    applied += 1
        if not applied:  # ...unless nothing at all is left to do
            names = ",".join(a.alias for a in actions if isinstance(a, RemoveAlias))
            raise _error(404, "aliases_not_found_exception", f"aliases [{names}] missing", what)
        self.indices_ = indices
        self.aliases = {a: t for a, t in aliases.items() if t}
        self._leave("update_aliases")

    def clone_index(self, source: str, target: str) -> None:
        self._enter("clone_index", source, target)
        what = f"clone {source} to {target}"
        src = self._concrete(source, what)
        if not src.write_blocked:
            reason = f'index {source} must block write operations to resize index. use "index.blocks.write=true"'
            raise _error(500, "illegal_state_exception", reason, what)
        if target in self.indices_ or target in self.aliases:
            raise _error(400, "resource_already_exists_exception", f"index [{target}] already exists", what)
        docs = copy.deepcopy(src.docs)
        self.indices_[target] = FakeIndex(dict(src.settings), copy.deepcopy(src.mappings), docs, len(docs))
        self._leave("clone_index")

    def delete_index(self, name: str) -> None:
        self._enter("delete_index", name)
        what = f"delete {name}"
        if name in self.aliases and name not in self.indices_:
            raise _error(400, "illegal_argument_exception", _matches_alias(name), what)
        self._concrete(name, what)
        del self.indices_[name]
        for targets in self.aliases.values():
            targets.discard(name)
        self.aliases = {a: t for a, t in self.aliases.items() if t}
        self._leave("delete_index")

    def close(self) -> None:
        self.closed = True


def _matches_alias(name: str) -> str:
    return f"The provided expression [{name}] matches an alias, specify the corresponding concrete indices instead."


def _is_number(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return True
    try:
        float(str(value))
    except ValueError:
        return False
    return True


def bulk_item(doc: Mapping[str, Any], id_column: str = "id") -> bytes | None:
    """The bulk item PostgreSQL renders for a row (see ``p88backup.search.source.items_sql``)."""
    if doc.get(id_column) is None:
        return None
    action = json.dumps({"index": {"_id": str(doc[id_column])}}, separators=(",", ":"))
    return (action + "\n" + json.dumps(dict(doc), separators=(",", ":")) + "\n").encode()


class _ListSnapshot:
    def __init__(self, source: ListSource) -> None:
        self.source = source

    def count(self) -> int:
        return len(self.source.rows)

    def items(self, since: datetime | None) -> Iterator[bytes | None]:
        for i, row in enumerate(self.source.rows):
            if self.source.fail_at is not None and i == self.source.fail_at:
                raise self.source.failure
            if since is not None:
                stamp = row.get(self.source.updated_at_column or "")
                if stamp is None or datetime.fromisoformat(str(stamp)) < since:
                    continue
            yield bulk_item(row, self.source.id_column)


class ListSource:
    """Rows as dicts, rendered as PostgreSQL renders them; ``fail_at`` raises ``failure`` at that row."""

    def __init__(
        self,
        rows: Sequence[Mapping[str, Any]],
        *,
        id_column: str = "id",
        updated_at_column: str | None = "updated_at",
        fail_at: int | None = None,
        failure: BaseException | None = None,
    ) -> None:
        self.rows = [dict(r) for r in rows]
        self.id_column, self.updated_at_column = id_column, updated_at_column
        self.fail_at, self.failure = fail_at, failure or RuntimeError("the source failed")
        self.snapshots = 0
        self.open = 0

    @contextmanager
    def snapshot(self) -> Iterator[_ListSnapshot]:
        self.snapshots += 1
        self.open += 1
        try:
            yield _ListSnapshot(self)
        finally:
            self.open -= 1
