"""The object every command receives: global options and lazily loaded settings.

Settings load on first use, so ``--help`` works even with a broken config.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import update_wrapper
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

if TYPE_CHECKING:
    from p88backup.pg.conn import ConnInfo
    from p88backup.settings import Settings
    from p88backup.storage import Storage
    from p88backup.stream import Codec

F = TypeVar("F", bound=Callable[..., Any])


@dataclass
class App:
    config_file: Path | None
    verbose: int = 0
    _settings: Settings | None = field(default=None, repr=False)
    _storage: Storage | None = field(default=None, repr=False)
    started: bool = False
    """The command's body began (set by :func:`pass_app`)."""
    stored_bytes: int | None = None
    """Bytes the command stored (dump, basebackup): cli.main records them in the job's metrics."""

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from p88backup.redact import SECRETS
            from p88backup.settings import load_settings

            self._settings = load_settings(self.config_file)
            for secret in self._settings.secrets:
                SECRETS.add(secret)
        return self._settings

    @property
    def storage(self) -> Storage:
        if self._storage is None:
            from p88backup.storage import open_storage

            s = self.settings
            self._storage = open_storage(s.storage_url, retry_deadline=s.retry_deadline_seconds)
        return self._storage

    @property
    def conninfo(self) -> ConnInfo:
        from p88backup.pg.conn import ConnInfo

        return ConnInfo.from_url(self.settings.database_url)

    @property
    def codec(self) -> Codec:
        from p88backup.stream import make_codec

        s = self.settings
        return make_codec(
            level=s.compression_level,
            threads=s.compression_threads,
            recipients=s.age_recipients,
            recipients_file=s.age_recipients_file,
            identity_file=s.age_identity_file,
        )

    def close(self) -> None:
        if self._storage is not None:
            self._storage.close()


def pass_app(f: F) -> F:
    """Pass the App as the first argument (``click.make_pass_decorator(App)``) and mark it started:
    cli.main records a job's metrics only for a command that ran (not for ``--help``)."""

    def new_func(*args: Any, **kwargs: Any) -> Any:
        app = click.get_current_context().find_object(App)
        if app is None:
            raise RuntimeError("no App in the context: commands run under the p88backup CLI root")
        app.started = True
        return f(app, *args, **kwargs)

    return update_wrapper(new_func, f)  # type: ignore[return-value]
