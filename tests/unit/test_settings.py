"""Settings: environment over TOML over defaults, one clear line per bad value."""

from __future__ import annotations

from pathlib import Path

import pytest

from p88backup.errors import ConfigError
from p88backup.settings import load_settings

TOML = """
database_url = "postgresql://backup:file-secret@db:5432/p88"
storage_url = "s3://p88-backups/prod"
opensearch_url = "http://search:9200"
age_identity_file = "keys/backup.key"

[retention]
keep_daily = 3
keep_weekly = 2

[dump]
databases = ["p88", "p88_audit"]

[[reindex]]
index = "documents"
query = "SELECT id, title FROM documents"
updated_at_column = "updated_at"
mappings = "documents.mappings.json"

[[drill.checks]]
name = "recent orders"
sql = "SELECT true"

[schedule]
dump = "15 2 * * *"
"""


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for key in list(os.environ):
        if key.startswith("P88_"):
            monkeypatch.delenv(key)


def write(tmp_path: Path, text: str = TOML) -> Path:
    path = tmp_path / "p88backup.toml"
    path.write_text(text)
    return path


def test_defaults_without_file() -> None:
    s = load_settings(None)
    assert s.storage_url == "file:///var/backups/p88"
    assert s.retention.keep_daily == 7 and s.dump.format == "custom" and s.reindex == []


def test_file_values_and_relative_paths(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path))
    assert s.storage_url == "s3://p88-backups/prod"
    assert s.retention.keep_daily == 3 and s.retention.keep_monthly == 6
    assert s.dump.databases == ["p88", "p88_audit"]
    assert s.age_identity_file == tmp_path / "keys/backup.key"
    assert s.reindex[0].mappings == tmp_path / "documents.mappings.json"
    assert s.drill.checks[0].name == "recent orders"
    assert s.schedule.dump == "15 2 * * *"


def test_environment_wins_and_merges_with_file_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P88_STORAGE_URL", "file:///srv/backups")
    monkeypatch.setenv("P88_RETENTION__KEEP_WEEKLY", "9")
    monkeypatch.setenv("P88_AGE_RECIPIENTS", "age1aaa, age1bbb")
    monkeypatch.setenv("P88_DUMP__DATABASES", "one two")
    s = load_settings(write(tmp_path))
    assert s.storage_url == "file:///srv/backups"
    assert s.retention.keep_weekly == 9
    assert s.age_recipients == ["age1aaa", "age1bbb"]
    assert s.dump.databases == ["one", "two"]


@pytest.mark.parametrize(
    ("env", "value", "message"),
    [
        ("P88_RETENTION__KEEP_DAILY", "lots", "retention.keep_daily (env P88_RETENTION__KEEP_DAILY)"),
        ("P88_RETENTION__KEEP_DAILY", "-1", "greater than or equal to 0"),
        ("P88_STORAGE_URL", "ftp://x", "must start with file://, s3:// or memory://"),
        ("P88_STORAGE_URL", "file://relative", "absolute path"),
        ("P88_STORAGE_URL", "s3:///nobucket", "needs a bucket"),
        ("P88_DATABASE_URL", "mysql://x", "libpq URL"),
        ("P88_COMPRESSION_LEVEL", "99", "compression_level"),
        ("P88_AGE_RECIPIENTS", "AGE-SECRET-KEY-1XYZ", "public keys"),
        ("P88_DUMP__FORMAT", "tar", "dump.format"),
    ],
)
def test_bad_values_name_the_field(monkeypatch: pytest.MonkeyPatch, env: str, value: str, message: str) -> None:
    monkeypatch.setenv(env, value)
    with pytest.raises(ConfigError) as err:
        load_settings(None)
    assert message in str(err.value)
    assert value not in str(err.value) or value in message  # the value itself is never echoed


def test_bad_value_never_echoes_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P88_DATABASE_URL", "mysql://u:hunter2-secret@h/db")
    with pytest.raises(ConfigError) as err:
        load_settings(None)
    assert "hunter2" not in str(err.value)


def test_unknown_key_in_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="retention.keep_daly"):
        load_settings(write(tmp_path, "[retention]\nkeep_daly = 3\n"))


def test_toml_syntax_error_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_settings(write(tmp_path, "[oops"))
    with pytest.raises(ConfigError, match="config file not found"):
        load_settings(tmp_path / "nope.toml")


def test_redacted_view_hides_the_password(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path))
    data = s.redacted()
    assert data["database_url"] == "postgresql://backup:***@db:5432/p88"
    assert "file-secret" not in repr(data)
    assert s.secrets == ["file-secret"]


def test_every_libpq_secret_in_the_url_is_a_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "P88_DATABASE_URL", "postgresql://backup@db/p88?password=q-secret%21&sslpassword=key-secret&sslmode=require"
    )
    s = load_settings(None)
    assert {"q-secret%21", "q-secret!", "key-secret"} <= set(s.secrets)
    shown = repr(s.redacted())
    assert "q-secret" not in shown and "key-secret" not in shown
    assert "password=***" in shown and "sslpassword=***" in shown and "sslmode=require" in shown


def test_status_thresholds_and_the_retired_segment_size(tmp_path: Path) -> None:
    s = load_settings(write(tmp_path, '[status]\nmax_dump_age = "26h"\nmax_wal_age = "15m"\n'))
    assert s.status.seconds("max_dump_age") == 26 * 3600 and s.status.seconds("max_basebackup_age") is None
    with pytest.raises(ConfigError, match="wal.segment_size_mb .*no longer a setting"):
        load_settings(write(tmp_path, "[wal]\nsegment_size_mb = 64\n"))
