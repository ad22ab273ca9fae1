"""Benchmark: p88backup's PITR commands against pgBackRest 2.45 (DESIGN §6).

What it does, in one run, on one cluster and the same data:

1. Builds a throwaway PostgreSQL cluster (``tests.harness.postgres``) with
   ``archive_mode = on`` and a ``bench`` database made by ``pgbench -i -s 60``
   (about 900 MB; ``--scale`` shrinks it). As root, the server, its
   ``archive_command`` *and every measured command of both tools* run as the
   ``postgres`` user (``setpriv --reuid --regid --clear-groups``: one exec, no
   PAM): pgBackRest must run as the data directory's owner, and p88backup
   shares its storage with the ``archive_command``. Both tools get their own
   storage under the work directory: a pgBackRest posix repo (``compress-type
   = zst``, ``compress-level = 3``, ``process-max = 2``, ``start-fast``,
   ``archive-check``) and a p88backup ``file://`` store, each configured by a
   file (``--config``). Inherited ``P88_*`` / ``PGBACKREST_*`` variables are
   dropped so nothing overrides those files, and stale ``.pyc`` files of
   p88backup are recompiled first (the service user cannot rewrite those of
   a root-owned checkout; an installed package has them compiled).
2. Base backup and restore, measured round-robin with one warm-up round
   (``dump_bench.measure``: ``os.sync()`` before every run, failed runs are
   reported and run again), medians of ``--repeat`` runs:

   =====================================  =========================================================
   pgbackrest backup                      ``pgbackrest --stanza=bench backup --type=full``
   p88 basebackup                         ``p88backup basebackup``
   pgbackrest restore                     ``pgbackrest --stanza=bench restore --pg1-path=DIR``
   p88 restore --pitr latest              ``p88backup restore --pitr latest --target-dir DIR``
                                          (layout + pg_verifybackup + recovery settings, no start)
   p88 restore --pitr latest --no-verify  the same without pg_verifybackup: what verifying costs
   =====================================  =========================================================

   While the backups run, ``archive_command`` pushes every segment with both
   tools (each backup waits until its own archive has its WAL); the measured
   tool's push goes first, so neither backup waits for the other tool's push.
   Restores go into a fresh empty directory each (removed after the run).
   Every backup is kept: the restores restore the newest one.
3. ``wal-push`` latency: a 2-client pgbench writes ``--segments`` fresh WAL
   segments, which are copied out of ``pg_wal`` into the ``pg_wal`` of a
   stand-in data directory (a copy of ``global/pg_control`` and
   ``PG_VERSION``: what ``pgbackrest archive-push`` reads to check the
   stanza). In each of ``--repeat`` rounds, each tool pushes every segment
   once, to its own fresh archive (a new p88 store; a new pgBackRest repo
   made with ``stanza-create``), alternating which tool goes first. The
   server is idle meanwhile (archiver drained, checkpoint done). Reported:
   p50/p90/max wall time per push and the p50 ratio; also the start-up
   floor of ``p88backup wal-push --help``.
4. Archive backlog: ``archive_command`` = one tool alone, then a
   ``pgbench -c 2 -j 2 -T --load-seconds`` write load; every second
   ``pg_stat_archiver`` and the ``.ready`` files in ``pg_wal/archive_status``
   are sampled; after the load, the time until no ``.ready`` file is left.
   Every run starts right after a CHECKPOINT, so all start with the same
   burst of full-page writes.
   Each tool ``--repeat`` times, alternating.
5. Prints the tables and the DESIGN §6 targets with PASS/MISS (``--check``
   exits 1 on a MISS), then stops the server and removes the work directory
   unless ``--keep``.

Run from the repository root (``tests`` must be importable)::

    .venv/bin/python bench/pitr_bench.py                                        # full size, ~10 min
    .venv/bin/python bench/pitr_bench.py --scale 2 --repeat 1 --segments 4 --load-seconds 10   # smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import pwd
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.dump_bench import (  # noqa: E402
    DB_NAME,
    MIB,
    Case,
    CaseResult,
    Context,
    LocalDestination,
    Verdict,
    case_verdicts,
    cpu_breakdown,
    describe_database,
    failure_report,
    fmt,
    loadavg,
    measure,
    postgres_pids,
    results_table,
    run_pgbench_init,
    run_timed,
    say,
    verdict_table,
    workspace,
)
from bench.procstats import RunStats, refresh_bytecode, run_measured  # noqa: E402
from tests.harness.postgres import PgCluster  # noqa: E402
from tests.harness.procs import make_traversable, service_user, stop_process  # noqa: E402

P88 = Path(sys.executable).parent / "p88backup"
STANZA = "bench"

# DESIGN §6
BASEBACKUP_LIMIT = 1.2
RESTORE_LIMIT = 1.2
WAL_PUSH_LIMIT = 2.0
BACKLOG_LIMIT = 2  # .ready files: "no archive backlog"

CLUSTER_SETTINGS = {
    "archive_mode": "on",
    "archive_command": "'/bin/true'",  # while loading; each phase sets its own
    "max_wal_size": "'2GB'",
    "wal_keep_size": "'1GB'",  # the fresh segments stay in pg_wal until copied
}
PGBENCH_CLIENTS = 2
SEGMENT_TIMEOUT = 600.0  # seconds for pgbench to write --segments segments
DRAIN_TIMEOUT = 300.0  # seconds for the archiver to catch up


# -- options ----------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    scale: int
    repeat: int
    segments: int
    load_seconds: int
    keep: bool
    check: bool
    workdir: Path | None


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", type=int, default=60, help="pgbench scale factor (default 60, ~900 MB)")
    p.add_argument("--repeat", type=int, default=3, help="measured runs/rounds per case (default 3)")
    p.add_argument("--segments", type=int, default=25, help="fresh WAL segments pushed per round (default 25)")
    p.add_argument("--load-seconds", type=int, default=60, help="pgbench -T of each backlog run (default 60)")
    p.add_argument("--keep", action="store_true", help="keep the work directory (cluster, repos, logs)")
    p.add_argument("--check", action="store_true", help="exit 1 when a DESIGN §6 target is missed")
    p.add_argument("--workdir", type=Path, help="parent of the temporary work directory (default: $TMPDIR)")
    a = p.parse_args(argv)
    if min(a.scale, a.repeat, a.segments, a.load_seconds) < 1:
        p.error("--scale, --repeat, --segments and --load-seconds must be >= 1")
    return Options(a.scale, a.repeat, a.segments, a.load_seconds, a.keep, a.check, a.workdir)


# -- running as the service user -----------------------------------------------


def as_service(argv: Sequence[str]) -> list[str]:
    """``argv`` run as the server's user (as root: postgres, its own group only)."""
    user = service_user()
    if user is None:
        return [str(a) for a in argv]
    return ["setpriv", f"--reuid={user}", f"--regid={user}", "--clear-groups", "--", *map(str, argv)]


def service_env() -> dict[str, str]:
    """Our environment without anything that would override the tools' config files."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("P88_", "PGBACKREST_", "PG", "AWS_"))}
    user = service_user()
    if user is not None:
        env.update(HOME=pwd.getpwnam(user).pw_dir, USER=user, LOGNAME=user)
    return env


def service_dir(path: Path, mode: int = 0o755) -> Path:
    """A directory that the service user owns."""
    path.mkdir(parents=True, exist_ok=True)
    user = service_user()
    if user is not None:
        shutil.chown(path, user, user)
    os.chmod(path, mode)
    return path


def check_call(argv: Sequence[str], log: Path) -> None:
    """Untimed set-up step (as given), output to ``log``; raises CommandFailed."""
    run_measured(argv, env=service_env(), log_path=log)


def sql_literal(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


# -- the two tools ----------------------------------------------------------------


@dataclass(frozen=True)
class Tools:
    """Both tools' storage and configuration for one cluster, under ``root`` (owned by the service user)."""

    cluster: PgCluster
    root: Path
    logs: Path

    @property
    def pgbr_conf(self) -> Path:
        return self.root / "pgbackrest.conf"

    @property
    def pgbr_repo(self) -> Path:
        return self.root / "pgbackrest" / "repo"

    @property
    def p88_conf(self) -> Path:
        return self.root / "p88backup.toml"

    @property
    def p88_store(self) -> Path:
        return self.root / "p88" / "store"

    def pgbackrest_argv(self, *args: str) -> list[str]:
        return [shutil.which("pgbackrest") or "pgbackrest", f"--config={self.pgbr_conf}", f"--stanza={STANZA}", *args]

    def p88_argv(self, *args: str, config: Path | None = None) -> list[str]:
        return [str(P88), "--config", str(config or self.p88_conf), "--log-format", "json", *args]

    def pgbackrest(self, *args: str) -> list[str]:
        return as_service(self.pgbackrest_argv(*args))

    def p88(self, *args: str, config: Path | None = None) -> list[str]:
        return as_service(self.p88_argv(*args, config=config))

    def push_command(self, tool: str) -> str:
        """One tool's part of archive_command (the server already runs as the service user)."""
        argv = self.pgbackrest_argv("archive-push") if tool == "pgbackrest" else self.p88_argv("wal-push")
        return shlex.join(argv) + " %p"

    def set_archive_command(self, *tools: str) -> None:
        command = " && ".join(self.push_command(t) for t in tools) if tools else "/bin/true"
        self.cluster.set(archive_command=sql_literal(command))


def write_pgbackrest_conf(tools: Tools) -> None:
    base = tools.root / "pgbackrest"
    dirs = {name: service_dir(base / name) for name in ("repo", "log", "lock", "spool")}
    c = tools.cluster
    tools.pgbr_conf.write_text(
        "[global]\n"
        f"repo1-path={dirs['repo']}\nrepo1-retention-full=99\n"
        f"log-path={dirs['log']}\nlock-path={dirs['lock']}\nspool-path={dirs['spool']}\n"
        "compress-type=zst\ncompress-level=3\nprocess-max=2\nstart-fast=y\narchive-check=y\n\n"
        f"[{STANZA}]\npg1-path={c.datadir}\npg1-port={c.port}\npg1-socket-path={c.socket_dir}\npg1-user=postgres\n"
    )
    os.chmod(tools.pgbr_conf, 0o644)


def write_p88_conf(path: Path, store: Path, tools: Tools) -> Path:
    settings = {
        "storage_url": f"file://{service_dir(store)}",
        "database_url": tools.cluster.url("postgres"),
        "pg_bin_dir": str(tools.cluster.bindir),
        "work_dir": str(service_dir(tools.root / "p88" / "work")),
        "lock_dir": str(service_dir(tools.root / "p88" / "locks")),
    }
    path.write_text("".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    os.chmod(path, 0o644)
    check_call(tools.p88("init", config=path), tools.logs / f"init-{store.name}.log")  # every store is set up once
    return path


def setup_tools(cluster: PgCluster, work: Path, logs: Path) -> Tools:
    tools = Tools(cluster, service_dir(work / "svc"), logs)
    write_pgbackrest_conf(tools)
    write_p88_conf(tools.p88_conf, tools.p88_store, tools)
    check_call(tools.pgbackrest("stanza-create"), logs / "stanza-create.log")
    tools.set_archive_command("pgbackrest", "p88")
    cluster.sql("SELECT pg_switch_wal()")
    return tools


# -- the cluster ----------------------------------------------------------------


# pgBackRest 2.45 (Debian 12's) knows PostgreSQL up to 15: both tools are measured on Debian's 15.
PGBACKREST_MAJOR = 15


def build_cluster(base: Path, scale: int, logs: Path, major: int = PGBACKREST_MAJOR) -> PgCluster:
    cluster = PgCluster.create(base, settings=CLUSTER_SETTINGS, major=major)
    cluster.start()
    t0 = time.monotonic()
    say(f"building database {DB_NAME}: pgbench -i -s {scale} ...")
    cluster.sql(f"CREATE DATABASE {DB_NAME}")
    if run_pgbench_init(cluster, scale, logs / "pgbench-init.log").wait() != 0:
        raise SystemExit(f"pgbench -i failed, see {logs / 'pgbench-init.log'}")
    cluster.sql("CHECKPOINT")
    say(f"built database in {time.monotonic() - t0:.0f} s")
    return cluster


def start_pgbench(cluster: PgCluster, seconds: int, log: Path, pgoptions: str = "") -> subprocess.Popen[bytes]:
    argv = cluster.client(
        "pgbench", "-c", str(PGBENCH_CLIENTS), "-j", str(PGBENCH_CLIENTS), "-T", str(seconds), DB_NAME
    )
    with log.open("wb") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env={**os.environ, "PGOPTIONS": pgoptions})


def pgbench_tps(log: Path) -> float | None:
    m = re.search(r"tps = ([\d.]+) \(without initial connection time\)", log.read_text(errors="replace"))
    return float(m.group(1)) if m else None


def current_wal_file(cluster: PgCluster) -> str:
    return str(cluster.scalar("SELECT pg_walfile_name(pg_current_wal_lsn())"))


def current_lsn(cluster: PgCluster) -> int:
    return int(cluster.scalar("SELECT pg_current_wal_lsn() - '0/0'::pg_lsn"))


def ready_files(cluster: PgCluster) -> int:
    return sum(1 for n in os.listdir(cluster.datadir / "pg_wal" / "archive_status") if n.endswith(".ready"))


def wait_drained(cluster: PgCluster, timeout: float = DRAIN_TIMEOUT) -> float:
    """Seconds until the archiver has no .ready file left."""
    t0 = time.monotonic()
    while ready_files(cluster):
        if time.monotonic() - t0 > timeout:
            raise SystemExit(f"the archiver did not catch up within {timeout:.0f} s; see {cluster.logfile}")
        time.sleep(0.2)
    return time.monotonic() - t0


# -- base backup and restore --------------------------------------------------------


@dataclass
class NewestBackup(LocalDestination):
    """Where each run adds one backup directory under ``root``; kept, since restores need them."""

    def stored_bytes(self, run: str) -> int:
        dirs = [d for d in self.root.iterdir() if d.is_dir() and not d.is_symlink() and d.name[0].isdigit()]
        return super().stored_bytes(max(dirs, key=lambda d: d.stat().st_mtime).name) if dirs else 0

    def discard(self, run: str) -> None:
        pass


@dataclass(frozen=True)
class ToolCase(Case):
    """A dump_bench Case with a given command: ``argv(run)`` also prepares the run (untimed)."""

    argv: Callable[[str], list[str]] = field(kw_only=True)

    def command(self, ctx: Context, run: str) -> list[str]:
        return self.argv(run)

    def env(self, ctx: Context, run: str) -> dict[str, str]:
        return service_env()


def backup_argv(tools: Tools, tool: str) -> Callable[[str], list[str]]:
    """The backup command; first the archive_command is reordered to push with ``tool`` first."""
    other = "p88" if tool == "pgbackrest" else "pgbackrest"
    command = tools.pgbackrest("backup", "--type=full") if tool == "pgbackrest" else tools.p88("basebackup")

    def argv(run: str) -> list[str]:
        tools.set_archive_command(tool, other)
        return command

    return argv


def restore_argv(tools: Tools, dest: LocalDestination, tool: str, *extra: str) -> Callable[[str], list[str]]:
    def argv(run: str) -> list[str]:
        target = service_dir(dest.root / run, 0o700)  # empty, as both tools want it
        if tool == "pgbackrest":
            return tools.pgbackrest("restore", f"--pg1-path={target}")
        return tools.p88("restore", "--pitr", "latest", "--target-dir", str(target), *extra)

    return argv


def backup_restore_cases(tools: Tools) -> list[Case]:
    pgbr_repo = NewestBackup(tools.pgbr_repo / "backup" / STANZA, "pgbackrest repo")
    p88_store = NewestBackup(tools.p88_store / "basebackups", "p88 store")
    restored = LocalDestination(service_dir(tools.root / "restore"), "restored data directory")
    return [
        ToolCase(
            "pgbr-backup", "pgbackrest backup --type=full", "raw", pgbr_repo, argv=backup_argv(tools, "pgbackrest")
        ),
        ToolCase(
            "p88-backup",
            "p88 basebackup",
            "p88",
            p88_store,
            baseline="pgbr-backup",
            limit=BASEBACKUP_LIMIT,
            argv=backup_argv(tools, "p88"),
        ),
        ToolCase(
            "pgbr-restore", "pgbackrest restore", "raw", restored, argv=restore_argv(tools, restored, "pgbackrest")
        ),
        ToolCase(
            "p88-restore",
            "p88 restore --pitr latest",
            "p88",
            restored,
            baseline="pgbr-restore",
            limit=RESTORE_LIMIT,
            argv=restore_argv(tools, restored, "p88"),
        ),
        ToolCase(
            "p88-restore-nv",
            "p88 restore --pitr, --no-verify",
            "p88",
            restored,
            baseline="pgbr-restore",
            argv=restore_argv(tools, restored, "p88", "--no-verify"),
        ),
    ]


# -- wal-push latency ---------------------------------------------------------------


def stand_in_datadir(cluster: PgCluster, root: Path) -> Path:
    """``root`` with a copy of pg_control and PG_VERSION: what archive-push checks for the stanza."""
    service_dir(root, 0o700)
    service_dir(root / "global", 0o700)
    service_dir(root / "pg_wal", 0o700)
    for rel in ("global/pg_control", "PG_VERSION"):
        copy_for_service(cluster.datadir / rel, root / rel)
    return root


def copy_for_service(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    user = service_user()
    if user is not None:
        shutil.chown(dst, user, user)
    os.chmod(dst, 0o600)


def wal_segment_bytes(cluster: PgCluster) -> int:
    return int(cluster.scalar("SELECT setting::bigint FROM pg_settings WHERE name = 'wal_segment_size'"))


def write_wal(cluster: PgCluster, segments: int, log: Path) -> tuple[str, str]:
    """Run pgbench until ``segments`` more segments are complete: (WAL file before, WAL file after)."""
    seg_bytes, start, lsn0 = wal_segment_bytes(cluster), current_wal_file(cluster), current_lsn(cluster)
    # Asynchronous commit: the same kind of WAL, written faster than one fsync per commit allows.
    load = start_pgbench(cluster, int(SEGMENT_TIMEOUT), log, "-c synchronous_commit=off")
    try:
        deadline = time.monotonic() + SEGMENT_TIMEOUT
        while (current_lsn(cluster) // seg_bytes) - (lsn0 // seg_bytes) <= segments:
            if load.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"pgbench did not write {segments} WAL segments; see {log}")
            time.sleep(0.2)
        return start, current_wal_file(cluster)
    finally:
        stop_process(load)


def fresh_segments(cluster: PgCluster, count: int, pg_wal: Path, log: Path) -> list[Path]:
    """``count`` complete segments that pgbench just wrote, copied into ``pg_wal``."""
    start, end = write_wal(cluster, count, log)
    names = sorted(n for n in os.listdir(cluster.datadir / "pg_wal") if len(n) == 24 and start < n < end)[-count:]
    for name in names:
        copy_for_service(cluster.datadir / "pg_wal" / name, pg_wal / name)
    return [pg_wal / n for n in names]


@dataclass(frozen=True)
class Pusher:
    """One tool's push of a WAL file into its archive for one round."""

    name: str
    command: Callable[[Path], list[str]]
    archive: Path  # what this round's pushes stored


def round_pushers(tools: Tools, datadir: Path, rnd: int) -> list[Pusher]:
    """Fresh archives for round ``rnd``: a new pgBackRest repo with its stanza, a new p88 store."""
    base = service_dir(tools.root / "walpush" / f"round{rnd}")
    repo = service_dir(base / "pgbackrest-repo")
    check_call(tools.pgbackrest(f"--repo1-path={repo}", "stanza-create"), tools.logs / f"stanza-create-{rnd}.log")
    p88_conf = write_p88_conf(base / "p88backup.toml", base / "p88-store", tools)
    return [
        Pusher(
            "pgbackrest archive-push",
            lambda p: tools.pgbackrest(f"--repo1-path={repo}", f"--pg1-path={datadir}", "archive-push", str(p)),
            repo / "archive",
        ),
        Pusher("p88 wal-push", lambda p: tools.p88("wal-push", str(p), config=p88_conf), base / "p88-store" / "wal"),
    ]


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


@dataclass
class PushResults:
    segments: int
    latencies: dict[str, list[RunStats]] = field(default_factory=dict)  # tool -> every push
    stored: dict[str, list[int]] = field(default_factory=dict)  # tool -> bytes stored per round
    startup: list[RunStats] = field(default_factory=list)  # p88backup wal-push --help: start-up floor

    def p50(self, tool: str) -> float:
        return statistics.median(s.seconds for s in self.latencies[tool])


def push_round(tools: Tools, segments: list[Path], rnd: int, res: PushResults) -> None:
    pushers = round_pushers(tools, segments[0].parent.parent, rnd)
    for i, seg in enumerate(segments):
        for p in pushers if (i + rnd) % 2 == 0 else pushers[::-1]:
            os.sync()
            log = tools.logs / f"push-{rnd}-{seg.name}-{p.name.split()[0]}.log"
            res.latencies.setdefault(p.name, []).append(run_measured(p.command(seg), env=service_env(), log_path=log))
    for p in pushers:
        res.stored.setdefault(p.name, []).append(tree_bytes(p.archive))
    say(
        f"  wal-push round {rnd + 1}: "
        + ", ".join(f"{p.name} p50 {p50_ms(res.latencies[p.name][-len(segments) :]):.0f} ms" for p in pushers)
        + f"  load {loadavg()}"
    )


def measure_wal_push(tools: Tools, segments: list[Path], repeat: int) -> PushResults:
    res = PushResults(len(segments))
    for rnd in range(repeat):
        push_round(tools, segments, rnd, res)
    res.startup = [
        run_measured(tools.p88("wal-push", "--help"), env=service_env(), log_path=tools.logs / "help.log")
        for _ in segments
    ]
    return res


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def p50_ms(samples: Sequence[RunStats]) -> float:
    return float(statistics.median(s.seconds for s in samples)) * 1000


def push_p50_ratio(res: PushResults) -> float:
    return res.p50("p88 wal-push") / res.p50("pgbackrest archive-push")


def latency_row(label: str, runs: list[RunStats], stored: str) -> str:
    ms = [s.seconds * 1000 for s in runs]
    cpu = statistics.median(s.cpu_total for s in runs) * 1000
    return (
        f"{label:<30} {len(ms):6d} {statistics.median(ms):7.0f} {percentile(ms, 0.9):7.0f} {max(ms):7.0f}"
        f" {cpu:10.0f} {stored:>13}"
    )


def push_table(res: PushResults) -> str:
    head = (
        f"{'wal-push, per 16 MB segment':<30} {'pushes':>6} {'p50 ms':>7} {'p90 ms':>7} {'max ms':>7}"
        f" {'CPU p50 ms':>10} {'stored MB/seg':>13}"
    )
    lines = [head, "-" * len(head)]
    for tool, runs in res.latencies.items():
        lines.append(latency_row(tool, runs, f"{statistics.median(res.stored[tool]) / res.segments / MIB:.2f}"))
    lines.append(latency_row("p88 start-up floor (--help)", res.startup, "-"))
    lines.append(f"p50 ratio p88 / pgbackrest: {push_p50_ratio(res):.3f}x")
    return "\n".join(lines)


# -- archive backlog ------------------------------------------------------------------


@dataclass
class BacklogRun:
    tool: str
    ready: list[int] = field(default_factory=list)  # .ready files, one sample a second during the load
    archived_series: list[int] = field(default_factory=list)  # pg_stat_archiver.archived_count, same samples
    archived: int = 0  # pg_stat_archiver.archived_count, load + drain
    failed: int = 0  # pg_stat_archiver.failed_count, load + drain
    wal_bytes: int = 0
    seconds: float = 0.0
    drain_seconds: float = 0.0
    tps: float | None = None

    @property
    def max_ready(self) -> int:
        return max(self.ready, default=0)


ARCHIVER_SQL = "SELECT archived_count, failed_count, pg_current_wal_lsn() - '0/0'::pg_lsn FROM pg_stat_archiver"


def sample_load(cluster: PgCluster, load: subprocess.Popen[bytes], run: BacklogRun) -> None:
    """Every second until pgbench exits: .ready files and pg_stat_archiver; then wait for the drain."""
    with cluster.connect() as conn:
        archived0, failed0, lsn0 = conn.execute(ARCHIVER_SQL).fetchone()
        t0 = tick = time.monotonic()
        while load.poll() is None:
            run.ready.append(ready_files(cluster))
            run.archived_series.append(int(conn.execute(ARCHIVER_SQL).fetchone()[0] - archived0))
            tick += 1.0
            time.sleep(max(0.0, tick - time.monotonic()))
        run.seconds = time.monotonic() - t0
        run.wal_bytes = int(conn.execute(ARCHIVER_SQL).fetchone()[2] - lsn0)
        run.drain_seconds = wait_drained(cluster)
        archived, failed, _ = conn.execute(ARCHIVER_SQL).fetchone()
        run.archived, run.failed = int(archived - archived0), int(failed - failed0)


def backlog_run(tools: Tools, tool: str, seconds: int, name: str) -> BacklogRun:
    tools.set_archive_command(tool)
    wait_drained(tools.cluster)
    tools.cluster.sql("CHECKPOINT")  # every run starts with the same burst of full-page writes
    run = BacklogRun(tool)
    log = tools.logs / f"backlog-{name}.log"
    sample_load(tools.cluster, start_pgbench(tools.cluster, seconds, log), run)
    run.tps = pgbench_tps(log)
    return run


def measure_backlog(tools: Tools, seconds: int, repeat: int) -> list[BacklogRun]:
    runs: list[BacklogRun] = []
    for rnd in range(repeat):
        for tool in ("p88", "pgbackrest") if rnd % 2 == 0 else ("pgbackrest", "p88"):
            r = backlog_run(tools, tool, seconds, f"{tool}-{rnd}")
            say(
                f"  backlog {rnd + 1}/{repeat} {tool:<10} max ready {r.max_ready}, failed {r.failed},"
                f" {r.wal_bytes / MIB / r.seconds:.1f} MB/s WAL, tps {fmt(r.tps, 0, 0)}  load {loadavg()}"
            )
            runs.append(r)
    tools.set_archive_command()
    return runs


BACKLOG_NAMES = {"p88": "p88 wal-push", "pgbackrest": "pgbackrest archive-push"}


def backlog_table(runs: list[BacklogRun], seconds: int) -> str:
    head = (
        f"{'archive_command (alone)':<26} {'tps':>6} {'WAL MB/s':>8} {'segments':>8} {'archived':>8} {'in load':>7}"
        f" {'failed':>6} {'max ready':>9} {'mean ready':>10} {'drain s':>7}  .ready per second"
    )
    lines = [
        f"archive backlog under pgbench -c {PGBENCH_CLIENTS} -j {PGBENCH_CLIENTS} -T {seconds} (samples every 1 s):",
        head,
        "-" * len(head),
    ]
    for r in runs:
        lines.append(
            f"{BACKLOG_NAMES[r.tool]:<26} {fmt(r.tps, 6, 0)} {r.wal_bytes / MIB / r.seconds:8.1f}"
            f" {r.wal_bytes / (16 * MIB):8.1f} {r.archived:8d} {r.archived_series[-1] if r.ready else 0:7d}"
            f" {r.failed:6d} {r.max_ready:9d}"
            f" {statistics.fmean(r.ready) if r.ready else 0:10.2f} {r.drain_seconds:7.1f}  "
            + "".join(str(min(n, 9)) for n in r.ready)
        )
    return "\n".join(lines)


# -- report -----------------------------------------------------------------------------


def backlog_verdict(runs: list[BacklogRun], tool: str, judged: bool) -> Verdict:
    mine = [r for r in runs if r.tool == tool]
    worst, failed = max(r.max_ready for r in mine), sum(r.failed for r in mine)
    ok = worst <= BACKLOG_LIMIT and failed == 0
    note = "" if judged else " (info)"
    return Verdict(
        f"archive backlog, {BACKLOG_NAMES[tool]}: max .ready, failed{note}",
        f"{worst}, {failed} failed",
        f"<= {BACKLOG_LIMIT}, 0",
        ok if judged else None,
    )


def verdicts(results: list[CaseResult], pushes: PushResults, backlog: list[BacklogRun]) -> list[Verdict]:
    out = case_verdicts(results, "median wall")
    x = push_p50_ratio(pushes)
    out.append(
        Verdict(
            "p88 wal-push / pgbackrest archive-push (p50 latency)",
            f"{x:.3f}x",
            f"<= {WAL_PUSH_LIMIT:.2f}x",
            x <= WAL_PUSH_LIMIT,
        )
    )
    out.append(backlog_verdict(backlog, "p88", judged=True))
    out.append(backlog_verdict(backlog, "pgbackrest", judged=False))
    failed = sum(len(r.failures) for r in results)
    out.append(Verdict("failed backup/restore runs (warm-ups included)", str(failed), "0", failed == 0))
    return out


def versions(cluster: PgCluster) -> str:
    import zstandard

    import p88backup

    pgbr = subprocess.run(["pgbackrest", "version"], capture_output=True, text=True, check=False).stdout.strip()
    return (
        f"PostgreSQL {cluster.scalar('SHOW server_version')}; {pgbr}; p88backup {p88backup.__version__};"
        f" python-zstandard {zstandard.__version__}; {os.cpu_count()} CPUs"
    )


NOTES = """
Backup/restore: ratio = p88 / pgBackRest for the median, the fastest run and the median CPU; targets are
judged on the median wall time. CPU s = user+sys of the command's process tree (wait4) + PostgreSQL server
processes (sampled; archive_command runs are not included). Stored MB: the backup's directory in the repo /
store, or the restored data directory. wal-push: wall time from spawn to exit of one push (as the postgres
user, like archive_command), CPU from wait4. Noise: 2 shared cores; read the individual runs and the load."""


def print_report(
    cluster: PgCluster,
    results: list[CaseResult],
    pushes: PushResults,
    backlog: list[BacklogRun],
    opt: Options,
    load_before: str,
) -> list[Verdict]:
    vs = verdicts(results, pushes, backlog)
    print()
    print(describe_database(cluster))
    print(versions(cluster))
    print(f"load average (1/5/15 min) before measuring: {load_before}; after: {loadavg()}")
    for block in (
        results_table(results),
        cpu_breakdown(results),
        failure_report(results),
        push_table(pushes),
        backlog_table(backlog, opt.load_seconds),
        verdict_table(vs),
    ):
        print()
        print(block)
    print(NOTES)
    return vs


# -- main -----------------------------------------------------------------------------------


def drop_inherited_settings() -> list[str]:
    """The server (and its archive_command) inherits our environment: no P88_* / PGBACKREST_* overrides."""
    names = [k for k in os.environ if k.startswith(("P88_", "PGBACKREST_"))]
    for k in names:
        del os.environ[k]
    return names


def measure_pitr(tools: Tools, opt: Options, ctx: Context) -> tuple[list[CaseResult], PushResults, list[BacklogRun]]:
    refresh_bytecode()
    cases = backup_restore_cases(tools)
    say(f"base backup and restore: {len(cases)} cases x (1 warm-up + {opt.repeat}), load {loadavg()}")
    results = measure(ctx, cases, opt.repeat)
    say(f"writing {opt.segments} fresh WAL segments with pgbench ...")
    tools.set_archive_command()
    datadir = stand_in_datadir(tools.cluster, tools.root / "walpush" / "pgdata")
    segments = fresh_segments(tools.cluster, opt.segments, datadir / "pg_wal", tools.logs / "pgbench-segments.log")
    wait_drained(tools.cluster)
    tools.cluster.sql("CHECKPOINT")
    say(f"wal-push: {len(segments)} segments x {opt.repeat} rounds, each tool to a fresh archive per round")
    refresh_bytecode()  # again: others may edit the checkout meanwhile
    pushes = measure_wal_push(tools, segments, opt.repeat)
    say(f"archive backlog: pgbench -T {opt.load_seconds}, each tool alone, {opt.repeat} times")
    backlog = measure_backlog(tools, opt.load_seconds, opt.repeat)
    return results, pushes, backlog


def run(opt: Options) -> int:
    dropped = drop_inherited_settings()
    if dropped:
        say(f"ignoring inherited {', '.join(dropped)}")
    with workspace("p88-pitr-bench-", opt.workdir, opt.keep) as work, ExitStack() as stack:
        make_traversable(work)
        logs = work / "logs"
        logs.mkdir()
        cluster = build_cluster(work / "pg", opt.scale, logs)
        stack.callback(cluster.stop)
        say(describe_database(cluster))
        tools = setup_tools(cluster, work, logs)
        ctx = Context(cluster, cluster.url(DB_NAME), logs, tools.root / "p88", {"postgres": postgres_pids(cluster)})
        load_before = loadavg()
        results, pushes, backlog = measure_pitr(tools, opt, ctx)
        vs = print_report(cluster, results, pushes, backlog, opt, load_before)
    missed = any(v.ok is False for v in vs)
    return 1 if opt.check and missed else 0


def main(argv: list[str] | None = None) -> int:
    return run_timed(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
