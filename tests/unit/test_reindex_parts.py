"""Reindex's definition files and the SQL that renders rows as bulk items (no servers)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from p88backup.errors import ConfigError
from p88backup.search.definition import IndexDefinition, flat_settings
from p88backup.search.source import count_sql, items_sql


def test_flat_settings() -> None:
    assert flat_settings({"index": {"number_of_shards": 3, "refresh_interval": "5s"}}) == {
        "number_of_shards": 3,
        "refresh_interval": "5s",
    }
    assert flat_settings({"index.number_of_replicas": 0, "analysis": {"x": 1}}) == {
        "number_of_replicas": 0,
        "analysis": {"x": 1},
    }


def test_definition_accepts_bare_mappings_or_a_create_body(tmp_path: Path) -> None:
    bare = tmp_path / "m.json"
    bare.write_text(json.dumps({"properties": {"t": {"type": "text"}}}))
    d = IndexDefinition.load("docs", "SELECT 1", "id", None, bare, None)
    assert d.mappings == {"properties": {"t": {"type": "text"}}} and d.settings == {}
    body = tmp_path / "b.json"
    body.write_text(json.dumps({"settings": {"number_of_shards": 2}, "mappings": {"properties": {}}}))
    d = IndexDefinition.load("docs", "SELECT 1", "id", None, body, None)
    assert d.settings == {"number_of_shards": 2} and d.mappings == {"properties": {}}
    with pytest.raises(ConfigError, match="cannot read"):
        IndexDefinition.load("docs", "SELECT 1", "id", None, tmp_path / "missing.json", None)
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(ConfigError, match="must hold a JSON object"):
        IndexDefinition.load("docs", "SELECT 1", "id", None, tmp_path / "list.json", None)


QUERY = "SELECT id, title FROM documents WHERE title LIKE 'a%'"
ITEM = (
    'SELECT \'{"index":{"_id":\' || to_json((q."Doc Id")::text)::text || E\'}}\\n\''
    " || row_to_json(q)::text || E'\\n' FROM (QUERY) q"
)


@pytest.mark.parametrize(
    ("since", "expected"),
    [
        (False, ITEM.replace("QUERY", QUERY)),
        # --since: a parameter, so a literal % in the query is doubled (psycopg would read a placeholder)
        (True, ITEM.replace("QUERY", QUERY.replace("%", "%%")) + ' WHERE q."changed at" >= %s'),
    ],
)
def test_items_sql(since: bool, expected: str) -> None:
    d = IndexDefinition("docs", QUERY, "Doc Id", "changed at")
    assert items_sql(d, since=since).as_string(None) == expected


def test_items_sql_since_needs_the_column() -> None:
    with pytest.raises(ConfigError, match="no updated_at_column"):
        items_sql(IndexDefinition("docs", QUERY), since=True)


def test_count_sql_counts_the_same_query() -> None:
    assert count_sql(IndexDefinition("docs", QUERY)).as_string(None) == f"SELECT count(*) FROM ({QUERY}) q"
