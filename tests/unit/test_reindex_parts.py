from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from p88backup.errors import ConfigError
from p88backup.search.reindex import IndexDefinition, Reindexer, _flat, parse_since


def test_flat_settings() -> None:
    assert _flat({"index": {"number_of_shards": 3, "refresh_interval": "5s"}}) == {
        "number_of_shards": 3,
        "refresh_interval": "5s",
    }
    assert _flat({"index.number_of_replicas": 0, "analysis": {"x": 1}}) == {
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


def test_parse_since() -> None:
    assert parse_since("2026-11-27T02:00:00Z") == datetime(2026, 11, 27, 2, tzinfo=UTC)
    with pytest.raises(ConfigError, match="no time zone"):
        parse_since("2026-11-27T02:00:00")
    with pytest.raises(ConfigError, match="ISO-8601"):
        parse_since("last tuesday")


def test_index_names_order_by_build_time() -> None:
    names = [
        "docs-20261127t020000z-2",
        "docs-20261126t020000z",
        "docs-legacy-20261127t020000z",
        "docs-20261127t020000z",
    ]
    assert sorted(names, key=Reindexer._age_key) == [
        "docs-20261126t020000z",
        "docs-legacy-20261127t020000z",
        "docs-20261127t020000z",
        "docs-20261127t020000z-2",
    ]
