"""The life of a cluster: backup, disaster, restore, the restored cluster is production, backup
again, disaster again, restore again (DESIGN §3.10, §3.11; STYLE 16).

Three generations on real PostgreSQL, archived by wal-push or by wal-stream into one storage:

1. timeline 1: base backup, writes, the incident; PITR to just before it, promoted and stopped as
   the runbook says (``restore --pitr T --start --stop``), started as production at the same
   address (same storage; with wal-stream the same spool and slot name);
2. timeline 2: its own base backup, writes, ``expire`` (keeping one base backup), then
   ``restore --pitr latest`` and to a time on timeline 2 equal production at those points;
   another incident, another PITR, production again;
3. timeline 3: base backup, writes, ``restore --pitr latest`` equals production.

``wal-verify`` passes at every step, and every restored cluster gets the integrity check.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.harness.archiving import Archived, make_archived
from tests.harness.helpers import REPO, amcheck, init_storage, json_out, table_checksums
from tests.harness.postgres import PgCluster
from tests.harness.procs import stop_process


@dataclass
class Life:
    arch: Archived
    mode: str
    tmp: Path
    streamer_log: Path
    streamer: subprocess.Popen[bytes] | None = None
    production: PgCluster | None = None
    restored: list[PgCluster] = field(default_factory=list)

    @property
    def pg(self) -> PgCluster:
        assert self.production is not None
        return self.production

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.arch.cli(*args, timeout=300)

    # -- archiving --------------------------------------------------------------------------

    def start_streamer(self) -> None:
        """wal-stream with the one spool and slot this deployment always uses (its log in a file,
        so that a chatty streamer never blocks on a full pipe)."""
        if self.mode != "stream":
            return
        with open(self.streamer_log, "ab") as out:
            self.streamer = subprocess.Popen(
                [sys.executable, "-m", "p88backup", "--log-format", "json", "wal-stream", "--spool", str(self.spool)],
                env=self.arch.env,
                cwd=REPO,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )

    def stop_streamer(self) -> None:
        if self.streamer is not None:
            stop_process(self.streamer, timeout=60)
            assert self.streamer.returncode == 0, self.streamer_log.read_text()[-3000:]
            self.streamer = None

    @property
    def spool(self) -> Path:
        return self.tmp / "spool"

    def switch_and_wait(self) -> None:
        """Close the current segment and wait until the archive has it (whichever way WAL is archived)."""
        seg = self.pg.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())")
        self.pg.sql("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            report = json_out(self.cli("wal-verify", "--json"))
            newest = str(report.get("newest_segment") or "")
            if newest[:8] == seg[:8] and newest >= seg:
                return
            time.sleep(0.3)
        log = self.streamer_log.read_text()[-3000:] if self.streamer_log.exists() else ""
        raise AssertionError(f"{seg} never reached the archive\n{log}")

    def wal_verify(self) -> dict[str, object]:
        report = json_out(self.cli("wal-verify", "--json"))
        assert report["ok"] is True, report
        return report  # type: ignore[no-any-return]

    # -- data -----------------------------------------------------------------------------

    def write(self, gen: int, note: str, rows: int = 40) -> None:
        self.pg.sql(
            "INSERT INTO life (gen, note, payload) SELECT %s, %s, md5(g::text) FROM generate_series(1, %s) g",
            "app",
            (gen, note, rows),
        )

    def checkpoint_in_time(self) -> tuple[datetime, dict[str, str]]:
        """A point in time T and the data as it was at T (commits before and after are apart)."""
        time.sleep(0.3)
        t = datetime.now(UTC)
        state = table_checksums(self.pg, "app")
        time.sleep(1.2)
        return t, state

    # -- restores -------------------------------------------------------------------------

    def restore(self, target: str, name: str, *extra: str) -> dict[str, object]:
        result = json_out(
            self.cli("restore", "--pitr", target, "--target-dir", str(self.tmp / name), "--start", "--json", *extra)
        )
        assert result["promoted"] is True, result
        return result  # type: ignore[no-any-return]

    def check_restored(self, name: str, result: dict[str, object], expected: dict[str, str]) -> None:
        """The restored (running) cluster holds exactly ``expected`` and is sound; then it is stopped."""
        port = int(result["port"])  # type: ignore[call-overload]
        d = self.tmp / name
        restored = PgCluster(d, port, self.pg.bindir, d / "log" / "check.log", self.pg.socket_dir)
        self.restored.append(restored)
        assert table_checksums(restored, "app") == expected
        amcheck(restored, "app")
        restored.stop()

    def disaster_and_recover(self, target: datetime, name: str, expected: dict[str, str]) -> dict[str, object]:
        """As the runbook: stop the archiver and the database, PITR with --start --stop into a new
        directory, start it as production at the same address, start archiving again."""
        self.stop_streamer()
        self.pg.stop()
        result = self.restore(target.isoformat(), name, "--stop")
        assert result["stopped"] is True
        d = self.tmp / name
        # Its own configuration came with the base backup: same port, same archive_command.
        new = PgCluster(d, self.pg.port, self.pg.bindir, self.tmp / f"{name}.log", self.pg.socket_dir)
        new.start()
        assert new.scalar("SELECT pg_is_in_recovery()") is False
        self.production = new
        self.start_streamer()
        assert table_checksums(new, "app") == expected
        return result


@pytest.fixture(params=["push", "stream"])
def life(request: pytest.FixtureRequest, pg_factory: Callable[..., PgCluster], tmp_path: Path) -> Iterator[Life]:
    mode = str(request.param)
    arch = make_archived(pg_factory, tmp_path, f"file://{tmp_path}/store", "push" if mode == "push" else "none")
    arch.env["P88_RETENTION__KEEP_BASE_BACKUPS"] = "1"
    init_storage(arch.env)
    lf = Life(arch, mode, tmp_path, tmp_path / "wal-stream.log", production=arch.pg)
    lf.start_streamer()
    try:
        yield lf
    finally:
        try:
            lf.stop_streamer()
        finally:
            for c in lf.restored:
                c.stop("immediate")
            if lf.production is not None and lf.production is not arch.pg:
                lf.production.stop("immediate")


@pytest.mark.matrix
@pytest.mark.timeout(600)
def test_three_generations(life: Life, pg_major: int) -> None:
    pg = life.pg
    pg.sql("CREATE DATABASE app")
    pg.sql("CREATE TABLE life (id bigserial PRIMARY KEY, gen int, note text, payload text)", "app")
    life.write(1, "before the first base backup", 500)

    # -- generation 1: timeline 1 --------------------------------------------------------------
    b1 = json_out(life.cli("basebackup", "--json", "--wal-timeout", "120"))
    assert b1["timeline"] == 1
    life.write(1, "after the base backup")
    t1, at_t1 = life.checkpoint_in_time()
    pg.sql("DELETE FROM life WHERE id % 2 = 0", "app")  # the incident
    life.switch_and_wait()
    life.wal_verify()

    first = life.disaster_and_recover(t1, "gen2", at_t1)
    assert first["timeline"] == 2 and first["timeline_followed"] == 1

    # -- generation 2: timeline 2 is production ------------------------------------------------
    life.write(2, "first writes on timeline 2")
    life.switch_and_wait()
    report = life.wal_verify()
    assert report["newest_timeline"] == 2, report
    b2 = json_out(life.cli("basebackup", "--json", "--wal-timeout", "120"))
    assert b2["timeline"] == 2
    life.write(2, "after the timeline 2 base backup")
    t2, at_t2 = life.checkpoint_in_time()
    life.write(2, "after t2")
    life.switch_and_wait()
    expire = json_out(life.cli("expire", "--json"))
    assert b2["id"] in [k["id"] for k in expire["basebackups"]["keep"]], expire
    life.wal_verify()

    latest = life.restore("latest", "r2-latest")
    assert latest["timeline_followed"] == 2 and latest["backup_id"] == b2["id"], latest
    life.check_restored("r2-latest", latest, table_checksums(life.pg, "app"))
    to_t2 = life.restore(t2.isoformat(), "r2-time")
    life.check_restored("r2-time", to_t2, at_t2)

    life.pg.sql("UPDATE life SET note = 'garbled'", "app")  # another incident
    life.switch_and_wait()
    life.wal_verify()
    second = life.disaster_and_recover(t2, "gen3", at_t2)
    assert second["timeline"] == 3 and second["timeline_followed"] == 2

    # -- generation 3: timeline 3 is production ------------------------------------------------
    b3 = json_out(life.cli("basebackup", "--json", "--wal-timeout", "120"))
    assert b3["timeline"] == 3
    life.write(3, "on timeline 3")
    life.switch_and_wait()
    life.wal_verify()
    latest3 = life.restore("latest", "r3-latest")
    assert latest3["timeline_followed"] == 3, latest3
    life.check_restored("r3-latest", latest3, table_checksums(life.pg, "app"))
