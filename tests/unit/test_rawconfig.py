"""One settings contract: the archive fast path (rawconfig) and Settings (pydantic) read the
same input the same way, accept the same files and reject the same mistakes with the same
message, and rawconfig's SCHEMA is held equal to the Settings fields."""

from __future__ import annotations

import os
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
import pytest
from pydantic import BaseModel

from p88backup.errors import ConfigError
from p88backup.rawconfig import (
    ARCHIVE_FIELDS,
    SCHEMA,
    ArchiveConfig,
    Setting,
    Table,
    env_names,
    load_archive_config,
    unknown_env,
)
from p88backup.settings import Settings, load_settings

FIELDS = list(ArchiveConfig.__dataclass_fields__)


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for key in list(os.environ):
        if key.lower().startswith("p88_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)


def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, env: dict[str, str], toml: str) -> Path | None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    if not toml:
        return None
    cfg = tmp_path / "p88.toml"
    cfg.write_text(toml)
    return cfg


# -- both readers give the same answers ------------------------------------------

GOOD = {
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
    "env names are case-insensitive": ({"p88_storage_url": "file:///lower", "P88_Compression_Level": "7"}, ""),
    "every table of the contract": (
        {"P88_RETENTION__KEEP_DAILY": "3", "P88_DUMP__GLOBALS": "no", "P88_STATUS__MAX_WAL_AGE": "15m"},
        """
storage_url = "file:///srv/b"
retry_deadline_seconds = 10
[retention]
keep_weekly = 2
base_backup_window_days = 1.5
[dump]
databases = "a, b"
format = "directory"
[wal]
slot_name = "p88_slot"
[[reindex]]
index = "documents"
query = "SELECT 1"
mappings = "m.json"
[[drill.checks]]
name = "n"
sql = "SELECT true"
[drill]
port_range = [6000, 6100]
[schedule]
dump = "15 2 * * *"
[status]
max_dump_age = "26h"
max_basebackup_age = "8d"
max_drill_age = "1d12h"
""",
    ),
    "a whole table as JSON in the environment, with a variable inside it winning": (
        {"P88_RETENTION": '{"keep_daily": 3, "keep_weekly": 2}', "P88_RETENTION__KEEP_WEEKLY": "9"},
        "",
    ),
    "variables naming no setting are ignored, as pydantic-settings does": (
        {"P88_CONFIG": "/nowhere.toml", "P88_BOGUS": "1", "P88_TEST_PG_PORT": "5"},
        "",
    ),
}


@pytest.mark.parametrize("case", list(GOOD))
def test_fast_reader_agrees_with_settings(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, toml = GOOD[case]
    cfg = setup(tmp_path, monkeypatch, env, toml)
    full = load_settings(cfg)
    fast = load_archive_config(cfg)
    for name in FIELDS:
        assert getattr(fast, name) == getattr(full, name), name


def test_settings_see_every_table_value(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env, toml = GOOD["every table of the contract"]
    s = load_settings(setup(tmp_path, monkeypatch, env, toml))
    assert (s.retention.keep_daily, s.retention.keep_weekly, s.retention.base_backup_window_days) == (3, 2, 1.5)
    assert s.dump.databases == ["a", "b"] and s.dump.format == "directory" and s.dump.globals is False
    assert s.reindex[0].mappings == tmp_path / "m.json"
    assert s.drill.port_range == (6000, 6100) and s.drill.checks[0].name == "n"
    assert s.status.max_dump_age == "26h" and s.status.max_wal_age == "15m"
    assert s.status.seconds("max_basebackup_age") == 8 * 86400 and s.status.seconds("max_drill_age") == 36 * 3600
    s = load_settings(
        setup(
            tmp_path, monkeypatch, *GOOD["a whole table as JSON in the environment, with a variable inside it winning"]
        )
    )
    assert (s.retention.keep_daily, s.retention.keep_weekly) == (3, 9)


# -- ... and reject the same mistakes with the same message ----------------------

BAD: dict[str, tuple[dict[str, str], str, str]] = {
    # name: (env, toml, expected message)
    "misspelt key": ({}, 'storag_url = "file:///srv/x"\n', "unknown setting storag_url (in p88.toml)"),
    "misspelt age_recipients": (
        {},
        'age_recipient = ["age1abc"]\n',
        "unknown setting age_recipient (in p88.toml)",
    ),
    "unknown key in a table": ({}, "[retention]\nkeep_daly = 3\n", "unknown setting retention.keep_daly"),
    "unknown key in a list of tables": (
        {},
        '[[reindex]]\nindex = "d"\nqurey = "SELECT 1"\n',
        "unknown setting reindex.0.qurey",
    ),
    "unknown key in drill checks": (
        {},
        '[[drill.checks]]\nnme = "x"\nsql = "s"\n',
        "unknown setting drill.checks.0.nme",
    ),
    "unknown table": ({}, "[retension]\nkeep_daily = 3\n", "unknown setting retension"),
    "retired wal.segment_size_mb": ({}, "[wal]\nsegment_size_mb = 16\n", "the WAL segment size is no longer a setting"),
    "compression level out of range": (
        {},
        "compression_level = 99\n",
        "invalid setting compression_level (env P88_COMPRESSION_LEVEL): must be less than or equal to 19",
    ),
    "negative retry deadline": (
        {},
        "retry_deadline_seconds = -5\n",
        "invalid setting retry_deadline_seconds (env P88_RETRY_DEADLINE_SECONDS): must be greater than 0",
    ),
    "infinite retry deadline": ({"P88_RETRY_DEADLINE_SECONDS": "inf"}, "", "must be a finite number"),
    "relative file URL": ({}, 'storage_url = "file://relative"\n', "file:// URL needs an absolute path"),
    "unknown storage scheme": ({"P88_STORAGE_URL": "ftp://x"}, "", "must start with file://, s3:// or memory://"),
    "a private key as recipient": ({"P88_AGE_RECIPIENTS": "AGE-SECRET-KEY-1XYZ"}, "", "public keys"),
    "string for an integer": (
        {},
        'compression_level = "5"\n',
        "compression_level (env P88_COMPRESSION_LEVEL): must be an integer",
    ),
    "float for an integer": ({"P88_COMPRESSION_LEVEL": "5.0"}, "", "must be an integer"),
    "bad bool": ({"P88_DUMP__GLOBALS": "maybe"}, "", "dump.globals (env P88_DUMP__GLOBALS): must be true or false"),
    "bad choice": (
        {},
        '[dump]\nformat = "tar"\n',
        "dump.format (env P88_DUMP__FORMAT): must be one of custom, directory",
    ),
    "a slot name with a line break": (
        {"P88_WAL__SLOT_NAME": "p88backup\n"},
        "",
        "wal.slot_name (env P88_WAL__SLOT_NAME)",
    ),
    "bad duration": ({}, '[status]\nmax_dump_age = "26 hours"\n', "status.max_dump_age (env P88_STATUS__MAX_DUMP_AGE)"),
    "unknown key in a table, from the environment": (
        {"P88_RETENTION__KEEP_DALY": "3"},
        "",
        "unknown setting retention.keep_daly (env P88_RETENTION__KEEP_DALY)",
    ),
    "a table that is not JSON": ({"P88_RETENTION": "keep_daily=3"}, "", "retention (env P88_RETENTION): must be JSON"),
    "a list of tables item by item": ({"P88_REINDEX__0__INDEX": "docs-index"}, "", "give it whole, as JSON"),
    "a table that is a value": ({}, "retention = 7\n", "retention (env P88_RETENTION): must be a table"),
    "a required key missing": ({}, '[[reindex]]\nindex = "d"\n', "reindex.0.query (env P88_REINDEX): is required"),
    "an empty path": ({}, 'age_identity_file = ""\n', "must be a non-empty path"),
    "a port range upside down": ({}, "[drill]\nport_range = [6100, 6000]\n", "drill.port_range"),
    "a TOML syntax error": ({}, "[oops", "cannot read config file p88.toml"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_both_readers_reject_the_same_mistakes_alike(
    case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env, toml, message = BAD[case]
    setup(tmp_path, monkeypatch, env, toml)
    cfg = Path("p88.toml") if toml else None  # as a user types it: messages name it that way
    with pytest.raises(ConfigError) as full:
        load_settings(cfg)
    with pytest.raises(ConfigError) as fast:
        load_archive_config(cfg)
    assert str(fast.value) == str(full.value) and fast.value.hint == full.value.hint
    assert message in str(full.value)
    for value in env.values():
        assert value not in str(full.value) or value in message  # values are never echoed


def test_a_misspelt_key_says_what_was_meant(tmp_path: Path) -> None:
    (tmp_path / "p88.toml").write_text('[dump]\nformt = "custom"\n')
    with pytest.raises(ConfigError) as err:
        load_archive_config(tmp_path / "p88.toml")
    assert err.value.hint == "did you mean format?"


def test_a_missing_config_file(tmp_path: Path) -> None:
    for reader in (load_settings, load_archive_config):
        with pytest.raises(ConfigError, match="config file not found: nope.toml"):
            reader(Path("nope.toml"))


# -- the schema is the Settings contract, field by field --------------------------


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(model class, is a list of them) for a field annotation, or (None, False)."""
    origin = typing.get_origin(annotation)
    if origin is list:
        (inner,) = typing.get_args(annotation)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            return inner, True
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    return None, False


def _kind_of(annotation: Any) -> tuple[set[str], bool]:
    """Which rawconfig kinds fit a pydantic annotation, and whether it takes None."""
    args = typing.get_args(annotation)
    nullable = typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args
    if nullable:
        (annotation,) = [a for a in args if a is not type(None)]
    if typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return {"choice"}, nullable
    if origin is list and typing.get_args(annotation) == (str,):
        return {"words"}, nullable
    if origin is tuple and typing.get_args(annotation) == (int, int):
        return {"intpair"}, nullable
    kinds = {str: {"str"}, int: {"int"}, float: {"float"}, bool: {"bool"}, Path: {"path", "searchpath"}}
    return kinds[annotation], nullable


def _compare(table: Table, model: type[BaseModel], where: str) -> None:
    names = [item.name for item in table.items]
    assert sorted(names) == sorted(model.model_fields), f"{where or 'top level'}: schema and Settings differ"
    for item in table.items:
        info = model.model_fields[item.name]
        here = f"{where}{item.name}"
        sub, many = _model_of(info.annotation)
        if isinstance(item, Table):
            assert sub is not None and many == item.many, here
            _compare(item, sub, here + ".")
            continue
        assert isinstance(item, Setting) and sub is None, here
        kinds, nullable = _kind_of(info.annotation)
        assert item.kind in kinds and item.nullable == nullable, here
        if info.is_required():
            assert item.required, here
        else:
            assert item.make_default() == info.get_default(call_default_factory=True), here
        bounds = {"ge": None, "gt": None, "le": None}
        pattern = None
        for m in info.metadata:
            for name in bounds:
                if isinstance(m, getattr(annotated_types, name.capitalize())):
                    bounds[name] = getattr(m, name)
            pattern = getattr(m, "pattern", pattern)
        assert (item.ge, item.gt, item.le) == (bounds["ge"], bounds["gt"], bounds["le"]), here
        assert item.pattern == pattern, here
        if item.kind == "choice":
            choices = typing.get_args(info.annotation)
            assert item.choices == choices, here


def test_schema_is_the_settings_contract() -> None:
    _compare(SCHEMA, Settings, "")


def test_the_fast_path_defaults_are_the_schema_s() -> None:
    assert tuple(FIELDS) == ARCHIVE_FIELDS
    defaults = ArchiveConfig()
    for name in ARCHIVE_FIELDS:
        spec = SCHEMA.get(name)
        assert isinstance(spec, Setting)
        assert getattr(defaults, name) == spec.make_default(), name


# -- P88_ variables that set nothing ---------------------------------------------
# Before: read_config ignored them without a word, so P88_STATUS_MAX_DUMP_AGE=26h (one underscore
# for two) left the dump's age unchecked and P88_SCHEDULE_DRILL=off let the drill run.


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, []),
        ({"P88_STATUS_MAX_DUMP_AGE": "26h"}, [("P88_STATUS_MAX_DUMP_AGE", "P88_STATUS__MAX_DUMP_AGE")]),
        ({"P88_SCHEDULE_DRILL": "off"}, [("P88_SCHEDULE_DRILL", "P88_SCHEDULE__DRILL")]),
        ({"p88_storage_ur": "file:///x"}, [("p88_storage_ur", "P88_STORAGE_URL")]),
        ({"P88_METRICS_TEXT_FILE": "/x.prom"}, [("P88_METRICS_TEXT_FILE", "P88_METRICS_TEXTFILE")]),
        ({"P88_BOGUS": "1"}, [("P88_BOGUS", None)]),  # nothing close: no made-up hint
        # settings, whole tables, any case: known
        ({"P88_STORAGE_URL": "x", "p88_retention": "{}", "P88_Status__Max_Wal_Age": "15m", "P88_REINDEX": "[]"}, []),
        # an unknown key inside a known table is the reader's error already, not a warning
        ({"P88_RETENTION__KEEP_DALY": "3"}, []),
        # the project's own variables that are not settings, and others' variables
        (
            {
                "P88_CONFIG": "/etc/p88.toml",
                "P88_CACHE": "/var/cache/p88backup",
                "P88_PYTHON": "/usr/bin/python3",
                "P88_SERVICES_DIR": "/tmp/s",
                "P88_BACKUP_PASSWORD": "s3cret",
                "P88_MONITOR_PASSWORD": "s3cret",
                "P88_TEST_PG_PORT": "5432",
                "P88_TEST_S3_ENDPOINT": "http://x",
                "PGPASSWORD": "x",
                "XP88_THING": "x",
            },
            [],
        ),
    ],
)
def test_unknown_variables_and_what_was_meant(environ: dict[str, str], expected: list[tuple[str, str | None]]) -> None:
    assert unknown_env(environ) == expected


def test_every_variable_the_deployment_files_use_is_known() -> None:
    """The allow-list follows the repository: a new P88_ variable in compose/, cron/, scripts/, the
    docs or the test harness is either a setting or listed in NOT_SETTINGS, or this fails."""
    import re
    import subprocess

    from tests.harness.helpers import REPO

    paths = ["compose", "cron", "scripts", "docs", "README.md", ".ci", "bench", "tests/harness", "tests/conftest.py"]
    files = subprocess.run(
        ["git", "ls-files", "-z", *paths], cwd=REPO, capture_output=True, check=True, timeout=60
    ).stdout.split(b"\0")
    used = set()
    for name in filter(None, files):
        path = REPO / name.decode()
        if path.is_file():
            used |= set(re.findall(r"\bP88_[A-Za-z0-9_]*[A-Za-z0-9]\b", path.read_text(errors="replace")))
    assert "P88_BACKUP_PASSWORD" in used and "P88_STORAGE_URL" in used  # the scan sees both kinds
    assert unknown_env(dict.fromkeys(used, "x")) == []


def test_env_names_are_the_variables_of_every_setting() -> None:
    names = set(env_names())
    assert {"P88_STORAGE_URL", "P88_RETENTION", "P88_RETENTION__KEEP_DAILY", "P88_STATUS__MAX_DUMP_AGE"} <= names
    assert {"P88_REINDEX", "P88_DRILL__CHECKS", "P88_SCHEDULE__LISTEN"} <= names
    assert not any(n.startswith("P88_REINDEX__") or n.startswith("P88_DRILL__CHECKS__") for n in names)


def test_settings_warn_once_per_unknown_variable_with_the_hint(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import p88backup.settings as settings_module

    monkeypatch.setattr(settings_module, "_WARNED", set())
    monkeypatch.setenv("P88_STATUS_MAX_DUMP_AGE", "26h")
    monkeypatch.setenv("P88_SCHEDULE_DRILL", "off")
    with caplog.at_level("WARNING", logger="p88backup.settings"):
        s = load_settings(None)
        load_settings(None)  # loaded again (after a failure, cli.main does): no second warning
    assert s.status.max_dump_age is None and s.schedule.drill != "off"  # ignored, as before, but said
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "environment variable P88_SCHEDULE_DRILL is not a p88backup setting and is ignored: "
        "did you mean P88_SCHEDULE__DRILL?",
        "environment variable P88_STATUS_MAX_DUMP_AGE is not a p88backup setting and is ignored: "
        "did you mean P88_STATUS__MAX_DUMP_AGE?",
    ]


def test_commands_warn_and_the_archive_fast_path_stays_quiet(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.harness.helpers import REPO, cli_env, init_storage, run_cli

    env = cli_env(tmp_path, P88_STORAGE_URL=f"file://{tmp_path}/store", P88_STATUS_MAX_DUMP_AGE="26h")
    init_storage(env)
    r = run_cli(["--log-format", "json", "status"], env, timeout=60)
    assert r.returncode == 0, r.stderr
    warned = [line for line in r.stderr.splitlines() if "is not a p88backup setting" in line]
    assert len(warned) == 1 and '"did_you_mean": "P88_STATUS__MAX_DUMP_AGE"' in warned[0]
    assert "26h" not in warned[0]  # a value is never logged: it may be a secret

    segment = tmp_path / "000000010000000000000001"
    segment.write_bytes(b"\0" * 16)  # not a WAL segment: wal-push refuses it, after reading the settings
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "p88backup", "wal-push", str(segment)],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode != 0
    assert "is not a p88backup setting" not in r.stderr
    imported = {ln.split("|")[-1].strip() for ln in r.stderr.splitlines() if ln.startswith("import time:")}
    assert imported and not imported & {"difflib", "p88backup.settings"}
