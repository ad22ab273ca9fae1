"""The real Docker Compose CLI, built from its Go module, to validate ``compose/``.

There is no Docker engine on the test machines, but ``docker compose config``
needs none: it loads, interpolates, merges and validates a project exactly as
``up`` would before talking to the engine. The CLI is built once from the Go
module proxy (``/work/shared/notes/compose-cli.md``) and cached with its module
and build caches under ``P88_CACHE``, outside the clone.

``go install github.com/docker/compose/v5/cmd@VERSION`` is refused (the
module's go.mod has ``exclude`` directives), so the build runs inside a copy of
the downloaded module, where its own go.mod is the main module.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.harness.postgres import PgCluster
from tests.harness.procs import cache_dir, service_user

REPO = Path(__file__).resolve().parents[2]

COMPOSE_MODULE = "github.com/docker/compose/v5"
# v5.6.0 builds unpatched with Go 1.26; v5.7.x needs a newer toolchain and a dependency the
# proxy refuses (see the note). Move only to a release that builds.
COMPOSE_VERSION = "v5.6.0"
DOWNLOAD_TIMEOUT = 600
BUILD_TIMEOUT = 1200
RUN_TIMEOUT = 60


def _workdir() -> Path:
    return cache_dir() / f"compose-{COMPOSE_VERSION}"


def compose_binary(build: bool = True) -> Path:
    """The pinned Compose CLI, built once into the cache (safe for several processes at once)."""
    work = _workdir()
    target = work / "docker-compose"
    if target.exists():
        return target
    if not build:
        raise FileNotFoundError(target)
    go = shutil.which("go")
    if go is None:
        raise RuntimeError("the Compose CLI is built from its Go module and needs the 'go' command")
    work.mkdir(parents=True, exist_ok=True)
    with open(work / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():
            return target  # another process built it while we waited
        env = {
            **os.environ,
            "GOMODCACHE": str(work / "gomodcache"),
            "GOCACHE": str(work / "gocache"),
            # -mod=mod: the module's go.sum need not list every package of the build graph.
            "GOFLAGS": "-mod=mod -buildvcs=false",
            "CGO_ENABLED": "0",
        }
        dl = work / "dl"
        dl.mkdir(exist_ok=True)
        if not (dl / "go.mod").exists():
            _go([go, "mod", "init", "dl"], dl, env, DOWNLOAD_TIMEOUT, "go mod init")
        out = _go(
            [go, "mod", "download", "-json", f"{COMPOSE_MODULE}@{COMPOSE_VERSION}"],
            dl,
            env,
            DOWNLOAD_TIMEOUT,
            f"downloading {COMPOSE_MODULE}@{COMPOSE_VERSION}",
        )
        module_dir = Path(json.loads(out)["Dir"])
        # The module cache is read-only, and the build must write go.sum: build in a copy.
        src = work / "src"
        shutil.rmtree(src, ignore_errors=True)
        shutil.copytree(module_dir, src)
        for root, dirs, files in os.walk(src):
            for name in [*dirs, *files]:
                path = Path(root, name)
                if not path.is_symlink():
                    path.chmod(path.stat().st_mode | 0o200)
        tmp = work / "docker-compose.tmp"
        _go(
            [
                go,
                "build",
                "-trimpath",
                "-ldflags",
                f"-s -w -X {COMPOSE_MODULE}/internal.Version={COMPOSE_VERSION}",
                "-o",
                str(tmp),
                "./cmd",
            ],
            src,
            env,
            BUILD_TIMEOUT,
            "building the Compose CLI",
        )
        os.replace(tmp, target)  # the binary appears complete or not at all
        shutil.rmtree(src, ignore_errors=True)
    return target


def _go(argv: list[str], cwd: Path, env: dict[str, str], timeout: float, what: str) -> str:
    try:
        r = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{what}: no result after {timeout:.0f}s") from None
    if r.returncode != 0:
        raise RuntimeError(f"{what} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def run_compose(
    args: list[str], *, cwd: Path, variables: dict[str, str], home: Path, binary: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the Compose CLI with only ``variables`` in its environment (``env -i``).

    Nothing of the caller leaks in: no COMPOSE_* variable, no ~/.docker, no
    shell variable that would satisfy a ``${VAR:?}`` the file requires.
    """
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), **variables}
    return subprocess.run(
        [str(binary or compose_binary()), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )


def run_initdb_script(cluster: PgCluster, database: str, env: dict[str, str]) -> None:
    """compose/initdb/10-p88backup-role.sh as the db image's entrypoint runs it at the first start: as
    postgres, with PGDATA, POSTGRES_USER/DB and the passwords in the environment, psql reaching the server."""
    user = service_user()
    r = subprocess.run(
        ["bash", str(REPO / "compose" / "initdb" / "10-p88backup-role.sh")],
        env={
            "PATH": f"{cluster.bindir}:/usr/bin:/bin",
            "PGDATA": str(cluster.datadir),
            "PGHOST": str(cluster.socket_dir),
            "PGPORT": str(cluster.port),
            "POSTGRES_USER": "postgres",
            "POSTGRES_DB": database,
            **env,
        },
        user=user,
        group=user,
        extra_groups=[] if user else None,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr
