"""Retention after a point-in-time restore, end to end on real PostgreSQL (issue 10 item 4, DESIGN §3.6, §3.11).

Timeline 1 gets base backups B1 and B2; a restore to a time T between them is promoted as timeline 2
and becomes production (it archives into the same storage; the old primary is retired). B2 now lies
on the abandoned branch: only B1 can replay timeline 2's early history. ``expire`` must keep B1 and
the WAL it needs, and once timeline 2 has its own base backup B3, expire B2 and the abandoned
branch's WAL. Throughout, a target on timeline 2 between the fork and B3 stays restorable and
``wal-verify`` passes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.harness.archiving import P88, Archived, make_archived, psql_at, stop_restored
from tests.harness.helpers import json_out, run_cli
from tests.harness.postgres import PgCluster

ROWS = "SELECT string_agg(id::text, ',' ORDER BY id) FROM t"


def pause_then_now() -> datetime:
    """A recovery target strictly between the commits before and after it."""
    time.sleep(0.3)
    t = datetime.now(UTC)
    time.sleep(1.2)
    return t


def switch_and_wait(pg: PgCluster, store: Path) -> None:
    """Close the current WAL segment and wait until the archive has it.

    (``Archived.switch_and_wait`` compares with wal-verify's newest segment, which after a
    restore can be an abandoned timeline's segment with a higher number.)
    """
    seg = pg.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())")
    pg.sql("SELECT pg_switch_wal()")
    deadline = time.monotonic() + 60
    while not list((store / "wal" / seg[:8]).glob(f"{seg}.zst*")):
        assert time.monotonic() < deadline, f"{seg} never reached the archive"
        time.sleep(0.3)


def restore_rows(arch: Archived, target: str, name: str) -> str:
    """restore --pitr TARGET --start into a fresh directory; the table's ids there; the server stopped."""
    try:
        result = json_out(
            arch.cli("restore", "--pitr", target, "--target-dir", str(arch.tmp / name), "--start", "--json")
        )
        assert result["promoted"] is True
        return psql_at(arch.pg, int(result["port"]), ROWS)
    finally:
        stop_restored(arch, name)


def expire(arch: Archived, keep: int) -> dict[str, Any]:
    plan: dict[str, Any] = json_out(
        run_cli(["expire", "--json"], {**arch.env, "P88_RETENTION__KEEP_BASE_BACKUPS": str(keep)})
    )
    return plan


def wal_verify(arch: Archived) -> dict[str, Any]:
    report: dict[str, Any] = json_out(arch.cli("wal-verify", "--json"))
    return report


def test_expire_after_a_pitr_keeps_the_live_timeline_restorable(
    pg_factory: Callable[..., PgCluster], tmp_path: Path
) -> None:
    store = tmp_path / "store"
    arch = make_archived(pg_factory, tmp_path, f"file://{store}", "push")
    pg = arch.pg
    pg.sql("CREATE DATABASE app")
    pg.sql("CREATE TABLE t (id int PRIMARY KEY, what text)", "app")
    b1 = json_out(arch.cli("basebackup", "--json", "--wal-timeout", "120"))["id"]
    pg.sql("INSERT INTO t VALUES (1, 'before T')", "app")
    t = pause_then_now()
    pg.sql("INSERT INTO t VALUES (2, 'after T: abandoned by the restore')", "app")
    b2 = json_out(arch.cli("basebackup", "--json", "--wal-timeout", "120"))["id"]
    pg.sql("INSERT INTO t VALUES (3, 'after B2: abandoned')", "app")
    switch_and_wait(pg, store)

    # The restore becomes production: timeline 2, archiving into the same storage.
    archive_cmd = f"{P88} --config {arch.config} wal-push %p"
    restored = arch.tmp / "r-tl2"
    first = json_out(
        arch.cli(
            "restore", "--pitr", t.isoformat(), "--target-dir", str(restored), "--start", "--json",
            "--archive-mode", "on", "--set", f"archive_command={archive_cmd}",
        )
    )  # fmt: skip
    try:
        assert first["promoted"] is True and first["timeline"] == 2
        pg.stop()  # the old primary is retired
        tl2 = PgCluster(restored, int(first["port"]), pg.bindir, restored / "log" / "tl2.log", pg.socket_dir)
        prod = Archived(tl2, {**arch.env, "P88_DATABASE_URL": tl2.url()}, arch.config, arch.tmp)
        tl2.sql("INSERT INTO t VALUES (10, 'on timeline 2')", "app")
        t2 = pause_then_now()
        tl2.sql("INSERT INTO t VALUES (11, 'on timeline 2, after T2')", "app")
        switch_and_wait(tl2, store)

        # keep_base_backups = 1. Old code: kept B2 (the newest), deleted B1 and every segment
        # below B2's start on both timelines; restore --pitr T2 was then refused.
        plan = expire(arch, keep=1)
        assert restore_rows(arch, t2.isoformat(), "r-t2-first") == "1,10"
        assert wal_verify(arch)["ok"] is True
        kept = {k["id"]: k for k in plan["basebackups"]["keep"]}
        assert set(kept) == {b1, b2} and plan["basebackups"]["expire"] == []
        assert plan["basebackups"]["live_timeline"] == 2
        assert kept[b1]["branch"] == "live" and "newest" in kept[b1]["reasons"]
        assert kept[b2]["branch"] == "abandoned" and "timeline 1 past" in kept[b2]["note"]

        # Timeline 2 gets its own base backup: B2 and the abandoned branch's WAL may go now.
        b3 = json_out(prod.cli("basebackup", "--json", "--wal-timeout", "120"))
        assert b3["timeline"] == 2
        tl2.sql("INSERT INTO t VALUES (12, 'after B3')", "app")
        switch_and_wait(tl2, store)
        plan = expire(arch, keep=2)
        assert sorted(k["id"] for k in plan["basebackups"]["keep"]) == [b1, b3["id"]]
        assert plan["basebackups"]["expire"] == [b2]
        assert "abandoned branch" in plan["basebackups"]["expire_reasons"][b2]
        assert plan["wal"]["held"] is None
        assert {r["timeline"] for r in plan["wal"]["expire_ranges"]} == {1}  # nothing of timeline 2

        listed = json_out(arch.cli("list", "--kind", "basebackup", "--json"))
        assert [b["id"] for b in listed] == [b1, b3["id"]]
        assert restore_rows(arch, t2.isoformat(), "r-t2-second") == "1,10"  # only B1 reaches T2
        assert restore_rows(arch, "latest", "r-latest") == "1,10,11,12"
        report = wal_verify(arch)
        assert report["ok"] is True, report
        assert {c["id"] for c in report["base_backups"]} == {b1, b3["id"]}
    finally:
        stop_restored(arch, "r-tl2")
