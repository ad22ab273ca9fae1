"""The database to protect: connection parameters that keep libpq's secrets secret.

Every parameter libpq marks as secret (:data:`p88backup.redact.SECRET_PARAMS`:
``password``, ``sslpassword``, ``oauth_client_secret``) is taken out of the
URL's parameters when it is parsed, so no conninfo string we build — for a
client tool's command line, a log line or an error — can contain one
(DESIGN §3.7). They reach libpq only this way:

* in-process (psycopg): as keyword arguments of ``connect``;
* client tools: the password in ``PGPASSWORD``; the others have no
  environment variable, so they go in a libpq *service file* that exists only
  in memory: a ``memfd`` of this process, named to the tool by
  ``PGSERVICEFILE=/proc/<our pid>/fd/<n>`` with ``PGSERVICE`` set. Nothing is
  written to disk, nothing is left behind if we are killed, only processes of
  our own user can open it, and it lives as long as we do (tools are our
  children, ``pg_dump --jobs`` workers reconnect at will).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

from p88backup.errors import ConfigError, DatabaseError
from p88backup.pg.tools import major_of
from p88backup.redact import SECRET_PARAMS

DEFAULT_WAL_SEGMENT_SIZE = 16 * 1024 * 1024
SERVICE_NAME = "p88backup"

# One in-memory service file per distinct set of secrets, for the life of the process.
_service_files: dict[tuple[tuple[str, str], ...], str] = {}


@dataclass(frozen=True)
class ConnInfo:
    params: dict[str, str] = field(default_factory=dict)
    password: str | None = field(default=None, repr=False)
    secrets: dict[str, str] = field(default_factory=dict, repr=False)
    """libpq secret parameters other than the password (``sslpassword``, ...)."""

    @classmethod
    def from_url(cls, url: str | None) -> ConnInfo:
        if not url:
            raise ConfigError("no database configured", hint="set P88_DATABASE_URL=postgresql://user@host:5432/dbname")
        from psycopg.conninfo import conninfo_to_dict

        try:
            raw = conninfo_to_dict(url)
        except Exception:  # its message may quote the URL, secrets included
            raise ConfigError("database_url is not a valid libpq URL") from None
        params = {k: str(v) for k, v in raw.items() if v is not None}
        password = params.pop("password", None)
        secrets = {k: params.pop(k) for k in sorted(SECRET_PARAMS - {"password"}) if k in params}
        if secrets and "service" in params:
            # Tools get these through a service file of ours, which would hide the user's service.
            raise ConfigError(
                f"database_url: {', '.join(secrets)} cannot be combined with service=",
                hint=f"put {', '.join(secrets)} in that service's definition instead",
            )
        for name, value in secrets.items():
            if "\n" in value or "\r" in value or value != value.rstrip():
                raise ConfigError(f"database_url: {name} cannot end with a space or hold a line break")
        params.setdefault("application_name", "p88backup")
        return cls(params, password, secrets)

    @property
    def dbname(self) -> str:
        return self.params.get("dbname") or self.params.get("user") or os.environ.get("PGDATABASE", "postgres")

    def with_db(self, dbname: str) -> ConnInfo:
        return replace(self, params={**self.params, "dbname": dbname})

    def dsn(self) -> str:
        """conninfo for a command line: never contains a secret."""
        from psycopg.conninfo import make_conninfo

        return make_conninfo("", **self.params)

    def env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment for a client tool: the caller's, plus how to find the secrets."""
        env = dict(os.environ if base is None else base)
        if self.password is not None:
            env["PGPASSWORD"] = self.password
        if self.secrets:
            if env.get("PGSERVICE"):
                raise ConfigError(
                    f"PGSERVICE is set: cannot also pass {', '.join(self.secrets)} from database_url to the tools",
                    hint="unset PGSERVICE, or move those parameters into the service's definition",
                )
            env["PGSERVICEFILE"] = secret_service_file(self.secrets)
            env["PGSERVICE"] = SERVICE_NAME
        return env

    def describe(self) -> str:
        """host:port/dbname for messages."""
        host = self.params.get("host", "localhost")
        port = self.params.get("port", "5432")
        return f"{host}:{port}/{self.dbname}"

    def connect(self, *, autocommit: bool = True, **kw: Any) -> Any:
        import psycopg

        options: dict[str, Any] = {**self.secrets, **kw}  # in-process: libpq gets them directly
        try:
            return psycopg.connect(
                self.dsn(), password=self.password, autocommit=autocommit, connect_timeout=10, **options
            )
        except psycopg.OperationalError as exc:
            raise DatabaseError(
                f"cannot connect to PostgreSQL at {self.describe()}: {first_line(exc)}",
                hint="is the server up, and do P88_DATABASE_URL / PGPASSWORD hold the right credentials?",
            ) from None


def secret_service_file(secrets: dict[str, str]) -> str:
    """Path of an in-memory libpq service file ``[p88backup]`` holding ``secrets``."""
    key = tuple(sorted(secrets.items()))
    path = _service_files.get(key)
    if path is None:
        text = f"[{SERVICE_NAME}]\n" + "".join(f"{k}={v}\n" for k, v in key)
        fd = os.memfd_create("p88backup-pg-service", os.MFD_CLOEXEC)
        os.write(fd, text.encode())
        # Children open it by our pid: CLOEXEC keeps the descriptor itself out of them.
        path = f"/proc/{os.getpid()}/fd/{fd}"
        _service_files[key] = path
    return path


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
    wal_segment_size: int = DEFAULT_WAL_SEGMENT_SIZE
    """bytes; fixed at initdb (``--wal-segsize``), so every WAL name depends on it."""

    @property
    def major(self) -> int:
        return major_of(self.version_num)


def server_info(conn: Any) -> ServerInfo:
    row = conn.execute(
        "SELECT current_setting('server_version'), current_setting('server_version_num')::int,"
        " (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),"
        # pg_settings gives it in bytes (unit 'B') on every supported version.
        " (SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size')"
    ).fetchone()
    sysid: str | None = None
    try:
        sysid = str(conn.execute("SELECT system_identifier FROM pg_control_system()").fetchone()[0])
    except Exception:  # needs privileges we may not have; it is only informational
        pass
    return ServerInfo(row[0].split()[0], row[1], sysid, bool(row[2]), int(row[3] or DEFAULT_WAL_SEGMENT_SIZE))
