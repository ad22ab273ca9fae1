"""Settings: environment (``P88_`` prefix, ``__`` for nesting) over a TOML file.

Loaded once, in the CLI root, by :func:`load_settings`, and passed down.
The TOML file uses the same names as the environment (lower case), flat for
the essentials and tables for the structured parts (DESIGN §2). Relative
paths in the file are resolved against the file's directory.

The environment and the file are read by :func:`p88backup.rawconfig.read_config`
against :data:`p88backup.rawconfig.SCHEMA`, the pydantic-free contract that
the archive fast path (``wal-push``/``wal-fetch``) reads too: both accept and
reject exactly the same input, with the same messages. The models here add
types and defaults for the rest of the code; ``tests/unit/test_rawconfig.py``
holds them equal to the schema, field by field.

:func:`load_settings` also warns, once per process, about each ``P88_``
variable that names no setting (:func:`p88backup.rawconfig.unknown_env`): a
misspelt one is otherwise silently ignored. The archive fast path never
loads this module and stays quiet.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from p88backup import rawconfig
from p88backup.errors import ConfigError
from p88backup.rawconfig import ENV_PREFIX, STORAGE_SCHEMES
from p88backup.redact import redact_url, url_secrets

__all__ = ["ENV_PREFIX", "STORAGE_SCHEMES", "Settings", "load_settings"]

log = logging.getLogger(__name__)
_WARNED: set[str] = set()  # unknown variables already warned about: settings may be loaded again after a failure


def _split_words(value: Any) -> Any:
    """Accept ``"a, b c"`` from the environment as well as a TOML list."""
    if isinstance(value, str):
        return rawconfig.split_words(value)
    return value


def _checked(check: Any, value: Any) -> Any:
    """Run one of rawconfig's shared checks as a pydantic validator."""
    problem = check(value)
    if problem:
        raise ValueError(problem)
    return value


class _Table(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RetentionSettings(_Table):
    """GFS for dumps; count or age window for base backups."""

    keep_daily: int = Field(7, ge=0)
    keep_weekly: int = Field(4, ge=0)
    keep_monthly: int = Field(6, ge=0)
    keep_min: int = Field(1, ge=1, description="never keep fewer good dumps than this")
    keep_base_backups: int = Field(2, ge=1)
    base_backup_window_days: float | None = Field(
        None, gt=0, description="also keep every base backup younger than this"
    )
    orphan_grace_hours: float = Field(
        24.0, gt=0, description="incomplete backups older than this are removed by expire"
    )


class DumpSettings(_Table):
    databases: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="databases to dump; empty = the one in database_url"
    )
    format: Literal["custom", "directory"] = "custom"
    jobs: int = Field(1, ge=1, le=64)
    globals: bool = True
    row_counts: Literal["exact", "estimate", "off"] = "exact"

    _split = field_validator("databases", mode="before")(_split_words)


class WalSettings(_Table):
    # No segment size here: it is fixed at initdb and read from the WAL (headers, server, manifests).
    slot_name: str = Field("p88backup", pattern=r"^[a-z0-9_]{1,63}$")


class ReindexDefinition(_Table):
    index: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]*$", description="alias clients query")
    query: str
    id_column: str = "id"
    updated_at_column: str | None = None
    mappings: Path | None = None
    settings: Path | None = None


class DrillCheck(_Table):
    name: str
    sql: str
    database: str | None = None


class DrillSettings(_Table):
    checks: list[DrillCheck] = Field(default_factory=list)
    port_range: tuple[int, int] = (55432, 55532)

    @field_validator("port_range")
    @classmethod
    def _check_ports(cls, v: tuple[int, int]) -> tuple[int, int]:
        return _checked(rawconfig.check_port_range, v)  # type: ignore[no-any-return]


class ScheduleSettings(_Table):
    """When ``p88backup schedule`` runs each job: a cron expression (5 fields, UTC) or ``off``.

    The defaults are the times of ``cron/p88backup`` and the compose sidecar. ``dump`` is
    followed by ``verify`` of the dump it made.
    """

    dump: str = "15 2 * * *"
    basebackup: str = "45 2 * * 0"
    expire: str = "30 4 * * *"
    drill: str = "0 5 * * 0"
    reindex: str = "off"
    wal_verify: str = "5 * * * *"
    listen: str = Field("0.0.0.0:9188", description="HOST:PORT of /healthz and /metrics")
    stop_grace_seconds: float = Field(
        90.0, gt=0, description="on SIGTERM, running jobs are aborted and everything has stopped within this"
    )

    @field_validator("dump", "basebackup", "expire", "drill", "reindex", "wal_verify")
    @classmethod
    def _check_schedule(cls, v: str) -> str:
        return _checked(rawconfig.check_schedule, v)  # type: ignore[no-any-return]

    @field_validator("listen")
    @classmethod
    def _check_listen(cls, v: str) -> str:
        return _checked(rawconfig.check_listen, v)  # type: ignore[no-any-return]


class StatusSettings(_Table):
    """``status`` exits non-zero past these ages (``26h``, ``8d``, ``15m``); unset: not checked."""

    max_dump_age: str | None = None
    max_basebackup_age: str | None = None
    max_wal_age: str | None = None
    max_drill_age: str | None = None

    @field_validator("max_dump_age", "max_basebackup_age", "max_wal_age", "max_drill_age")
    @classmethod
    def _check_duration(cls, v: str | None) -> str | None:
        return v if v is None else _checked(rawconfig.check_duration, v)

    def seconds(self, name: str) -> float | None:
        """A threshold in seconds (``seconds("max_dump_age")``), or None when unset."""
        from p88backup.times import parse_duration

        value = getattr(self, name)
        return None if value is None else parse_duration(value).total_seconds()


class _ContractSource(PydanticBaseSettingsSource):
    """The environment and the config file, as :func:`rawconfig.read_config` reads them."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False  # unused: __call__ reads everything at once

    def __call__(self) -> dict[str, Any]:
        import os

        return rawconfig.read_config(_config_file.get(), os.environ)


_config_file: ContextVar[Path | None] = ContextVar("p88_config_file", default=None)


class Settings(BaseSettings):
    """Effective configuration. Field names are the contract (DESIGN §2)."""

    # The environment and the file come from _ContractSource (rawconfig), not from
    # pydantic-settings' own sources: see settings_customise_sources.
    model_config = SettingsConfigDict(
        extra="forbid",
        hide_input_in_errors=True,
        validate_default=True,
    )

    database_url: str | None = Field(None, description="libpq URL of the database to protect")
    storage_url: str = "file:///var/backups/p88"
    opensearch_url: str | None = None

    age_recipients: Annotated[list[str], NoDecode] = Field(default_factory=list)
    age_recipients_file: Path | None = None
    age_identity_file: Path | None = None

    compression_level: int = Field(3, ge=1, le=19)
    compression_threads: int = Field(0, ge=0, description="0 = one per CPU")
    pg_bin_dir: Path | None = Field(
        None, description="bin directory of the PostgreSQL programs; several: ':'-separated (TOML: a list)"
    )
    work_dir: Path = Path(tempfile.gettempdir()) / "p88backup"
    lock_dir: Path = Path(tempfile.gettempdir()) / "p88backup-locks"
    retry_deadline_seconds: float = Field(120.0, gt=0)
    metrics_textfile: Path | None = Field(
        None, description="one-shot commands merge their Prometheus metrics into this node-exporter textfile"
    )

    retention: RetentionSettings = Field(default_factory=RetentionSettings)
    dump: DumpSettings = Field(default_factory=DumpSettings)
    wal: WalSettings = Field(default_factory=WalSettings)
    reindex: list[ReindexDefinition] = Field(default_factory=list)
    drill: DrillSettings = Field(default_factory=DrillSettings)
    schedule: ScheduleSettings = Field(default_factory=ScheduleSettings)
    status: StatusSettings = Field(default_factory=StatusSettings)

    _split = field_validator("age_recipients", mode="before")(_split_words)

    @field_validator("pg_bin_dir", mode="before")
    @classmethod
    def _join_bin_dirs(cls, v: Any) -> Any:
        # One search path, like PATH: p88backup.pg.tools splits it. A list in TOML means the same.
        if isinstance(v, list | tuple):
            return ":".join(str(d) for d in v) or None
        return v

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, v: str | None) -> str | None:
        return v if v is None else _checked(rawconfig.check_database_url, v)

    @field_validator("storage_url")
    @classmethod
    def _check_storage_url(cls, v: str) -> str:
        return _checked(rawconfig.check_storage_url, v)  # type: ignore[no-any-return]

    @field_validator("age_recipients")
    @classmethod
    def _check_recipients(cls, v: list[str]) -> list[str]:
        for r in v:
            _checked(rawconfig.check_recipient, r)
        return v

    @model_validator(mode="after")
    def _resolve_relative_paths(self) -> Settings:
        base = _config_file.get()
        root = base.resolve().parent if base is not None else Path.cwd()

        def fix(p: Path | None) -> Path | None:
            return p if p is None or p.is_absolute() else (root / p)

        self.age_recipients_file = fix(self.age_recipients_file)
        self.age_identity_file = fix(self.age_identity_file)
        self.metrics_textfile = fix(self.metrics_textfile)
        for d in self.reindex:
            d.mappings = fix(d.mappings)
            d.settings = fix(d.settings)
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # One reader for the environment and the file, shared with the archive fast path.
        return (init_settings, _ContractSource(settings_cls))

    # -- derived views -------------------------------------------------------

    @property
    def secrets(self) -> list[str]:
        """Strings that must never be printed (for the log filter): every password and
        libpq secret parameter in the URLs, as written and decoded."""
        out: list[str] = []
        for url in (self.database_url, self.opensearch_url, self.storage_url):
            out += [s for s in url_secrets(url) if s not in out]
        return out

    def redacted(self) -> dict[str, Any]:
        """The effective settings as plain data, safe to print."""
        data = self.model_dump(mode="json")
        if self.database_url:
            data["database_url"] = redact_url(self.database_url)
        data["storage_url"] = redact_url(self.storage_url)
        if self.opensearch_url:
            data["opensearch_url"] = redact_url(self.opensearch_url)
        return data

    @property
    def base_backup_window(self) -> timedelta | None:
        days = self.retention.base_backup_window_days
        return timedelta(days=days) if days else None


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from the environment and the optional TOML file.

    Raises :class:`ConfigError` with one line naming the field and the
    problem; the offending value is never echoed (it may be a secret).
    """
    warn_unknown_env()
    # As given, not resolved: rawconfig's messages name the file the way the user did.
    token = _config_file.set(config_file)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        # Only for what rawconfig's checks let through (overrides, or a drift that the
        # contract tests exist to catch): the same message format, pydantic's words.
        problems = [f"{rawconfig.describe(e['loc'])}: {e['msg']}" for e in exc.errors()]
        first, more = problems[0], len(problems) - 1
        suffix = f" (and {more} more: {'; '.join(problems[1:])})" if more else ""
        raise ConfigError(f"invalid setting {first}{suffix}") from None
    finally:
        _config_file.reset(token)


def warn_unknown_env(environ: Mapping[str, str] | None = None) -> None:
    """One warning per ``P88_`` variable that names no setting, with the one probably meant.

    Before the settings are read, so that the hint also comes with a config error. The
    variable's value is never logged (it may be a secret).
    """
    import os

    for var, meant in rawconfig.unknown_env(os.environ if environ is None else environ):
        if var in _WARNED:
            continue
        _WARNED.add(var)
        hint = f": did you mean {meant}?" if meant else ""
        log.warning(
            f"environment variable {var} is not a p88backup setting and is ignored{hint}",
            extra={"p88": {"variable": var, "did_you_mean": meant}},
        )
