"""The few flat settings the archive fast path needs, read without pydantic.

PostgreSQL runs ``archive_command`` once per WAL segment, so ``wal-push`` and
``wal-fetch`` must start in tens of milliseconds. They read these settings
straight from ``P88_*`` variables and the TOML file (``tomllib``, stdlib).
Names, defaults and precedence are those of :class:`p88backup.settings.Settings`;
``tests/unit/test_rawconfig.py`` holds the two readers to the same answers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from p88backup.errors import ConfigError


@dataclass
class ArchiveConfig:
    storage_url: str = "file:///var/backups/p88"
    age_recipients: list[str] = field(default_factory=list)
    age_recipients_file: Path | None = None
    age_identity_file: Path | None = None
    compression_level: int = 3
    compression_threads: int = 0
    retry_deadline_seconds: float = 120.0


def _split(value: Any) -> list[str]:
    if isinstance(value, str):
        return [w for w in value.replace(",", " ").split() if w]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ConfigError("invalid setting age_recipients: expected a list of public keys")


def load_archive_config(config_file: Path | None, environ: dict[str, str] | None = None) -> ArchiveConfig:
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    root = Path.cwd()
    if config_file is not None:
        import tomllib

        try:
            with open(config_file, "rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"config file not found: {config_file}") from None
        except (OSError, ValueError) as exc:
            raise ConfigError(f"cannot read config file {config_file}: {exc}") from None
        root = config_file.resolve().parent
    cfg = ArchiveConfig()
    for name, kind in (
        ("storage_url", str),
        ("age_recipients", list),
        ("age_recipients_file", Path),
        ("age_identity_file", Path),
        ("compression_level", int),
        ("compression_threads", int),
        ("retry_deadline_seconds", float),
    ):
        value = env.get("P88_" + name.upper(), data.get(name))
        if value is None:
            continue
        try:
            if kind is list:
                setattr(cfg, name, _split(value))
            elif kind is Path:
                p = Path(str(value))
                setattr(cfg, name, p if p.is_absolute() else root / p)
            else:
                setattr(cfg, name, kind(value))
        except (TypeError, ValueError):
            raise ConfigError(f"invalid setting {name} (env P88_{name.upper()})") from None
    return cfg
