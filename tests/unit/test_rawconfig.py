"""The archive fast path reads the same settings, with the same precedence, as the full CLI."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p88backup.rawconfig import ArchiveConfig, load_archive_config
from p88backup.settings import load_settings

FIELDS = [f for f in ArchiveConfig.__dataclass_fields__]

CASES = {
    "defaults": ({}, ""),
    "file only": (
        {},
        'storage_url = "s3://b/p"\nage_recipients = ["age1x", "age1y"]\ncompression_level = 9\n'
        'age_identity_file = "keys/k.txt"\nretry_deadline_seconds = 5.5\n',
    ),
    "env wins": (
        {"P88_STORAGE_URL": "file:///srv/x", "P88_COMPRESSION_THREADS": "2", "P88_AGE_RECIPIENTS": "age1a,age1b"},
        'storage_url = "s3://b/p"\ncompression_threads = 1\n',
    ),
    "env relative path": ({"P88_AGE_RECIPIENTS_FILE": "rec.txt"}, ""),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fast_reader_agrees_with_settings(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, toml = CASES[case]
    for key in list(os.environ):
        if key.startswith("P88_"):
            monkeypatch.delenv(key)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(tmp_path)
    cfg = None
    if toml:
        cfg = tmp_path / "p88.toml"
        cfg.write_text(toml)
    full = load_settings(cfg)
    fast = load_archive_config(cfg)
    for name in FIELDS:
        assert getattr(fast, name) == getattr(full, name), name
