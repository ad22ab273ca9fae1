"""Start the real services for a person or a demo, and print their URLs.

    scripts/services up      PostgreSQL + MinIO + OpenSearch, then the export lines
    eval "$(scripts/services env)"
    scripts/services down

The pytest fixtures reuse these services when the ``P88_TEST_*`` variables
printed by ``env`` are set, instead of starting their own.
State lives in ``$P88_CACHE/services`` (outside the clone).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.harness import procs
from tests.harness.postgres import PgCluster, default_bin_dir
from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, S3Server, minio_binary

BUCKET = "p88-dev"


def state_dir() -> Path:
    return Path(os.environ.get("P88_SERVICES_DIR", procs.cache_dir() / "services"))


def _state_file() -> Path:
    return state_dir() / "state.json"


def _load() -> dict[str, object]:
    try:
        return json.loads(_state_file().read_text())  # type: ignore[no-any-return]
    except FileNotFoundError:
        return {}


def _spawn(argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """A detached child that outlives this script."""
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return proc.pid


def up() -> None:
    if _load():
        print("services already up (scripts/services down first)", file=sys.stderr)
        env()
        return
    base = state_dir()
    base.mkdir(parents=True, exist_ok=True)
    state: dict[str, object] = {}

    pg = PgCluster.create(base / "pg")
    pg.start()
    state["pg"] = {"datadir": str(pg.datadir), "port": pg.port}

    minio_port, console = procs.free_port(), procs.free_port()
    (base / "minio").mkdir(exist_ok=True)
    pid = _spawn(
        [
            str(minio_binary()),
            "server",
            str(base / "minio"),
            "--quiet",
            "--address",
            f"127.0.0.1:{minio_port}",
            "--console-address",
            f"127.0.0.1:{console}",
        ],
        base / "minio.log",
        {"MINIO_ROOT_USER": ACCESS_KEY, "MINIO_ROOT_PASSWORD": SECRET_KEY, "MINIO_BROWSER": "off"},
    )
    minio = S3Server("minio", f"http://127.0.0.1:{minio_port}", None, base, base / "minio.log")
    procs.wait_for(minio._ready, 60, "MinIO")
    minio.create_bucket(BUCKET)
    state["minio"] = {"pid": pid, "endpoint": minio.endpoint}

    os_port = procs.free_port()
    pid = _spawn(
        [
            sys.executable,
            "-m",
            "tests.harness.opensearch_node",
            "--port",
            str(os_port),
            "--workdir",
            str(base / "opensearch"),
        ],
        base / "opensearch.log",
    )
    url = f"http://127.0.0.1:{os_port}"

    def healthy() -> bool:
        import urllib.request

        with urllib.request.urlopen(url + "/_cluster/health?wait_for_status=yellow&timeout=1s", timeout=5) as r:
            return bool(r.status == 200)

    procs.wait_for(healthy, 240, "OpenSearch")
    state["opensearch"] = {"pid": pid, "url": url}
    _state_file().write_text(json.dumps(state, indent=2))
    env()


def exports() -> dict[str, str]:
    state = _load()
    if not state:
        raise SystemExit("services are not up: scripts/services up")
    pg, minio, search = state["pg"], state["minio"], state["opensearch"]
    assert isinstance(pg, dict) and isinstance(minio, dict) and isinstance(search, dict)
    return {
        "P88_DATABASE_URL": f"postgresql://postgres@127.0.0.1:{pg['port']}/postgres",
        "P88_STORAGE_URL": f"s3://{BUCKET}/backups",
        "P88_OPENSEARCH_URL": str(search["url"]),
        "AWS_ENDPOINT_URL": str(minio["endpoint"]),
        "AWS_ACCESS_KEY_ID": ACCESS_KEY,
        "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
        "AWS_DEFAULT_REGION": "us-east-1",
        "P88_TEST_PG_DATADIR": str(pg["datadir"]),
        "P88_TEST_PG_PORT": str(pg["port"]),
        "P88_TEST_MINIO_ENDPOINT": str(minio["endpoint"]),
        "P88_TEST_OPENSEARCH_URL": str(search["url"]),
    }


def env() -> None:
    for key, value in exports().items():
        print(f"export {key}={shlex.quote(value)}")


def down() -> None:
    state = _load()
    for name in ("opensearch", "minio"):
        entry = state.get(name)
        if isinstance(entry, dict):
            try:
                os.killpg(int(entry["pid"]), signal.SIGTERM)
            except ProcessLookupError:
                pass
    pg = state.get("pg")
    if isinstance(pg, dict):
        datadir = Path(str(pg["datadir"]))
        PgCluster(
            datadir, int(pg["port"]), default_bin_dir(), datadir.parent / "postgres.log", datadir.parent / "sock"
        ).destroy()
    time.sleep(1)
    import shutil

    shutil.rmtree(state_dir(), ignore_errors=True)
    print("services stopped", file=sys.stderr)


def main(argv: list[str]) -> None:
    commands = {"up": up, "down": down, "env": env}
    if len(argv) != 1 or argv[0] not in commands:
        raise SystemExit("usage: scripts/services up|env|down")
    commands[argv[0]]()


if __name__ == "__main__":
    main(sys.argv[1:])
