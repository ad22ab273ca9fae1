"""DESIGN §4 for base backups: the runbook's by-hand PITR (zstd, tar, pg_verifybackup and
PostgreSQL's own recovery settings, no p88backup) restores the data."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

from tests.harness.archiving import make_archived
from tests.harness.helpers import json_out, ok
from tests.harness.postgres import PgCluster
from tests.harness.procs import free_port, service_user


def test_base_backup_and_wal_restore_by_hand(pg_factory: Callable[..., PgCluster], tmp_path: Path) -> None:
    store = tmp_path / "store"
    arch = make_archived(pg_factory, tmp_path, f"file://{store}", "push")
    arch.pg.sql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS x")
    bb = json_out(arch.cli("basebackup", "--json"))["id"]
    arch.pg.sql("INSERT INTO t SELECT generate_series(1001, 1500)")
    arch.switch_and_wait()
    expected = arch.pg.scalar("SELECT count(*) || ':' || sum(x) FROM t")

    pgdata = tmp_path / "by-hand" / "pgdata"
    bindir = arch.pg.bindir
    # the commands of docs/BU_recovery.md §6, with this test's paths
    script = f"""
        set -euo pipefail
        mkdir -p -m 700 {pgdata}
        zstd -d -c {store}/basebackups/{bb}/base.tar.zst | tar -x -C {pgdata}
        {bindir}/pg_verifybackup --no-parse-wal {pgdata}
        cat >> {pgdata}/postgresql.auto.conf <<'EOF'
restore_command = 'f={store}/wal/$(echo %f | cut -c1-8)/%f.zst; test -f $f || exit 1; zstd -d -q -c $f > %p'
recovery_target_action = 'promote'
archive_mode = 'off'
EOF
        touch {pgdata}/recovery.signal
    """
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    user = service_user()
    if user:
        ok_chown = subprocess.run(["chown", "-R", user, str(pgdata.parent)], capture_output=True)
        assert ok_chown.returncode == 0
    restored = PgCluster(pgdata, free_port(), bindir, pgdata.parent / "server.log", arch.pg.socket_dir)
    with open(pgdata / "postgresql.auto.conf", "a") as fh:
        fh.write(f"port = {restored.port}\n")
    restored.start(timeout=120)
    try:
        import time

        deadline = time.monotonic() + 60
        while restored.scalar("SELECT pg_is_in_recovery()") and time.monotonic() < deadline:
            time.sleep(0.3)
        assert restored.scalar("SELECT pg_is_in_recovery()") is False
        assert restored.scalar("SELECT count(*) || ':' || sum(x) FROM t") == expected
    finally:
        restored.stop("immediate")
    ok(arch.cli("wal-verify"))
