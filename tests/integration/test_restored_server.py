"""Waiting for a restored server is bounded by what waiting can cure: a server that will never let
us in (wrong role, password, pg_hba) is reported at once, not after --timeout (an hour by default)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from p88backup.core.pitr.server import RestoredServer
from p88backup.errors import PitrTargetError
from p88backup.pg.conn import ConnInfo
from tests.harness.postgres import PgCluster


def test_a_server_that_refuses_our_role_fails_at_once(pg: PgCluster, tmp_path: Path) -> None:
    # Stand-in for a restored data directory whose server runs (on the shared cluster's port).
    datadir = tmp_path / "restored"
    datadir.mkdir()
    (datadir / "PG_VERSION").write_text(f"{pg.version_num() // 10000}\n")
    (datadir / "postmaster.pid").write_text("1\n")
    server = RestoredServer(datadir, owner=None, env={}, port=pg.port, pg_bin_dir=pg.bindir, timeout=300)
    t0 = time.monotonic()
    with pytest.raises(PitrTargetError, match="refuses our connection.*no_such_role"):
        server.wait_promoted(ConnInfo({"user": "no_such_role"}))
    assert time.monotonic() - t0 < 30
