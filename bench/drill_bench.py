"""Benchmark: the time-to-restore a PITR drill measures, against pgBackRest restore + replay (DESIGN §6).

One cluster, the same base backup time and the same WAL for both tools:

1. Builds a throwaway PostgreSQL 15 cluster (pgBackRest 2.45 knows PostgreSQL up to 15) with a
   ``bench`` database from ``pgbench -i -s 60`` (about 900 MB; ``--scale``), ``archive_command``
   pushing every segment with both tools (``bench/pitr_bench.py``'s set-up: each tool its own
   storage, both run as the ``postgres`` user).
2. Takes a full base backup with each tool, then runs ``pgbench -T --load-seconds`` so that both
   have the same WAL to replay after their backup, and waits until both archives hold all of it.
3. ``--repeat`` rounds, alternating which goes first, after ``os.sync()``:

   ============================  ==========================================================
   pgbackrest restore + replay   ``pgbackrest restore --archive-mode=off`` into a new directory,
                                 ``pg_ctl start`` on a free port, until ``pg_is_in_recovery()``
                                 is false (all WAL replayed, promoted): wall time of the whole
   p88 drill --pitr              ``p88backup drill --no-dump --json``: its RTO (start of the
                                 restore to a promoted server whose checks passed); its own
                                 overhead (scratch set-up, cleanup) and the whole wall time are
                                 reported beside it
   ============================  ==========================================================

4. Prints the medians and the DESIGN §6 target: drill RTO ≤ 1.2 × pgBackRest restore + replay.

Run from the repository root with the project's venv (needs Debian's ``pgbackrest`` and
``postgresql-15``)::

    .venv/bin/python bench/drill_bench.py                                  # ~900 MB, ~10 min
    .venv/bin/python bench/drill_bench.py --scale 2 --load-seconds 5 --repeat 1   # smoke, ~2 min
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.dump_bench import describe_database, loadavg, run_timed, say, workspace  # noqa: E402
from bench.pitr_bench import (  # noqa: E402
    PGBACKREST_MAJOR,
    Tools,
    as_service,
    build_cluster,
    check_call,
    drop_inherited_settings,
    service_dir,
    service_env,
    setup_tools,
    start_pgbench,
    wait_drained,
)
from bench.procstats import refresh_bytecode  # noqa: E402
from tests.harness.procs import free_port, make_traversable  # noqa: E402

DRILL_LIMIT = 1.2  # DESIGN §6: drill RTO within 1.2 x pgbackrest restore + replay


@dataclass(frozen=True)
class Options:
    scale: int
    repeat: int
    load_seconds: int
    keep: bool
    check: bool
    workdir: Path | None


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--scale", type=int, default=60, help="pgbench scale factor (default 60, ~900 MB)")
    p.add_argument("--repeat", type=int, default=3, help="measured rounds (default 3)")
    p.add_argument("--load-seconds", type=int, default=30, help="pgbench -T after the backups: WAL to replay")
    p.add_argument("--keep", action="store_true", help="keep the work directory")
    p.add_argument("--check", action="store_true", help="exit 1 when the DESIGN §6 target is missed")
    p.add_argument("--workdir", type=Path, help="parent of the temporary work directory (default: $TMPDIR)")
    a = p.parse_args(argv)
    return Options(a.scale, a.repeat, a.load_seconds, a.keep, a.check, a.workdir)


@dataclass
class Rounds:
    pgbackrest: list[float] = field(default_factory=list)  # restore + replay, wall s
    rto: list[float] = field(default_factory=list)  # p88 drill RTO, s
    drill_wall: list[float] = field(default_factory=list)  # p88 drill process, wall s
    overhead: list[float] = field(default_factory=list)  # scratch set-up + cleanup, s
    wal_bytes: int = 0


def pgbackrest_restore_and_replay(tools: Tools, root: Path, rnd: int) -> float:
    """Wall seconds from the start of `pgbackrest restore` to a promoted server."""
    target = service_dir(root / f"pgbr-{rnd}", 0o700)
    port, sock = free_port(), service_dir(root / f"pgbr-{rnd}-sock")
    log = tools.logs / f"pgbr-restore-{rnd}.log"
    pg_ctl = str(tools.cluster.bindir / "pg_ctl")
    os.sync()
    t0 = time.monotonic()
    check_call(tools.pgbackrest("restore", f"--pg1-path={target}", "--archive-mode=off"), log)
    opts = f"-p {port} -c listen_addresses='' -c unix_socket_directories='{sock}'"
    check_call(as_service([pg_ctl, "-D", str(target), "-o", opts, "-l", str(root / f"pgbr-{rnd}.log"), "start"]), log)
    psql = [str(tools.cluster.bindir / "psql"), "-X", "-At", "-h", str(sock), "-p", str(port), "-U", "postgres"]
    try:
        while True:
            r = subprocess.run([*psql, "-c", "SELECT pg_is_in_recovery()"], capture_output=True, text=True)
            if r.returncode == 0 and r.stdout.strip() == "f":
                return time.monotonic() - t0
            if time.monotonic() - t0 > 3600:
                raise SystemExit(f"pgbackrest restore {rnd} did not promote within an hour")
            time.sleep(0.1)
    finally:
        subprocess.run(as_service([pg_ctl, "-D", str(target), "-m", "immediate", "stop"]), capture_output=True)
        shutil.rmtree(target, ignore_errors=True)


def p88_drill(tools: Tools, rnd: int) -> dict[str, Any]:
    """One `p88backup drill --no-dump --json` (as root: it runs its servers as postgres); its report."""
    os.sync()
    log = tools.logs / f"p88-drill-{rnd}.log"
    argv = [str(Path(sys.executable).parent / "p88backup"), "--config", str(tools.p88_conf), "--log-format", "json"]
    with log.open("wb") as err:
        r = subprocess.run(
            [*argv, "drill", "--no-dump", "--json"], stdout=subprocess.PIPE, stderr=err, env=service_env()
        )
    if r.returncode != 0:
        raise SystemExit(f"p88backup drill failed ({r.returncode}), see {log}")
    report: dict[str, Any] = json.loads(r.stdout)
    return report


def measure(tools: Tools, opt: Options, root: Path) -> Rounds:
    rounds = Rounds()
    for rnd in range(opt.repeat):
        order = ["pgbackrest", "p88"] if rnd % 2 == 0 else ["p88", "pgbackrest"]
        for tool in order:
            if tool == "pgbackrest":
                seconds = pgbackrest_restore_and_replay(tools, root, rnd)
                rounds.pgbackrest.append(seconds)
                say(f"round {rnd + 1}: pgbackrest restore + replay {seconds:.2f} s")
            else:
                t0 = time.monotonic()
                report = p88_drill(tools, rnd)
                wall = time.monotonic() - t0
                pitr = next(d for d in report["drills"] if d["kind"] == "pitr")
                rounds.rto.append(float(pitr["rto_seconds"]))
                rounds.overhead.append(float(pitr.get("setup_seconds") or 0) + float(pitr.get("cleanup_seconds") or 0))
                rounds.drill_wall.append(wall)
                say(f"round {rnd + 1}: p88 drill RTO {rounds.rto[-1]:.2f} s (process {wall:.2f} s)")
    return rounds


def report(rounds: Rounds, opt: Options, load_before: str) -> bool:
    base = statistics.median(rounds.pgbackrest)
    rto = statistics.median(rounds.rto)
    ratio = rto / base if base else float("nan")
    ok = ratio <= DRILL_LIMIT
    print(f"load average before measuring: {load_before}; after: {loadavg()}")
    print(f"WAL replayed after the base backups: {rounds.wal_bytes / 1024 / 1024:.0f} MB")
    print()
    print(f"{'case':50} {'median s':>9} {'runs (s)'}")
    print("-" * 80)
    print(
        f"{'pgbackrest restore + replay to promotion':50} {base:9.2f} "
        + " ".join(f"{x:.2f}" for x in rounds.pgbackrest)
    )
    print(
        f"{'p88 drill --pitr: RTO (restore to checks passed)':50} {rto:9.2f} "
        + " ".join(f"{x:.2f}" for x in rounds.rto)
    )
    print(
        f"{'p88 drill: its own overhead (set-up, cleanup)':50} {statistics.median(rounds.overhead):9.2f} "
        + " ".join(f"{x:.2f}" for x in rounds.overhead)
    )
    print(
        f"{'p88 drill: whole process':50} {statistics.median(rounds.drill_wall):9.2f} "
        + " ".join(f"{x:.2f}" for x in rounds.drill_wall)
    )
    print()
    print(f"{'DESIGN §6 target':60} {'measured':>10} {'limit':>9}  result")
    print(
        f"{'p88 drill RTO / pgbackrest restore + replay (median)':60} {ratio:9.3f}x {DRILL_LIMIT:8.2f}x  "
        + ("PASS" if ok else "MISS")
    )
    return ok


def run(opt: Options) -> int:
    dropped = drop_inherited_settings()
    if dropped:
        say(f"ignoring inherited {', '.join(dropped)}")
    with workspace("p88-drill-bench-", opt.workdir, opt.keep) as work, ExitStack() as stack:
        make_traversable(work)
        logs = work / "logs"
        logs.mkdir()
        cluster = build_cluster(work / "pg", opt.scale, logs, PGBACKREST_MAJOR)
        stack.callback(cluster.stop)
        say(describe_database(cluster))
        tools = setup_tools(cluster, work, logs)
        refresh_bytecode()
        say("base backups: pgbackrest backup --type=full, p88backup basebackup")
        check_call(tools.pgbackrest("backup", "--type=full"), logs / "pgbr-backup.log")
        check_call(tools.p88("basebackup"), logs / "p88-basebackup.log")
        start = int(cluster.scalar("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))
        say(f"pgbench -T {opt.load_seconds}: WAL both restores replay")
        if start_pgbench(cluster, opt.load_seconds, logs / "pgbench-load.log").wait() != 0:
            raise SystemExit(f"pgbench failed, see {logs / 'pgbench-load.log'}")
        cluster.sql("SELECT pg_switch_wal()")
        wait_drained(cluster)
        rounds = Rounds(wal_bytes=int(cluster.scalar("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")) - start)
        load_before = loadavg()
        say(f"{opt.repeat} rounds, alternating, load {load_before}")
        rounds = measure(tools, opt, service_dir(work / "restores"))
        rounds.wal_bytes = int(cluster.scalar("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn")) - start
        ok = report(rounds, opt, load_before)
    return 1 if opt.check and not ok else 0


def main(argv: list[str] | None = None) -> int:
    return run_timed(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
