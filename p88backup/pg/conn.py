"""The database to protect: connection parameters without leaking the password.

Client tools get a conninfo string *without* the password on their command
line and the password in ``PGPASSWORD`` in their environment (DESIGN §3.7).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from p88backup.errors import ConfigError, DatabaseError
from p88backup.pg.tools import major_of


@dataclass(frozen=True)
class ConnInfo:
    params: dict[str, str] = field(default_factory=dict)
    password: str | None = field(default=None, repr=False)

    @classmethod
    def from_url(cls, url: str | None) -> ConnInfo:
        if not url:
            raise ConfigError("no database configured", hint="set P88_DATABASE_URL=postgresql://user@host:5432/dbname")
        from psycopg.conninfo import conninfo_to_dict

        try:
            raw = conninfo_to_dict(url)
        except Exception:
            raise ConfigError("database_url is not a valid libpq URL") from None
        params = {k: str(v) for k, v in raw.items() if v is not None}
        password = params.pop("password", None)
        params.setdefault("application_name", "p88backup")
        return cls(params, password)

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or self.params.get("user") or os.environ.get("PGDATABASE", "postgres")

    def with_db(self, dbname: str) -> ConnInfo:
        return replace(self, params={**self.params, "dbname": dbname})

    def dsn(self) -> str:
        """conninfo for a command line: never contains the password."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo("", **self.params)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a client tool: the caller's, plus PGPASSWORD if we have one."""
        env = dict(os.environ if base is None else base)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        return env

    def describe(self) -> str:
        """host:port/dbname for messages."""
        host = self.params.get("host", "localhost")
        port = self.params.get("port", "5432")
        return f"{host}:{port}/{self.dbname}"

    def connect(self, *, autocommit: bool = True, **kw: Any) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.dsn(), password=self.password, autocommit=autocommit, connect_timeout=10, **kw)
        except psycopg.OperationalError as exc:
            raise DatabaseError(
                f"cannot connect to PostgreSQL at {self.describe()}: {first_line(exc)}",
                hint="is the server up, and do P88_DATABASE_URL / PGPASSWORD hold the right credentials?",
            ) from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


@dataclass
class ServerInfo:
    """What every backup records about the server it came from."""

    version: str
    version_num: int
    system_identifier: str | None
    superuser: bool

    @property
    def major(self) -> int:
        return major_of(self.version_num)


def server_info(conn: Any) -> ServerInfo:
    row = conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int,"
        " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user)"
    ).fetchone()
    sysid: str | None = None
    try:
        sysid = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
    except Exception:  # needs privileges we may not have; it is only informational
        pass
    return ServerInfo(row[0].split()[0], row[1], sysid, bool(row[2]))
