"""The scratch clusters a drill restores into, and their removal.

Everything a drill writes on disk lives in one folder, ``work_dir/drill-<id>/``,
owned by the user that runs the servers (PostgreSQL refuses root: as root that
is an unprivileged owner, ``postgres`` unless told otherwise, as ``restore
--pitr`` does). Removal never depends on how the drill ended: the servers are
stopped (``pg_ctl stop -m immediate``), any process still working in a data
directory is killed, and the folder is deleted. A drill killed too hard to do
that itself (SIGKILL, power loss) leaves a folder that the next drill removes
first (:func:`reap_leftovers`; drills hold a lock, so any such folder is stale).

The servers listen on 127.0.0.1 only, on a port from ``drill.port_range``, with
no Unix socket: nothing on the host that talks to the usual socket directory
can reach a scratch copy by mistake. The dump drill's cluster gets a random
superuser password for this drill only (scram on TCP).

The pure parts (space, ports, directory permissions) are table-tested.
"""

from __future__ import annotations

import errno
import logging
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from p88backup.errors import P88Error, PgToolError, RefusedError
from p88backup.pg.conn import ConnInfo
from p88backup.pg.proc import run_tool, stderr_tail
from p88backup.pg.tools import server_for

log = logging.getLogger(__name__)

MIB = 1024 * 1024
# A restore writes more than the data it ends with (WAL, sorts for index builds), and a fresh
# cluster has files of its own (~40 MiB) plus its first WAL segments.
SPACE_HEADROOM = 1.2
SPACE_FLOOR = 256 * MIB
SCRATCH_PREFIX = "drill-"
SUPERUSER = "postgres"
SERVER_TIMEOUT = 300  # seconds for initdb, and for a server to start or stop
SETTINGS_MARK = "# p88backup drill: a scratch copy, reachable only on the loopback address\n"


# -- pure policy ------------------------------------------------------------------------------


def space_needed(restored_bytes: int) -> int:
    """Bytes a scratch restore of ``restored_bytes`` (the source's data size) needs free."""
    return int(max(restored_bytes, 0) * SPACE_HEADROOM) + SPACE_FLOOR


def space_problem(what: str, restored_bytes: int, free_bytes: int, where: Path) -> str | None:
    """Why ``what`` would not fit in ``where``, or None when it fits."""
    needed = space_needed(restored_bytes)
    if free_bytes >= needed:
        return None
    return (
        f"the {what} needs about {needed / MIB:.0f} MiB in {where} ({restored_bytes / MIB:.0f} MiB of data, "
        f"plus room to restore it), but only {free_bytes / MIB:.0f} MiB is free"
    )


def pick_port(port_range: tuple[int, int], in_use: Callable[[int], bool]) -> int | None:
    """The first port of ``port_range`` (inclusive) that is not in use, or None."""
    low, high = port_range
    for port in range(low, high + 1):
        if not in_use(port):
            return port
    return None


def may_traverse(mode: int, owner_uid: int, owner_gid: int, uid: int, gids: Iterable[int]) -> bool:
    """Whether user ``uid`` (in groups ``gids``) may enter a directory with this mode and owner."""
    if uid == 0:
        return True
    if uid == owner_uid:
        return bool(mode & stat.S_IXUSR)
    if owner_gid in set(gids):
        return bool(mode & stat.S_IXGRP)
    return bool(mode & stat.S_IXOTH)


# -- the host ----------------------------------------------------------------------------------


def port_in_use(port: int) -> bool:
    """Something listens on (or holds) ``port`` on the loopback addresses."""
    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        try:
            with socket.socket(family, socket.SOCK_STREAM) as sock:
                sock.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return True
            # EADDRNOTAVAIL / EAFNOSUPPORT: no IPv6 loopback here; nothing can listen on it either
    return False


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def server_owner(requested: str | None) -> str | None:
    """The user the scratch servers run as: as root, ``requested`` or ``postgres``; else ourselves (None)."""
    if os.geteuid() != 0:
        if requested and requested != pwd.getpwuid(os.geteuid()).pw_name:
            raise RefusedError(f"--owner {requested} needs root", hint="run the drill as that user instead")
        return None
    name = requested or SUPERUSER
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise RefusedError(
            f"user {name!r} does not exist: the scratch servers need an unprivileged owner",
            hint="pass --owner USER (PostgreSQL refuses to run as root)",
        ) from None
    if pw.pw_uid == 0:
        raise RefusedError(f"{name!r} is root: PostgreSQL refuses to run as root", hint="pass --owner USER")
    return name


def unreachable_parent(path: Path, owner: str | None) -> Path | None:
    """The first existing directory on the way to ``path`` that ``owner`` cannot enter, if any."""
    if owner is None:
        return None
    pw = pwd.getpwnam(owner)
    gids = os.getgrouplist(owner, pw.pw_gid)
    for d in [*reversed(path.parents), path]:
        try:
            st = d.stat()
        except FileNotFoundError:
            return None  # we create the rest, for the owner
        if not may_traverse(st.st_mode, st.st_uid, st.st_gid, pw.pw_uid, gids):
            return d
    return None


def make_private_dir(path: Path, owner: str | None) -> None:
    """Create ``path`` (mode 0700), owned by ``owner`` when given."""
    path.mkdir(mode=0o700)
    os.chmod(path, 0o700)
    if owner:
        pw = pwd.getpwnam(owner)
        os.chown(path, pw.pw_uid, pw.pw_gid)


def processes_in(root: Path) -> list[int]:
    """Pids of processes whose working directory is ``root`` or below it.

    A postmaster and every process it starts (backends, the startup process and
    the restore_command it runs) work in the data directory, so this finds what
    ``pg_ctl stop`` may have left even when postmaster.pid is gone.
    """
    found: list[int] = []
    prefix = str(root.resolve())
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:  # gone, or not ours to see (then not ours to kill either)
            continue
        if cwd == prefix or cwd.startswith(prefix + "/"):
            found.append(int(entry.name))
    return found


def stop_server(datadir: Path, owner: str | None, pg_bin_dir: Path | None) -> None:
    """Stop whatever server runs in ``datadir`` now: immediate shutdown, then kill what remains."""
    if (datadir / "postmaster.pid").exists():
        try:
            major = int((datadir / "PG_VERSION").read_text().strip())
            pg_ctl = server_for("pg_ctl", major, pg_bin_dir).path
            r = run_tool(
                [str(pg_ctl), "-D", str(datadir), "-m", "immediate", "-w", "-t", "60", "stop"],
                user=owner,
                timeout=90,
                check=False,
            )
            if r.returncode != 0:  # not running (a stale postmaster.pid), or stuck: the kill below decides
                log.debug(
                    "pg_ctl stop failed", extra={"p88": {"dir": str(datadir), "error": stderr_tail(r.stderr, 300)}}
                )
        except (OSError, ValueError, PgToolError) as exc:
            log.warning("could not run pg_ctl stop", extra={"p88": {"dir": str(datadir), "error": str(exc)}})
    if datadir.exists():
        kill_processes_in(datadir)


def kill_processes_in(root: Path, timeout: float = 20) -> None:
    """SIGKILL every process working under ``root`` until none is left (bounded)."""
    deadline = time.monotonic() + timeout
    while pids := processes_in(root):
        if time.monotonic() > deadline:
            log.error("processes survive in the scratch directory", extra={"p88": {"dir": str(root), "pids": pids}})
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        time.sleep(0.1)


def remove_tree(path: Path, pg_bin_dir: Path | None) -> None:
    """Delete ``path``: stop every server in it first (a data directory is never deleted under a server)."""
    if not path.exists():
        return
    owner = None if os.geteuid() != 0 else _owner_name(path)
    # Every data directory, running or not: a postmaster killed hard leaves its postmaster.pid
    # but maybe also backends or a restore_command still working in the directory.
    for control in list(path.glob("**/global/pg_control")):
        stop_server(control.parent.parent, owner, pg_bin_dir)
    for attempt in range(3):
        try:
            shutil.rmtree(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if attempt == 2:
                raise P88Error(
                    f"could not remove the drill's scratch directory {path}: {exc.strerror or exc}",
                    hint="remove it by hand once nothing runs in it; the next drill also tries",
                ) from None
            time.sleep(0.5)


def _owner_name(path: Path) -> str | None:
    try:
        uid = path.stat().st_uid
        return pwd.getpwuid(uid).pw_name if uid else None
    except (OSError, KeyError):
        return None


def reap_leftovers(work_dir: Path, pg_bin_dir: Path | None) -> list[Path]:
    """Remove scratch folders of earlier drills that could not clean up (killed): they are stale."""
    if not work_dir.is_dir():
        return []
    gone = []
    for d in sorted(work_dir.glob(f"{SCRATCH_PREFIX}*")):
        if d.is_dir():
            log.warning("removing the leftovers of an earlier drill", extra={"p88": {"dir": str(d)}})
            remove_tree(d, pg_bin_dir)
            gone.append(d)
    return gone


# -- the dump drill's cluster ----------------------------------------------------------------------


class ServerStartError(PgToolError):
    """A scratch server did not start; ``port`` is the one it was to listen on (taken since it was picked?)."""

    def __init__(self, message: str, *, port: int) -> None:
        super().__init__(message)
        self.port = port


class ScratchCluster:
    """An empty cluster of one major, made with initdb under ``base``, for a dump to be restored into."""

    def __init__(self, base: Path, *, major: int, port: int, owner: str | None, pg_bin_dir: Path | None) -> None:
        self.base, self.major, self.port, self.owner, self.pg_bin_dir = base, major, port, owner, pg_bin_dir
        self.datadir = base / "data"
        self.logfile = base / "server.log"
        self._password = secrets.token_urlsafe(24)
        from p88backup.redact import SECRETS

        SECRETS.add(self._password)  # never in a log line, whatever echoes it

    def conninfo(self) -> ConnInfo:
        params = {
            "host": "127.0.0.1",
            "port": str(self.port),
            "user": SUPERUSER,
            "dbname": "postgres",
            "sslmode": "disable",
            "application_name": "p88backup-drill",
        }
        return ConnInfo(params, self._password)

    def create(self) -> None:
        """initdb (with the backup's major) and the settings that keep it to itself."""
        initdb = server_for("initdb", self.major, self.pg_bin_dir)
        # Checked now, not after a restore: the drill cannot start a cluster without them.
        server_for("pg_ctl", self.major, self.pg_bin_dir)
        server_for("postgres", self.major, self.pg_bin_dir)
        pwfile = self.base / "superuser.pw"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(self._password + "\n")
        if self.owner:
            pw = pwd.getpwnam(self.owner)
            os.chown(pwfile, pw.pw_uid, pw.pw_gid)
        try:
            argv = [
                str(initdb.path),
                "-D",
                str(self.datadir),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-local=peer",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
            ]
            run_tool(
                argv,
                user=self.owner,
                timeout=SERVER_TIMEOUT,
                message=f"initdb {self.major} for the drill's scratch cluster",
            )
        finally:
            pwfile.unlink(missing_ok=True)
        self._write_settings()

    def _write_settings(self) -> None:
        """Our settings, after anything initdb wrote (the last line of a setting wins)."""
        conf = self.datadir / "postgresql.auto.conf"
        text = conf.read_text().split(SETTINGS_MARK, 1)[0]
        conf.write_text(
            text + SETTINGS_MARK + f"port = {self.port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = ''\n"
        )

    def move_to(self, port: int) -> None:
        """Listen on ``port`` from the next start (the cluster is not running)."""
        self.port = port
        self._write_settings()

    def start(self) -> None:
        pg_ctl = server_for("pg_ctl", self.major, self.pg_bin_dir)
        argv = [str(pg_ctl.path), "-D", str(self.datadir), "-l", str(self.logfile), "-w", "-t", str(SERVER_TIMEOUT)]
        r = run_tool([*argv, "start"], user=self.owner, timeout=SERVER_TIMEOUT + 30, check=False)
        if r.returncode != 0:
            raise ServerStartError(
                f"the drill's scratch cluster did not start: {self.log_tail() or stderr_tail(r.stderr)}",
                port=self.port,
            )

    def log_tail(self, lines: int = 5) -> str:
        try:
            return " | ".join(self.logfile.read_text(errors="replace").strip().splitlines()[-lines:])
        except OSError:
            return ""
