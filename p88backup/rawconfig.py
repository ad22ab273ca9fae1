"""The settings contract, and the one reader of the environment and the TOML file.

:data:`SCHEMA` describes every setting without pydantic: name, kind, bounds,
default, nested tables (DESIGN §2). :func:`read_config` reads ``P88_*``
variables and the TOML file against it and is the only code that does:

* :func:`p88backup.settings.load_settings` (every Click command) builds its
  pydantic ``Settings`` from what :func:`read_config` returns;
* ``wal-push``/``wal-fetch`` (:func:`load_archive_config`) take the few flat
  settings they need from the same answer, without importing pydantic: they
  run once per WAL segment and must start in milliseconds (DESIGN §6).

So both paths accept the same files and reject the same mistakes with the
same message: an unknown key anywhere in the file (``storag_url``, a
misspelt ``age_recipients``...), a value of the wrong type, out of range or
malformed. ``tests/unit/test_rawconfig.py`` holds :data:`SCHEMA` equal to the
``Settings`` fields (names, kinds, defaults, bounds) and runs one table of bad
inputs through both readers.

Environment variables follow pydantic-settings' rules, which the ``Settings``
class always had: names are case-insensitive, ``__`` nests
(``P88_RETENTION__KEEP_DAILY``), a table or list of tables may also be given
whole as JSON (``P88_REINDEX='[...]'``), lists of words are comma or space
separated, environment wins over the file, tables merge key by key. A
``P88_`` variable naming no setting at all is not an error (``P88_CONFIG`` is
the file's own variable; the compose files, setup and test harnesses use
others) but it is no setting either: :func:`unknown_env` lists those that are
not the project's own (:data:`NOT_SETTINGS`), with the setting probably meant
(``P88_STATUS_MAX_DUMP_AGE`` -> ``P88_STATUS__MAX_DUMP_AGE``), and every Click
command logs a warning for each; the archive fast path stays quiet. An
unknown key *inside* a known table is an error.

Standard library only; ``json`` and ``tomllib`` only when there is something
to parse.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p88backup.errors import ConfigError

ENV_PREFIX = "P88_"
STORAGE_SCHEMES = ("file", "s3", "memory")
# The spellings pydantic accepts for a bool in a string (environment variables).
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_INT_RE = re.compile(r"\s*[+-]?[0-9]+\s*")

# -- checks shared with settings.py (which calls them from its validators) ------


def check_storage_url(value: str) -> str | None:
    """The problem with a storage URL, or None."""
    scheme, sep, rest = value.partition("://")
    if not sep or scheme not in STORAGE_SCHEMES:
        return "must start with file://, s3:// or memory://"
    if scheme == "s3" and not rest.split("/", 1)[0]:
        return "s3:// URL needs a bucket: s3://bucket/prefix"
    if scheme == "file" and not rest.startswith("/"):
        return "file:// URL needs an absolute path: file:///var/backups/p88"
    return None


def check_database_url(value: str) -> str | None:
    if not value.startswith(("postgresql://", "postgres://")):
        return "must be a libpq URL: postgresql://user@host:port/dbname"
    return None


def check_recipient(value: str) -> str | None:
    if not value.startswith(("age1", "ssh-")):
        return "age recipients are public keys starting with age1 or ssh-"
    return None


def check_port_range(value: tuple[int, int]) -> str | None:
    lo, hi = value
    if not 1 <= lo <= hi <= 65535:
        return "must be two ports [first, last] with 1 <= first <= last <= 65535"
    return None


def check_schedule(value: str) -> str | None:
    """A ``[schedule]`` job: ``off`` or a cron expression (see :mod:`p88backup.schedule.cron`)."""
    from p88backup.schedule.cron import check_schedule as check  # stdlib only; when a schedule is given

    return check(value)


def check_listen(value: str) -> str | None:
    """``HOST:PORT`` for the scheduler's HTTP server (``0.0.0.0:9188``, ``127.0.0.1:9188``, ``[::]:9188``)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 1 <= int(port) <= 65535:
        return "must be HOST:PORT with a port from 1 to 65535, e.g. 0.0.0.0:9188"
    if host.startswith("[") != host.endswith("]") or (":" in host and not host.startswith("[")):
        return "an IPv6 address goes in brackets: [::]:9188"
    return None


def split_words(value: str) -> list[str]:
    """``"a, b c"`` -> ``["a", "b", "c"]`` (lists of words in the environment)."""
    return [w for w in value.replace(",", " ").split() if w]


def _matches(pattern: str, text: str) -> bool:
    """``^...$`` as pydantic means it: the whole text (Python's ``$`` also allows a final newline)."""
    return re.fullmatch(pattern.removeprefix("^").removesuffix("$"), text) is not None


def check_duration(value: str) -> str | None:
    """Durations are read by :func:`p88backup.times.parse_duration`, like every duration typed."""
    from p88backup.times import TimeFormatError, parse_duration  # only when one is configured

    try:
        parse_duration(value)
    except TimeFormatError:
        return "must be a duration like 15m, 26h, 8d or 1d12h"
    return None


# -- the schema -----------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One value. ``kind`` says what the TOML file and the environment may give:

    ``str``, ``int``, ``float`` (finite), ``bool``, ``choice`` (one of
    ``choices``), ``path`` (non-empty; ``relative`` ones resolve against the
    config file's directory), ``words`` (a list of strings; a string of
    comma/space separated words too), ``searchpath`` (a path, or a list of
    them), ``intpair`` (a list of two integers).
    """

    name: str
    kind: str
    default: Any = None
    default_factory: Callable[[], Any] | None = None
    nullable: bool = False
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    choices: tuple[str, ...] = ()
    pattern: str | None = None
    pattern_help: str = ""
    check: Callable[[Any], str | None] | None = None
    """A rule beyond the kind: returns the problem, or None. For ``words``: applied to each word."""
    relative: bool = False

    @property
    def required(self) -> bool:
        return self.default is None and self.default_factory is None and not self.nullable

    def make_default(self) -> Any:
        return self.default_factory() if self.default_factory is not None else self.default


@dataclass(frozen=True)
class Table:
    """A TOML table (``[name]``), or with ``many`` an array of tables (``[[name]]``)."""

    name: str
    items: tuple[Setting | Table, ...]
    many: bool = False

    def get(self, name: str) -> Setting | Table | None:
        for item in self.items:
            if item.name == name:
                return item
        return None


def _tmp(name: str) -> Callable[[], Path]:
    def default() -> Path:
        import tempfile  # only when a default is asked for: not on the archive path

        return Path(tempfile.gettempdir()) / name

    return default


def _duration(name: str) -> Setting:
    return Setting(name, "str", nullable=True, check=check_duration)


SCHEMA = Table(
    "",
    (
        Setting("database_url", "str", nullable=True, check=check_database_url),
        Setting("storage_url", "str", "file:///var/backups/p88", check=check_storage_url),
        Setting("opensearch_url", "str", nullable=True),
        Setting("age_recipients", "words", default_factory=list, check=check_recipient),
        Setting("age_recipients_file", "path", nullable=True, relative=True),
        Setting("age_identity_file", "path", nullable=True, relative=True),
        Setting("compression_level", "int", 3, ge=1, le=19),
        Setting("compression_threads", "int", 0, ge=0),
        Setting("pg_bin_dir", "searchpath", nullable=True),
        Setting("work_dir", "path", default_factory=_tmp("p88backup")),
        Setting("lock_dir", "path", default_factory=_tmp("p88backup-locks")),
        Setting("retry_deadline_seconds", "float", 120.0, gt=0),
        Setting("metrics_textfile", "path", nullable=True, relative=True),
        Table(
            "retention",
            (
                Setting("keep_daily", "int", 7, ge=0),
                Setting("keep_weekly", "int", 4, ge=0),
                Setting("keep_monthly", "int", 6, ge=0),
                Setting("keep_min", "int", 1, ge=1),
                Setting("keep_base_backups", "int", 2, ge=1),
                Setting("base_backup_window_days", "float", nullable=True, gt=0),
                Setting("orphan_grace_hours", "float", 24.0, gt=0),
            ),
        ),
        Table(
            "dump",
            (
                Setting("databases", "words", default_factory=list),
                Setting("format", "choice", "custom", choices=("custom", "directory")),
                Setting("jobs", "int", 1, ge=1, le=64),
                Setting("globals", "bool", True),
                Setting("row_counts", "choice", "exact", choices=("exact", "estimate", "off")),
            ),
        ),
        Table(
            "wal",
            (
                Setting(
                    "slot_name",
                    "str",
                    "p88backup",
                    pattern=r"^[a-z0-9_]{1,63}$",
                    pattern_help="must be 1-63 of a-z, 0-9 and _ (a replication slot name)",
                ),
            ),
        ),
        Table(
            "reindex",
            (
                Setting(
                    "index",
                    "str",
                    pattern=r"^[a-z0-9][a-z0-9_\-]*$",
                    pattern_help="must be lower case a-z, 0-9, _ and - (an OpenSearch alias)",
                ),
                Setting("query", "str"),
                Setting("id_column", "str", "id"),
                Setting("updated_at_column", "str", nullable=True),
                Setting("mappings", "path", nullable=True, relative=True),
                Setting("settings", "path", nullable=True, relative=True),
            ),
            many=True,
        ),
        Table(
            "drill",
            (
                Table(
                    "checks",
                    (Setting("name", "str"), Setting("sql", "str"), Setting("database", "str", nullable=True)),
                    many=True,
                ),
                Setting("port_range", "intpair", (55432, 55532), check=check_port_range),
            ),
        ),
        Table(
            "schedule",
            tuple(
                Setting(job, "str", default, check=check_schedule)
                for job, default in (
                    ("dump", "15 2 * * *"),
                    ("basebackup", "45 2 * * 0"),
                    ("expire", "30 4 * * *"),
                    ("drill", "0 5 * * 0"),
                    ("reindex", "off"),
                    ("wal_verify", "5 * * * *"),
                )
            )
            + (
                Setting("listen", "str", "0.0.0.0:9188", check=check_listen),
                Setting("stop_grace_seconds", "float", 90.0, gt=0),
            ),
        ),
        Table(
            "status",
            tuple(_duration(f"max_{what}_age") for what in ("dump", "basebackup", "wal", "drill")),
        ),
    ),
)
"""Every setting. ``Setting`` without a default (``reindex.index``, ``query``...) is required."""

RETIRED: dict[str, str] = {
    "wal.segment_size_mb": "the WAL segment size is no longer a setting: it is read from the WAL itself",
}


# -- messages -------------------------------------------------------------------


def env_name(loc: tuple[str | int, ...]) -> str:
    """The variable that sets ``loc``: list items have none of their own (``P88_REINDEX``)."""
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            break
        parts.append(p.upper())
    return ENV_PREFIX + "__".join(parts)


def describe(loc: tuple[str | int, ...]) -> str:
    """``retention.keep_daily (env P88_RETENTION__KEEP_DAILY)``."""
    return f"{'.'.join(str(p) for p in loc)} (env {env_name(loc)})"


def invalid(loc: tuple[str | int, ...], problem: str) -> ConfigError:
    """The one message for a bad value, whichever reader finds it; the value is never echoed."""
    return ConfigError(f"invalid setting {describe(loc)}: {problem}")


def _unknown(loc: tuple[str | int, ...], where: str, table: Table) -> ConfigError:
    dotted = ".".join(str(p) for p in loc)
    retired = RETIRED.get(".".join(str(p) for p in loc if not isinstance(p, int)))
    if retired:
        return ConfigError(f"unknown setting {dotted} ({where}): {retired}")
    import difflib  # only on this error path

    names = [item.name for item in table.items]
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    hint = f"did you mean {close[0]}?" if close else "known here: " + ", ".join(names)
    return ConfigError(f"unknown setting {dotted} ({where})", hint=hint)


NOT_SETTINGS = frozenset(
    {
        "P88_CONFIG",  # the config file (--config)
        "P88_CACHE",  # scripts/setup, the test harness: where downloads and builds are cached
        "P88_PYTHON",  # scripts/setup: the interpreter of the venv
        "P88_SERVICES_DIR",  # scripts/services: where the test services live
        "P88_BACKUP_PASSWORD",  # compose: the backup role's password (the sidecar gets it as PGPASSWORD)
        "P88_MONITOR_PASSWORD",  # compose: the monitoring role's password (grafana-agent)
    }
)
"""``P88_`` variables of the project that are not settings: never reported as unknown."""
NOT_SETTINGS_PREFIXES = ("P88_TEST_",)  # the test harness's services (P88_TEST_PG_PORT, P88_TEST_S3_...)


def env_names(table: Table = SCHEMA, prefix: str = ENV_PREFIX) -> list[str]:
    """Every variable that sets something (``P88_RETENTION`` and ``P88_RETENTION__KEEP_DAILY``...)."""
    out: list[str] = []
    for item in table.items:
        name = prefix + item.name.upper()
        out.append(name)
        if isinstance(item, Table) and not item.many:
            out += env_names(item, name + "__")
    return out


def unknown_env(environ: Mapping[str, str]) -> list[tuple[str, str | None]]:
    """``P88_*`` variables that set nothing (sorted), each with the variable probably meant, or None.

    :func:`read_config` leaves them alone, so a misspelt name (one ``_`` for
    ``__``: ``P88_STATUS_MAX_DUMP_AGE=26h``) would otherwise switch a check off
    without a word. Names of a known table with an unknown key are errors
    there already, and the project's own variables are not settings.
    """
    unknown = []
    for var in environ:
        upper = var.upper()
        if not upper.startswith(ENV_PREFIX) or upper in NOT_SETTINGS or upper.startswith(NOT_SETTINGS_PREFIXES):
            continue
        if SCHEMA.get(upper[len(ENV_PREFIX) :].lower().split("__")[0]) is None:
            unknown.append(var)
    if not unknown:
        return []
    import difflib  # only when there is something to hint at

    known = env_names()
    # 0.8: a letter or an underscore off, not any name that shares P88_ and a few letters
    return [
        (var, next(iter(difflib.get_close_matches(var.upper(), known, n=1, cutoff=0.8)), None))
        for var in sorted(unknown)
    ]


# -- reading --------------------------------------------------------------------


def _number(spec: Setting, loc: tuple[str | int, ...], value: float) -> None:
    if spec.ge is not None and value < spec.ge:
        raise invalid(loc, f"must be greater than or equal to {spec.ge:g}")
    if spec.gt is not None and value <= spec.gt:
        raise invalid(loc, f"must be greater than {spec.gt:g}")
    if spec.le is not None and value > spec.le:
        raise invalid(loc, f"must be less than or equal to {spec.le:g}")


def _value(spec: Setting, loc: tuple[str | int, ...], value: Any, from_env: bool, root: Path) -> Any:
    """Check one value against its spec; return it as Settings takes it."""
    if value is None:
        if spec.nullable:
            return None
        raise invalid(loc, "must be set")
    kind = spec.kind
    if kind in ("str", "choice"):
        if not isinstance(value, str):
            raise invalid(loc, "must be a string")
        if kind == "choice" and value not in spec.choices:
            raise invalid(loc, "must be one of " + ", ".join(spec.choices))
        if spec.pattern is not None and not _matches(spec.pattern, value):
            raise invalid(loc, spec.pattern_help or f"must match {spec.pattern}")
    elif kind == "int":
        if from_env and isinstance(value, str) and _INT_RE.fullmatch(value):
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool):
            raise invalid(loc, "must be an integer")
        _number(spec, loc, value)
    elif kind == "float":
        if from_env and isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                raise invalid(loc, "must be a number") from None
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise invalid(loc, "must be a number")
        if not math.isfinite(value):
            raise invalid(loc, "must be a finite number")
        value = float(value)
        _number(spec, loc, value)
    elif kind == "bool":
        if from_env and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            value = value.strip().lower() in _TRUE
        if not isinstance(value, bool):
            raise invalid(loc, "must be true or false")
    elif kind == "path":
        if not isinstance(value, str) or not value:
            raise invalid(loc, "must be a non-empty path")
        path = Path(value)
        value = root / path if spec.relative and not path.is_absolute() else path
    elif kind == "searchpath":
        parts = [value] if isinstance(value, str) else value
        if not isinstance(parts, list) or not parts or not all(isinstance(p, str) and p for p in parts):
            raise invalid(loc, "must be a path, or a list of paths")
    elif kind == "words":
        if isinstance(value, str):
            value = split_words(value)
        if not isinstance(value, list) or not all(isinstance(w, str) for w in value):
            raise invalid(loc, "must be a list of strings")
        value = [w.strip() for w in value if w.strip()]
        for word in value:
            problem = spec.check(word) if spec.check else None
            if problem:
                raise invalid(loc, problem)
        return value
    elif kind == "intpair":
        if from_env and isinstance(value, str):
            value = _json(loc, value)
        if not (
            isinstance(value, list | tuple)
            and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise invalid(loc, "must be a list of two integers")
        value = (value[0], value[1])
    else:  # pragma: no cover - a schema mistake
        raise AssertionError(f"unknown kind {kind}")
    problem = spec.check(value) if spec.check else None
    if problem:
        raise invalid(loc, problem)
    return value


def _table(
    table: Table, loc: tuple[str | int, ...], data: Any, where: str, from_env: bool, root: Path
) -> dict[str, Any]:
    """Check a table's keys and values; unknown keys are errors. Returns what was set."""
    if not isinstance(data, dict):
        raise invalid(loc, "must be a table")
    out: dict[str, Any] = {}
    for key, value in data.items():
        spec = table.get(key)
        if spec is None:
            raise _unknown((*loc, key), where, table)
        out[key] = _item(spec, (*loc, key), value, where, from_env, root)
    return out


def _item(spec: Setting | Table, loc: tuple[str | int, ...], value: Any, where: str, from_env: bool, root: Path) -> Any:
    if isinstance(spec, Setting):
        return _value(spec, loc, value, from_env, root)
    if not spec.many:
        return _table(spec, loc, value, where, from_env, root)
    if not isinstance(value, list):
        raise invalid(loc, "must be a list of tables")
    out = [_table(spec, (*loc, i), v, where, from_env, root) for i, v in enumerate(value)]
    required = [item.name for item in spec.items if isinstance(item, Setting) and item.required]
    for i, entry in enumerate(out):
        for name in required:
            if name not in entry:
                raise invalid((*loc, i, name), "is required")
    return out


def _json(loc: tuple[str | int, ...], text: str) -> Any:
    import json

    try:
        return json.loads(text)
    except ValueError:
        raise invalid(loc, "must be JSON here (a table, list or pair given whole in the environment)") from None


def _from_env(environ: Mapping[str, str], root: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen: dict[tuple[str, ...], str] = {}
    # By lower-case name: a whole table (P88_RETENTION) comes before the variables
    # inside it (P88_RETENTION__KEEP_DAILY), which then win, as in pydantic-settings.
    for var in sorted(environ, key=str.lower):
        lower = var.lower()
        if not lower.startswith("p88_"):
            continue
        path = tuple(lower[4:].split("__"))
        spec = SCHEMA.get(path[0])
        if spec is None:
            continue  # names no setting: P88_CONFIG, harness variables (as pydantic-settings does)
        if path in seen:
            raise ConfigError(f"{seen[path]} and {var} both set {'.'.join(path)}")
        seen[path] = var
        loc: tuple[str | int, ...] = (path[0],)
        for key in path[1:]:
            if not isinstance(spec, Table):
                raise invalid(loc, f"has no part {key} ({var})")
            if spec.many:
                raise invalid(loc, f"is a list of tables: give it whole, as JSON ({var})")
            parent: Table = spec
            spec = parent.get(key)
            if spec is None:
                raise _unknown((*loc, key), f"env {var}", parent)
            loc = (*loc, key)
        if isinstance(spec, Table):
            value = _item(spec, loc, _json(loc, environ[var]), f"env {var}", False, root)
        else:
            value = _value(spec, loc, environ[var], True, root)
        for part in reversed(loc):
            value = {str(part): value}
        out = _merge(out, value)
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` wins; tables merge key by key, lists and values are replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def read_config(config_file: Path | None, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Every setting given in the file or the environment, checked; the environment wins.

    Only what was given is returned (nested dicts for tables); defaults are
    the reader's business. Raises :class:`ConfigError` with one line naming
    the setting and the problem, never the value (it may be a secret).
    """
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    root = Path.cwd()
    if config_file is not None:
        import tomllib

        try:
            with open(config_file, "rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {config_file}") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
        root = config_file.resolve().parent
        data = _table(SCHEMA, (), raw, f"in {config_file}", False, root)
    return _merge(data, _from_env(env, root))


# -- the archive commands' view -------------------------------------------------


ARCHIVE_FIELDS = (
    "storage_url",
    "age_recipients",
    "age_recipients_file",
    "age_identity_file",
    "compression_level",
    "compression_threads",
    "retry_deadline_seconds",
)


@dataclass
class ArchiveConfig:
    """What ``wal-push``/``wal-fetch`` use; defaults are :data:`SCHEMA`'s (a test checks)."""

    storage_url: str = "file:///var/backups/p88"
    age_recipients: list[str] = field(default_factory=list)
    age_recipients_file: Path | None = None
    age_identity_file: Path | None = None
    compression_level: int = 3
    compression_threads: int = 0
    retry_deadline_seconds: float = 120.0


def load_archive_config(config_file: Path | None, environ: Mapping[str, str] | None = None) -> ArchiveConfig:
    """The archive commands' settings. The whole file and environment are checked, as for
    every other command: a mistake anywhere fails here too, before anything is archived."""
    data = read_config(config_file, environ)
    return ArchiveConfig(**{name: data[name] for name in ARCHIVE_FIELDS if name in data})
