"""The object every command receives: global options and lazily loaded settings.

Settings load on first use, so ``--help`` works even with a broken config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from p88backup.pg.conn import ConnInfo
    from p88backup.settings import Settings
    from p88backup.storage import Storage
    from p88backup.stream import Codec


@dataclass
class App:
    config_file: Path | None
    verbose: int = 0
    _settings: Settings | None = field(default=None, repr=False)
    _storage: Storage | None = field(default=None, repr=False)

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


pass_app = click.make_pass_decorator(App)
