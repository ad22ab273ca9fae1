"""What one ``[[reindex]]`` table asks for: the alias, the SQL of its documents, mappings and settings."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p88backup.errors import ConfigError


def flat_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """{"index": {"a": 1}} or {"index.a": 1} or {"a": 1} -> {"a": 1} (index-level keys)."""
    out: dict[str, Any] = {}
    for k, v in settings.items():
        if k == "index" and isinstance(v, dict):
            out.update(flat_settings(v))
        else:
            out[k.removeprefix("index.")] = v
    return out


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
