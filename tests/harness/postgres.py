"""Throwaway PostgreSQL clusters made with Debian's initdb on a free port.

As root, the server runs as the ``postgres`` user (PostgreSQL refuses root);
client tools run as the caller. Authentication is ``trust`` on loopback and
the socket directory, except for the ``p88_secret`` role that tests use to
prove passwords stay out of argv and logs (scram).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.procs import chown_for_service, free_port, make_traversable, service_user, tail, wait_for


def pg_bin_dirs() -> dict[int, Path]:
    """Installed server versions -> bin directory (Debian layout)."""
    found: dict[int, Path] = {}
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        m = re.search(r"/(\d+)/bin$", d)
        if m and os.path.exists(os.path.join(d, "initdb")):
            found[int(m.group(1))] = Path(d)
    return found


def default_bin_dir() -> Path:
    dirs = pg_bin_dirs()
    if not dirs:
        raise RuntimeError("no PostgreSQL server found under /usr/lib/postgresql (apt install postgresql)")
    return dirs[max(dirs)]


@dataclass
class PgCluster:
    datadir: Path
    port: int
    bindir: Path
    logfile: Path
    socket_dir: Path
    user: str = "postgres"
    settings: dict[str, str] = field(default_factory=dict)

    # -- lifecycle ------------------------------------------------------------

    @classmethod
    def create(
        cls,
        base: Path,
        *,
        port: int | None = None,
        bindir: Path | None = None,
        settings: dict[str, str] | None = None,
        initdb_args: tuple[str, ...] = ("--data-checksums",),
    ) -> PgCluster:
        base.mkdir(parents=True, exist_ok=True)
        os.chmod(base, 0o777)
        make_traversable(base)
        datadir = base / "data"
        sock = base / "sock"
        sock.mkdir(exist_ok=True)
        os.chmod(sock, 0o777)
        cluster = cls(
            datadir=datadir,
            port=port or free_port(),
            bindir=bindir or default_bin_dir(),
            logfile=base / "postgres.log",
            socket_dir=sock,
            settings=dict(settings or {}),
        )
        datadir.mkdir(mode=0o700)
        chown_for_service(datadir)
        cluster._run_as_service(
            [
                str(cluster.bindir / "initdb"),
                "-D",
                str(datadir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                *initdb_args,
            ]
        )
        conf = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(cluster.port),
            "unix_socket_directories": f"'{sock}'",
            "wal_level": "replica",
            "max_wal_senders": "10",
            "max_replication_slots": "10",
            "fsync": "on",
            "shared_buffers": "128MB",
            "max_connections": "50",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] '",
        }
        conf.update({k: v for k, v in cluster.settings.items()})
        with open(datadir / "postgresql.auto.conf", "a") as fh:
            for k, v in conf.items():
                fh.write(f"{k} = {v}\n")
        hba = datadir / "pg_hba.conf"
        hba.write_text(
            "local all all trust\n"
            "host all p88_secret 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 trust\n"
            "local replication all trust\n"
            "host replication all 127.0.0.1/32 trust\n"
        )
        chown_for_service(hba)
        return cluster

    def _run_as_service(self, argv: list[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        user = service_user()
        r = subprocess.run(
            argv,
            user=user,
            group=user,
            extra_groups=[] if user else None,
            check=False,
            capture_output=True,
            text=True,
            cwd="/",
            env={**os.environ, "LC_ALL": "C.UTF-8"},
        )
        if check and r.returncode != 0:
            raise RuntimeError(f"{os.path.basename(argv[0])} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def start(self, timeout: float = 60) -> None:
        if not self.logfile.exists():
            self.logfile.touch()
        os.chmod(self.logfile, 0o666)
        r = self._run_as_service(
            [
                str(self.bindir / "pg_ctl"),
                "-D",
                str(self.datadir),
                "-l",
                str(self.logfile),
                "-w",
                "-t",
                str(int(timeout)),
                "start",
            ],
            check=False,
        )
        if r.returncode != 0:
            raise RuntimeError(f"PostgreSQL failed to start:\n{r.stderr}\n{tail(self.logfile)}")
        wait_for(self.is_ready, timeout, "PostgreSQL")

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run_as_service(
                [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "stop"],
                check=False,
            )

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop and delete the data; the server log stays (pytest keeps the last runs' temp dirs)."""
        self.stop("immediate")
        shutil.rmtree(self.datadir, ignore_errors=True)

    def client(self, tool: str, *args: str, host: str = "127.0.0.1", port: int | None = None) -> list[str]:
        """argv of a client program of this cluster's version, connecting as ``postgres``."""
        return [str(self.bindir / tool), "-h", host, "-p", str(port or self.port), "-U", "postgres", *args]

    def is_ready(self) -> bool:
        return subprocess.run(self.client("pg_isready", "-q"), check=False).returncode == 0

    def set(self, **settings: str) -> None:
        """ALTER SYSTEM + reload (use restart() for settings that need one)."""
        for k, v in settings.items():
            self.sql(f"ALTER SYSTEM SET {k} = {v}")
        self.sql("SELECT pg_reload_conf()")

    # -- access ---------------------------------------------------------------

    def url(self, dbname: str = "postgres", user: str = "postgres", password: str | None = None) -> str:
        from urllib.parse import quote

        auth = f"{quote(user, safe='')}:{quote(password, safe='')}" if password else quote(user, safe="")
        return f"postgresql://{auth}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def connect(self, dbname: str = "postgres", autocommit: bool = True, **kw: Any) -> Any:
        import psycopg

        return psycopg.connect(self.url(dbname), autocommit=autocommit, **kw)

    def sql(self, query: str, dbname: str = "postgres", params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect(dbname) as conn:
            cur = conn.execute(query, params)
            return cur.fetchall() if cur.description else []

    def scalar(self, query: str, dbname: str = "postgres", params: Any = None) -> Any:
        rows = self.sql(query, dbname, params)
        return rows[0][0] if rows else None

    def psql(self, script: str, dbname: str = "postgres") -> str:
        r = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", self.url(dbname)],
            input=script,
            capture_output=True,
            text=True,
            check=False,
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr}")
        return r.stdout

    def version_num(self) -> int:
        return int(self.scalar("SHOW server_version_num"))

    def env(self) -> dict[str, str]:
        return {"P88_DATABASE_URL": self.url("postgres")}
