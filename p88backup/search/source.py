"""Where reindex's documents come from: one PostgreSQL snapshot, rendered as ``_bulk`` items.

PostgreSQL renders each whole bulk item (action line + document line) as
JSON text; the items reach the adapter as the UTF-8 bytes the server sent,
never decoded or re-encoded in Python (DESIGN §6: reindex within 0.8 x of
posting pre-built NDJSON). The row count and the rows come from the same
repeatable-read snapshot, so the count check compares like with like.

:class:`DocumentSource` is what :class:`~p88backup.search.reindex.Reindexer`
needs; the unit tests give it a list of documents instead of a database.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from datetime import datetime
from operator import itemgetter
from typing import Any, Protocol

from p88backup.errors import ConfigError, DatabaseError, SearchError
from p88backup.pg.conn import ConnInfo, first_line
from p88backup.search.definition import IndexDefinition


class Snapshot(Protocol):
    def count(self) -> int:
        """Rows of the definition's query."""
        ...

    def items(self, since: datetime | None) -> Iterator[bytes | None]:
        """One ``_bulk`` item per row (action line and document, each ending in a newline), or
        ``None`` for a row without an id; with ``since``, only rows updated at or after it."""
        ...


class DocumentSource(Protocol):
    def snapshot(self) -> AbstractContextManager[Snapshot]: ...


def items_sql(d: IndexDefinition, *, since: bool) -> Any:
    """The query that renders each row as one bulk item (psycopg ``Composed``; ``%s`` = since)."""
    from psycopg import sql

    # A NULL id makes the whole item NULL: the loader stops there with the column's name.
    text = sql.SQL(
        "SELECT '{{\"index\":{{\"_id\":' || to_json(({id})::text)::text || E'}}}}\\n'"
        " || row_to_json(q)::text || E'\\n' FROM ({query}) q"
    ).format(
        id=sql.SQL("q.") + sql.Identifier(d.id_column),
        # with a parameter (--since) psycopg reads % as a placeholder: a LIKE '%x' must survive
        query=sql.SQL(d.query.replace("%", "%%") if since else d.query),
    )
    if since:
        if not d.updated_at_column:
            raise ConfigError(f"index {d.alias!r} has no updated_at_column: --since needs one")
        text += sql.SQL(" WHERE q.") + sql.Identifier(d.updated_at_column) + sql.SQL(" >= %s")
    return text


def count_sql(d: IndexDefinition) -> Any:
    from psycopg import sql

    return sql.SQL("SELECT count(*) FROM ({query}) q").format(query=sql.SQL(d.query))


class _PgSnapshot:
    def __init__(self, conn: Any, d: IndexDefinition, fetch_rows: int) -> None:
        self.conn, self.d, self.fetch_rows = conn, d, fetch_rows

    def count(self) -> int:
        return int(self.conn.execute(count_sql(self.d)).fetchone()[0])

    def items(self, since: datetime | None) -> Iterator[bytes | None]:
        from psycopg.adapt import Loader

        class RawText(Loader):
            """Items stay the UTF-8 bytes the server sent: no decode here, no encode to post."""

            def load(self, data: Any) -> bytes:
                return bytes(data)

        query = items_sql(self.d, since=since is not None)
        try:
            with self.conn.cursor(name="p88reindex") as cur:
                cur.adapters.register_loader("text", RawText)
                cur.itersize = self.fetch_rows
                cur.execute(query, (since,) if since is not None else None)
                yield from map(itemgetter(0), cur)
        except (SearchError, ConfigError):
            raise
        except Exception as exc:
            if type(exc).__module__.startswith("psycopg"):
                raise DatabaseError(f"reading rows for {self.d.alias}: {first_line(exc)}") from None
            raise


class PgSource:
    """The rows of ``definition.query`` in the database of ``ci``."""

    def __init__(self, ci: ConnInfo, definition: IndexDefinition, *, fetch_rows: int = 5000) -> None:
        self.ci, self.d, self.fetch_rows = ci, definition, fetch_rows

    @contextmanager
    def snapshot(self) -> Iterator[Snapshot]:
        conn = self.ci.connect(autocommit=False)
        try:
            try:
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            except Exception as exc:
                raise DatabaseError(f"cannot open a snapshot: {first_line(exc)}") from None
            yield _PgSnapshot(conn, self.d, self.fetch_rows)
        finally:
            try:
                conn.rollback()
            except Exception:  # a broken connection: closing is all that is left to do
                pass
            conn.close()
