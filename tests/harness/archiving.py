"""A source cluster that archives into p88backup storage (wal-push or wal-stream), and the
helpers the PITR, archive and life-cycle tests share."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tests.harness.helpers import REPO, cli_env, init_storage, run_cli
from tests.harness.postgres import PgCluster, program_runs
from tests.harness.procs import chown_for_service, service_user

P88 = str(Path(sys.executable).parent / "p88backup")


def dumpall(pg: PgCluster, port: int | None = None) -> str:
    r = subprocess.run(
        [str(pg.bindir / "pg_dumpall"), "-h", "localhost", "-p", str(port or pg.port), "-U", "postgres"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return "\n".join(ln for ln in r.stdout.splitlines() if not ln.startswith(("\\restrict", "\\unrestrict")))


def psql_at(pg: PgCluster, port: int, sql: str, db: str = "app") -> str:
    r = subprocess.run(
        pg.client("psql", "-X", "-At", "-d", db, "-c", sql, host="localhost", port=port),
        capture_output=True,
        text=True,
        timeout=300,
    )
    return r.stdout.strip() if r.returncode == 0 else f"ERROR: {r.stderr.strip()}"


@dataclass
class Archived:
    pg: PgCluster
    env: dict[str, str]
    config: Path
    tmp: Path
    streamer: subprocess.Popen[str] | None = None

    def cli(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
        """Run p88backup against this archive. ``restore --pitr`` skips pg_verifybackup where the
        cluster's major has no working one (the wheel's 18 crashes): the restored cluster is still
        compared with the source and checked page by page (pg_checksums)."""
        argv = list(args)
        if argv[:2] == ["restore", "--pitr"] and not program_runs(self.pg.bindir / "pg_verifybackup"):
            print(f"harness: no working pg_verifybackup {self.pg.major}: restore --pitr --no-verify")
            argv.append("--no-verify")
        return run_cli(argv, self.env, timeout=timeout)

    def switch_and_wait(self) -> None:
        """Close the current WAL segment and wait until the archive has it."""
        seg = self.pg.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())")
        self.pg.sql("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            report = run_cli(["wal-verify", "--json"], self.env)
            if report.stdout and seg <= (json.loads(report.stdout).get("newest_segment") or ""):
                return
            time.sleep(0.3)
        raise AssertionError(f"{seg} never reached the archive")


def make_archived(
    pg_factory: Callable[..., PgCluster],
    tmp_path: Path,
    storage_url: str,
    mode: str,
    extra_env: dict[str, str] | None = None,
) -> Archived:
    config = tmp_path / "p88backup.toml"
    config.write_text(f'storage_url = "{storage_url}"\n')
    if storage_url.startswith("file://"):
        # The server's archive_command runs as the postgres user, our CLI as root: the shared
        # parts of the store must belong to the former (deployments use one uid for both).
        from p88backup.storage.local import TMP_DIR

        store = Path(storage_url.removeprefix("file://"))
        for d in (store, store / TMP_DIR, store / "wal"):
            d.mkdir(exist_ok=True)
            chown_for_service(d)
    config.chmod(0o644)
    init_storage(cli_env(tmp_path, P88_CONFIG=str(config), **(extra_env or {})))
    settings = {"archive_mode": "off"}
    if mode == "push":
        settings = {
            "archive_mode": "on",
            "archive_command": f"'{P88} --config {config} wal-push %p'",
            "archive_timeout": "0",
        }
    pg = pg_factory("src", settings=settings)
    pg.start()  # the server and its archive_command inherit this process's environment (AWS_* for S3)
    env = cli_env(tmp_path, P88_CONFIG=str(config), P88_DATABASE_URL=pg.url("postgres"), **(extra_env or {}))
    arch = Archived(pg, env, config, tmp_path)
    if mode == "stream":
        arch.streamer = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "p88backup",
                "--log-format",
                "json",
                "wal-stream",
                "--spool",
                str(tmp_path / "spool"),
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
    return arch


def stop_streamer(arch: Archived) -> str:
    if arch.streamer is None:
        return ""
    arch.streamer.send_signal(signal.SIGTERM)
    _, err = arch.streamer.communicate(timeout=60)
    assert arch.streamer.returncode == 0, err
    return err


def stop_restored(arch: Archived, name: str) -> None:
    user = service_user()
    subprocess.run(
        [str(arch.pg.bindir / "pg_ctl"), "-D", str(arch.tmp / name), "-m", "immediate", "stop"],
        user=user,
        group=user,
        extra_groups=[] if user else None,
        capture_output=True,
        cwd="/",
        timeout=90,
    )
