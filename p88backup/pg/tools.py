"""Finding the PostgreSQL client and server programs that fit a server version.

pg_dump must be at least as new as the server it dumps; server programs
(postgres, pg_ctl) must match a data directory's major version exactly.
Debian installs each major version under ``/usr/lib/postgresql/N/bin``;
``pg_bin_dir`` in the settings overrides the search. It may name several
directories, separated by ``:`` as in ``PATH`` (a list in the TOML file):
one directory is too narrow when server programs must match a data
directory's major while the newest pg_dump lives elsewhere, or when one host
backs up clusters of several majors from tools that are not laid out the
Debian way.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from p88backup.errors import PgToolError

DEBIAN_GLOB = "/usr/lib/postgresql/*/bin"
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True)
class Tool:
    name: str
    path: Path
    major: int
    version: str

    def __str__(self) -> str:
        return str(self.path)


@lru_cache(maxsize=64)
def _version_of(path: str) -> tuple[int, str] | None:
    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _VERSION_RE.search(out)
    if not m:
        return None
    return int(m.group(1)), out.strip().split(")", 1)[-1].strip().split()[0]


def search_dirs(bin_dir: Path | None) -> list[Path]:
    """The directories a ``pg_bin_dir`` setting names, in order (``:``-separated, like ``PATH``)."""
    if bin_dir is None:
        return []
    return [Path(p) for p in str(bin_dir).split(os.pathsep) if p]


def candidates(name: str, bin_dir: Path | None = None) -> list[Tool]:
    """Every installed ``name`` we can find, newest major first (the first directory wins a tie)."""
    paths: list[str] = []
    if bin_dir is not None:
        paths.extend(str(d / name) for d in search_dirs(bin_dir))
    else:
        paths.extend(os.path.join(d, name) for d in glob.glob(DEBIAN_GLOB))
        on_path = shutil.which(name)
        # Debian's pg_wrapper only dispatches to the versioned dirs scanned above.
        if on_path and not os.path.realpath(on_path).endswith("pg_wrapper"):
            paths.append(os.path.realpath(on_path))
    tools: dict[str, Tool] = {}
    for p in paths:
        if p in tools or not os.access(p, os.X_OK):
            continue
        v = _version_of(p)
        if v is not None:
            tools[p] = Tool(name, Path(p), v[0], v[1])
    return sorted(tools.values(), key=lambda t: -t.major)  # stable: search order within a major


def client_for(name: str, server_major: int, bin_dir: Path | None = None) -> Tool:
    """A client tool able to talk to ``server_major``: the same major if
    installed, else the oldest newer one."""
    found = candidates(name, bin_dir)
    fitting = [t for t in found if t.major >= server_major]
    if not fitting:
        have = ", ".join(f"{t.major} ({t.path})" for t in found) or "none"
        where = f" in {bin_dir}" if bin_dir else ""
        raise PgToolError(
            f"{name} {server_major} or newer is needed for a PostgreSQL {server_major} server; found{where}: {have}",
            hint=f"install postgresql-client-{server_major} or set P88_PG_BIN_DIR to its bin directory",
        )
    exact = [t for t in fitting if t.major == server_major]
    return exact[0] if exact else min(fitting, key=lambda t: t.major)


def server_for(name: str, major: int, bin_dir: Path | None = None) -> Tool:
    """A server program (postgres, pg_ctl, initdb) of exactly ``major``."""
    found = candidates(name, bin_dir)
    for t in found:
        if t.major == major:
            return t
    # Say what was found: "not installed" alone sends people looking for a missing package
    # when the cause is a pg_bin_dir that points at another major.
    have = ", ".join(f"{t.major} ({t.path})" for t in found) or "none"
    where = f" in {bin_dir}" if bin_dir else ""
    raise PgToolError(
        f"{name} of PostgreSQL {major} is needed (the data directory is version {major}) and is not installed;"
        f" found{where}: {have}",
        hint=f"install postgresql-{major} or set P88_PG_BIN_DIR to its bin directory",
    )


def major_of(server_version_num: int) -> int:
    return server_version_num // 10000
