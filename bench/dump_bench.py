"""Benchmark: ``p88backup dump`` against the plain pg_dump | zstd pipeline (DESIGN §6).

What it does, in one run, on the same data:

1. Builds (or reuses, ``--reuse DIR``) a throwaway PostgreSQL cluster with a
   ``bench`` database of about 1 GB: ``pgbench -i -s 30`` plus a ``notes``
   table of 2M rows of random text (Zipf-distributed English words, an md5
   per row, a base64 token in every 8th row: it compresses about like real
   text). The cluster comes from ``tests.harness.postgres`` and is tuned
   for loading (fsync off, wal_level minimal); that does not change a
   read-only pg_dump.
2. Measures these cases, each ``--repeat`` times after one warm-up run of
   every case. Runs go round-robin (case A, B, C, ... then again), so a
   slow minute on this shared 2-core machine hits all cases alike. Nothing
   is dropped from the page cache: every case reads a warm database.

   ==========================  ================================================
   raw local                   ``bash -o pipefail -c 'pg_dump -Fc -Z0 -d URL | zstd -3 -T0 > FILE'``
   p88 local                   ``p88backup dump --no-globals`` to ``file://DIR`` (row counts: exact, default)
   p88 local, row_counts=off   the same with ``P88_DUMP__ROW_COUNTS=off``: what counting costs
   raw S3                      ``pg_dump | zstd | python s3_stdin_upload.py`` (boto3 ``upload_fileobj``
                               from stdin: there is no aws CLI here) to MinIO
   p88 S3                      ``p88backup dump --no-globals`` to ``s3://bucket/RUN`` on the same MinIO
   ==========================  ================================================

   Every run writes to a fresh directory / key prefix, deleted after the run
   (outside the timed part). pg_dump is the cluster's own binary for all
   cases (``P88_PG_BIN_DIR``).
3. Prints, per case: median and fastest wall seconds (and every run), CPU
   seconds (``wait4`` rusage of the whole client tree, plus PostgreSQL
   server processes and MinIO sampled from ``/proc``), each as a ratio to
   the matching raw pipeline; the peak RSS of the p88backup Python process
   itself (``VmHWM``: pg_dump's memory is *not* included) and the stored
   size; then CPU by process, and the DESIGN §6 targets with PASS/MISS
   (judged on the median). A run that fails is reported with its last log
   line and run again (up to 3 attempts); any failure is a MISS too.
   ``--check`` exits 1 on a MISS.
4. Stops the servers and removes what it made, unless ``--keep`` (a
   ``--reuse`` directory keeps its database either way).

Measurements on a 2-core machine shared with other work are noisy: compare
the individual runs and the load averages printed with the results before
believing a few percent either way.

Run from the repository root (``tests`` must be importable)::

    .venv/bin/python bench/dump_bench.py                       # full size, ~0.8-1 GB, ~2-3 min
    .venv/bin/python bench/dump_bench.py --scale 2 --rows 100000 --repeat 1   # smoke
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Protocol, TypeVar

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.procstats import (  # noqa: E402
    CommandFailed,
    PidSource,
    RunStats,
    children,
    refresh_bytecode,
    run_measured,
)
from tests.harness.postgres import PgCluster, pg_bin_dirs  # noqa: E402
from tests.harness.procs import free_port  # noqa: E402
from tests.harness.s3 import S3Server, start_minio, start_moto  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
DB_NAME = "bench"
BUCKET = "p88-bench"
MARKER = "bench-data.json"
MIB = 1024 * 1024
T = TypeVar("T")

# DESIGN §6
LOCAL_LIMIT = 1.10
S3_LIMIT = 1.30
RSS_LIMIT_MB = 150.0
MAX_ATTEMPTS = 3  # per measured slot; every failure is reported

# Loading speed only: none of these matter to a read-only pg_dump.
LOAD_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "wal_level": "minimal",
    "max_wal_senders": "0",
    "max_wal_size": "'8GB'",
    "checkpoint_timeout": "'30min'",
    "maintenance_work_mem": "'256MB'",
}

_WORDS_TEXT = """
the of and to a in is it you that he was for on are with as his they be at one have this from or had by word
but what some we can out other were all there when up use your how said an each she which do their time if
will way about many then them write would like so these her long make thing see him two has look more day
could go come did number sound no most people my over know water than call first who may down side been now
find any new work part take get place made live where after back little only round man year came show every
good me give our under name very through just form sentence great think say help low line differ turn cause
much mean before move right boy old too same tell does set three want air well also play small end put home
read hand port large spell add even land here must big high such follow act why ask backup restore archive
segment replica snapshot invoice customer order shipment payment refund account
"""
WORDS = _WORDS_TEXT.split()  # Zipf-picked in NOTES_SQL: the first ones are the most frequent

NOTES_SQL = """
INSERT INTO notes (id, body)
SELECT g,
       (SELECT string_agg(x.word, ' ')
          FROM (SELECT v.w[1 + floor(v.n * random() ^ 2)::int] AS word
                  FROM generate_series(1, 6 + (g * 7919) %% 47)) AS x)
       || ' ref ' || md5(g::text || random()::text)
       || CASE WHEN g %% 8 = 0 THEN ' ' || encode(sha256((g::text || random()::text)::bytea), 'base64') ELSE '' END
FROM generate_series(%(lo)s::bigint, %(hi)s::bigint) AS g,
     (SELECT %(words)s::text[] AS w, cardinality(%(words)s::text[]) AS n) AS v
"""


# -- options ----------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    scale: int
    rows: int
    repeat: int
    reuse: Path | None
    keep: bool
    check: bool
    s3: Literal["minio", "moto", "none"]
    workdir: Path | None
    pg_major: int | None = None


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--scale", type=int, default=30, help="pgbench scale factor (default 30, ~450 MB)")
    p.add_argument("--rows", type=int, default=2_000_000, help="rows of random text in 'notes' (default 2M)")
    p.add_argument("--repeat", type=int, default=3, help="measured runs per case, after one warm-up (default 3)")
    p.add_argument(
        "--reuse",
        type=Path,
        metavar="DIR",
        help="keep the cluster in DIR: reuse its database when scale/rows match, else build it there",
    )
    p.add_argument("--keep", action="store_true", help="keep the work directory (cluster, logs, last outputs)")
    p.add_argument("--check", action="store_true", help="exit 1 when a DESIGN §6 target is missed")
    p.add_argument(
        "--s3",
        choices=["minio", "moto", "none"],
        default="minio",
        help="S3 server for the S3 cases (default minio; none skips them)",
    )
    p.add_argument("--workdir", type=Path, help="parent of the temporary work directory (default: $TMPDIR)")
    p.add_argument(
        "--pg-major",
        type=int,
        help="PostgreSQL major of a new cluster (default: the harness's, 16; earlier figures were on 15)",
    )
    a = p.parse_args(argv)
    if a.repeat < 1 or a.scale < 1 or a.rows < 0:
        p.error("--repeat and --scale must be >= 1, --rows >= 0")
    return Options(a.scale, a.rows, a.repeat, a.reuse, a.keep, a.check, a.s3, a.workdir, a.pg_major)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- the database -----------------------------------------------------------


def reopen_cluster(base: Path) -> PgCluster:
    """A cluster made earlier by this script in ``base``, on a fresh port."""
    datadir = base / "data"
    major = int((datadir / "PG_VERSION").read_text().strip())
    bindir = pg_bin_dirs().get(major)
    if bindir is None:
        raise SystemExit(f"{datadir} is a PostgreSQL {major} cluster, and no such server is installed")
    port = free_port()
    with open(datadir / "postgresql.auto.conf", "a") as fh:  # later lines win
        fh.write(f"port = {port}\n")
    return PgCluster(datadir=datadir, port=port, bindir=bindir, logfile=base / "postgres.log", socket_dir=base / "sock")


def open_cluster(base: Path, major: int | None = None) -> PgCluster:
    cluster = (
        reopen_cluster(base)
        if (base / "data" / "PG_VERSION").exists()
        else PgCluster.create(base, settings=LOAD_SETTINGS, major=major)
    )
    cluster.start()
    return cluster


def load_notes(cluster: PgCluster, rows: int, workers: int) -> None:
    """Fill ``notes`` with ``workers`` connections in parallel, then index and freeze it."""
    cluster.sql("DROP TABLE IF EXISTS notes; CREATE TABLE notes (id bigint, body text)", DB_NAME)
    step = 250_000
    ranges = [(lo, min(lo + step - 1, rows)) for lo in range(1, rows + 1, step)]

    def fill(bounds: tuple[int, int]) -> None:
        with cluster.connect(DB_NAME) as conn:
            conn.execute(NOTES_SQL, {"lo": bounds[0], "hi": bounds[1], "words": WORDS})

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(fill, ranges))
    cluster.sql("ALTER TABLE notes ADD PRIMARY KEY (id)", DB_NAME)
    cluster.sql("VACUUM (FREEZE, ANALYZE) notes", DB_NAME)


def run_pgbench_init(cluster: PgCluster, scale: int, log: Path) -> subprocess.Popen[bytes]:
    argv = cluster.client("pgbench", "-i", "-q", "-s", str(scale), DB_NAME)
    with log.open("wb") as fh:
        return subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT)


def build_database(cluster: PgCluster, opt: Options, logs: Path) -> None:
    """pgbench -i (one process) and the notes load (the other core) side by side."""
    t0 = time.monotonic()
    cluster.sql(f"DROP DATABASE IF EXISTS {DB_NAME}")
    cluster.sql(f"CREATE DATABASE {DB_NAME}")
    pgbench = run_pgbench_init(cluster, opt.scale, logs / "pgbench-init.log")
    try:
        load_notes(cluster, opt.rows, workers=max(1, (os.cpu_count() or 2) - 1))
    except BaseException:
        pgbench.kill()
        pgbench.wait()
        raise
    if pgbench.wait() != 0:
        raise SystemExit(f"pgbench -i failed, see {logs / 'pgbench-init.log'}")
    cluster.sql("CHECKPOINT")
    say(f"built database in {time.monotonic() - t0:.0f} s")


def ensure_database(cluster: PgCluster, opt: Options, base: Path, logs: Path) -> None:
    marker = base / MARKER
    wanted = {"scale": opt.scale, "rows": opt.rows}
    if marker.exists() and json.loads(marker.read_text()) == wanted:
        say(f"reusing database {DB_NAME} in {base} ({wanted})")
        return
    marker.unlink(missing_ok=True)
    say(f"building database {DB_NAME}: pgbench scale {opt.scale} + {opt.rows} rows of text ...")
    build_database(cluster, opt, logs)
    marker.write_text(json.dumps(wanted))


def describe_database(cluster: PgCluster) -> str:
    rows = cluster.sql(
        "SELECT c.relname, pg_size_pretty(pg_table_size(c.oid)), pg_size_pretty(pg_indexes_size(c.oid))"
        " FROM pg_class c WHERE c.relkind = 'r' AND c.relnamespace = 'public'::regnamespace"
        " ORDER BY pg_total_relation_size(c.oid) DESC",
        DB_NAME,
    )
    total = cluster.scalar(f"SELECT pg_size_pretty(pg_database_size('{DB_NAME}'))")
    lines = [f"database {DB_NAME}: {total}"]
    lines += [f"  {name:<20} table {table:>8}  indexes {idx:>8}" for name, table, idx in rows]
    return "\n".join(lines)


def postgres_pids(cluster: PgCluster) -> PidSource:
    """The postmaster and its children (backends, checkpointer, ...)."""

    def pids() -> list[int]:
        try:
            pm = int((cluster.datadir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return []
        return [pm, *children(pm)]

    return pids


# -- where dumps go -----------------------------------------------------------


class Destination(Protocol):
    """Where one run stores its output; every run gets its own name ``run``."""

    label: str

    def raw_sink(self, run: str) -> str:
        """Shell text that consumes zstd's stdout (``> FILE`` or ``| uploader``)."""
        ...

    def storage_url(self, run: str) -> str: ...

    def env(self) -> dict[str, str]: ...

    def stored_bytes(self, run: str) -> int: ...

    def discard(self, run: str) -> None: ...


@dataclass
class LocalDestination:
    root: Path
    label: str = "local"

    def raw_sink(self, run: str) -> str:
        (self.root / run).mkdir(parents=True, exist_ok=True)
        return "> " + shlex.quote(str(self.root / run / f"{DB_NAME}.dump.zst"))

    def storage_url(self, run: str) -> str:
        return f"file://{self.root / run}"

    def env(self) -> dict[str, str]:
        return {}

    def stored_bytes(self, run: str) -> int:
        return sum(p.stat().st_size for p in (self.root / run).rglob("*") if p.is_file())

    def discard(self, run: str) -> None:
        shutil.rmtree(self.root / run, ignore_errors=True)


@dataclass
class S3Destination:
    server: S3Server
    bucket: str
    label: str = "S3"

    def raw_sink(self, run: str) -> str:
        uploader = [sys.executable, str(BENCH_DIR / "s3_stdin_upload.py"), self.bucket, f"{run}/{DB_NAME}.dump.zst"]
        return "| " + shlex.join(uploader)

    def storage_url(self, run: str) -> str:
        return f"s3://{self.bucket}/{run}"

    def env(self) -> dict[str, str]:
        return self.server.env()

    def _keys(self, run: str) -> Iterator[tuple[str, int]]:
        pages = self.server.client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=f"{run}/")
        for page in pages:
            for obj in page.get("Contents", []):
                yield obj["Key"], int(obj["Size"])

    def stored_bytes(self, run: str) -> int:
        return sum(size for _, size in self._keys(run))

    def discard(self, run: str) -> None:
        keys = [{"Key": k} for k, _ in self._keys(run)]
        for i in range(0, len(keys), 1000):
            self.server.client().delete_objects(Bucket=self.bucket, Delete={"Objects": keys[i : i + 1000]})


# -- cases ----------------------------------------------------------------------


@dataclass(frozen=True)
class Context:
    cluster: PgCluster
    db_url: str
    logs: Path
    p88_work: Path
    servers: Mapping[str, PidSource]

    @property
    def pg_dump(self) -> Path:
        return self.cluster.bindir / "pg_dump"


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    tool: Literal["raw", "p88"]
    dest: Destination
    extra_env: Mapping[str, str] = field(default_factory=dict)
    baseline: str | None = None  # key of the raw case this one is compared with
    limit: float | None = None  # DESIGN §6 ratio target; None = informational

    def command(self, ctx: Context, run: str) -> list[str]:
        if self.tool == "raw":
            pipeline = (
                f"{shlex.quote(str(ctx.pg_dump))} -Fc -Z0 -d {shlex.quote(ctx.db_url)}"
                f" | zstd -q -3 -T0 {self.dest.raw_sink(run)}"
            )
            return ["bash", "-o", "pipefail", "-c", pipeline]
        return [str(Path(sys.executable).parent / "p88backup"), "--log-format", "json", "dump", "--no-globals"]

    def env(self, ctx: Context, run: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("P88_", "AWS_", "PG"))}
        env.update(self.dest.env())
        if self.tool == "p88":
            env.update(
                {
                    "P88_DATABASE_URL": ctx.db_url,
                    "P88_STORAGE_URL": self.dest.storage_url(run),
                    "P88_PG_BIN_DIR": str(ctx.cluster.bindir),
                    "P88_LOCK_DIR": str(ctx.p88_work / "locks"),  # not the shared /tmp lock of other runs
                    "P88_WORK_DIR": str(ctx.p88_work / "work"),
                }
            )
        env.update(self.extra_env)
        return env


def make_cases(local: Destination, s3: Destination | None) -> list[Case]:
    cases = [
        Case("raw-local", "raw local: pg_dump|zstd > file", "raw", local),
        Case("p88-local", "p88 local", "p88", local, baseline="raw-local", limit=LOCAL_LIMIT),
        Case(
            "p88-local-nocount",
            "p88 local, row_counts=off",
            "p88",
            local,
            {"P88_DUMP__ROW_COUNTS": "off"},
            baseline="raw-local",
        ),
    ]
    if s3 is not None:
        cases += [
            Case("raw-s3", "raw S3: pg_dump|zstd|boto3 upload", "raw", s3),
            Case("p88-s3", "p88 S3", "p88", s3, baseline="raw-s3", limit=S3_LIMIT),
        ]
    return cases


# -- measuring ------------------------------------------------------------------


SERVER_GROUPS = ("postgres", "s3")


@dataclass
class Measurement:
    stats: RunStats
    stored_bytes: int

    @property
    def seconds(self) -> float:
        return self.stats.seconds

    @property
    def cpu(self) -> float:
        """All CPU the run caused on this machine: client tree (exact) + server processes (sampled)."""
        return self.stats.cpu_total + sum(self.stats.cpu_of_group(g) for g in SERVER_GROUPS)


Metric = Callable[["CaseResult"], float]


@dataclass
class CaseResult:
    case: Case
    runs: list[Measurement] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)  # last output line of each failed run

    @property
    def median(self) -> float:
        return statistics.median(m.seconds for m in self.runs)

    @property
    def best(self) -> float:
        return min(m.seconds for m in self.runs)

    @property
    def median_cpu(self) -> float:
        return statistics.median(m.cpu for m in self.runs)

    @property
    def median_run(self) -> Measurement:
        ordered = sorted(self.runs, key=lambda m: m.seconds)
        return ordered[(len(ordered) - 1) // 2]

    @property
    def peak_rss_mb(self) -> float | None:
        return max(m.stats.root_hwm_mb for m in self.runs) if self.case.tool == "p88" else None


def run_once(ctx: Context, case: Case, run: str) -> Measurement:
    if case.tool == "p88":  # each run's fresh storage is set up once, untimed, as an operator would
        p88 = str(Path(sys.executable).parent / "p88backup")
        subprocess.run([p88, "init"], env=case.env(ctx, run), check=True, capture_output=True, timeout=120)
    try:
        stats = run_measured(
            case.command(ctx, run), env=case.env(ctx, run), log_path=ctx.logs / f"{run}.log", servers=ctx.servers
        )
        stored = case.dest.stored_bytes(run)
    finally:
        case.dest.discard(run)
    if stored == 0:
        raise CommandFailed(f"{case.label}: run {run} stored nothing", "stored nothing")
    return Measurement(stats, stored)


def run_recording_failures(ctx: Context, res: CaseResult, run: str) -> Measurement:
    """A failed run is recorded (and reported) and the slot is run again, up to MAX_ATTEMPTS times."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        name = run if attempt == 1 else f"{run}-retry{attempt - 1}"
        try:
            return run_once(ctx, res.case, name)
        except CommandFailed as exc:
            res.failures.append(exc.last_line)
            say(f"  FAILED    {res.case.label} (attempt {attempt}/{MAX_ATTEMPTS}): {exc.last_line[:300]}")
            if attempt == MAX_ATTEMPTS:
                raise
    raise AssertionError("unreachable")


def measure(ctx: Context, cases: list[Case], repeat: int) -> list[CaseResult]:
    refresh_bytecode()
    results = [CaseResult(c) for c in cases]
    for rnd in range(repeat + 1):
        tag = "warm-up" if rnd == 0 else f"run {rnd}/{repeat}"
        for res in results:
            # Start every run with no dirty pages left by the previous one: otherwise a case
            # pays for the previous case's deferred writeback (the raw pipeline never fsyncs).
            os.sync()
            m = run_recording_failures(ctx, res, f"{res.case.key}-{rnd}")
            say(f"  {tag:<9} {res.case.label:<32} {m.seconds:7.2f} s  load {loadavg()}")
            if rnd > 0:
                res.runs.append(m)
    return results


# -- report ---------------------------------------------------------------------


def loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def ratio(res: CaseResult, by_key: Mapping[str, CaseResult], metric: Metric = lambda r: r.median) -> float | None:
    """``metric`` of this case over the same metric of its raw baseline (None for a baseline)."""
    base = by_key.get(res.case.baseline or "")
    return metric(res) / metric(base) if base else None


def fmt(value: float | None, width: int, decimals: int, suffix: str = "") -> str:
    text = "-" if value is None else f"{value:.{decimals}f}{suffix}"
    return f"{text:>{width}}"


def results_table(results: list[CaseResult]) -> str:
    by_key = {r.case.key: r for r in results}
    head = (
        f"{'case':<34} {'median s':>8} {'ratio':>6} {'min s':>6} {'ratio':>6} {'CPU s':>6} {'ratio':>6}"
        f" {'p88 RSS MB':>10} {'stored MB':>9}  runs (s)"
    )
    lines = [head, "-" * len(head)]
    for r in results:
        lines.append(
            f"{r.case.label:<34} {r.median:8.2f} {fmt(ratio(r, by_key), 6, 3)}"
            f" {r.best:6.2f} {fmt(ratio(r, by_key, lambda x: x.best), 6, 3)}"
            f" {r.median_cpu:6.1f} {fmt(ratio(r, by_key, lambda x: x.median_cpu), 6, 3)}"
            f" {fmt(r.peak_rss_mb, 10, 1)} {r.median_run.stored_bytes / MIB:9.1f}  "
            + " ".join(f"{x.seconds:.2f}" for x in r.runs)
        )
    return "\n".join(lines)


def cpu_breakdown(results: list[CaseResult]) -> str:
    lines = ["CPU seconds in the median run, by process group (client total from wait4; the rest sampled):"]
    for r in results:
        m = r.median_run.stats
        procs = ", ".join(f"{n} {c:.1f}" for n, c in m.cpu_by_name("client").items() if c >= 0.05)
        parts = [f"client {m.cpu_total:.1f} ({procs})"]
        parts += [f"{g} {m.cpu_of_group(g):.1f}" for g in SERVER_GROUPS if m.cpu_of_group(g) >= 0.05]
        lines.append(f"  {r.case.label:<34} " + " | ".join(parts))
    return "\n".join(lines)


@dataclass(frozen=True)
class Verdict:
    name: str
    measured: str
    limit: str
    ok: bool | None  # None: not measured


def case_verdicts(results: list[CaseResult], measure: str) -> list[Verdict]:
    """One verdict per case with a limit: its ratio to its baseline case."""
    by_key = {r.case.key: r for r in results}
    out: list[Verdict] = []
    for r in results:
        if r.case.limit is not None:
            x = ratio(r, by_key)
            out.append(
                Verdict(
                    f"{r.case.label} / {by_key[r.case.baseline or ''].case.label} ({measure})",
                    fmt(x, 0, 3, "x"),
                    f"<= {r.case.limit:.2f}x",
                    None if x is None else x <= r.case.limit,
                )
            )
    return out


def verdicts(results: list[CaseResult]) -> list[Verdict]:
    out = case_verdicts(results, "wall time")
    if not any(r.case.key == "p88-s3" for r in results):
        out.append(Verdict("p88 S3 / raw S3 (wall time): not measured (--s3 none)", "-", f"<= {S3_LIMIT:.2f}x", None))
    rss = [r.peak_rss_mb for r in results if r.peak_rss_mb is not None]
    peak = max(rss) if rss else None
    out.append(
        Verdict(
            "peak RSS of the p88backup process (max of all runs)",
            fmt(peak, 0, 1, " MB"),
            f"<= {RSS_LIMIT_MB:.0f} MB",
            None if peak is None else peak <= RSS_LIMIT_MB,
        )
    )
    failed = sum(len(r.failures) for r in results)
    attempts = failed + sum(len(r.runs) for r in results) + len(results)  # + the warm-ups
    out.append(
        Verdict(
            "failed runs (all cases, warm-ups included; see 'failures' above)",
            f"{failed} of {attempts}",
            "0",
            failed == 0,
        )
    )
    return out


def failure_report(results: list[CaseResult]) -> str:
    lines: list[str] = []
    for r in results:
        if r.failures:
            lines.append(f"failures in {r.case.label}: {len(r.failures)} (run again; last log line of each):")
            lines += [f"  {line[:400]}" for line in r.failures]
    return "\n".join(lines) if lines else "failures: none"


def verdict_table(vs: list[Verdict]) -> str:
    lines = [f"{'DESIGN §6 target':<72} {'measured':>10} {'limit':>10}  result"]
    for v in vs:
        result = "n/a" if v.ok is None else ("PASS" if v.ok else "MISS")
        lines.append(f"{v.name:<72} {v.measured:>10} {v.limit:>10}  {result}")
    return "\n".join(lines)


def versions(ctx: Context) -> str:
    import zstandard

    import p88backup

    def first_line(argv: list[str]) -> str:
        r = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (r.stdout or r.stderr).strip().splitlines()[0].strip("* ")

    return (
        f"{first_line([str(ctx.pg_dump), '--version'])}; {first_line(['zstd', '--version'])}; "
        f"python-zstandard {zstandard.__version__}; p88backup {p88backup.__version__}; "
        f"{os.cpu_count()} CPUs"
    )


NOTES = """
ratio = this case / the matching raw pipeline, for the median, the fastest run and the median CPU.
Targets are judged on the median. CPU s = user+sys of the client process tree (wait4) + PostgreSQL
server processes + the S3 server (sampled); on 2 cores it is a steadier signal than wall time when others
load the machine. p88 RSS = VmHWM of the p88backup Python process (pg_dump not included), max over
its runs. Noise: few short runs on 2 shared cores; read the individual runs and the load average."""


# -- main -----------------------------------------------------------------------


@contextmanager
def workspace(prefix: str, parent: Path | None, keep: bool) -> Iterator[Path]:
    """A work directory under ``parent`` (default $TMPDIR), removed at the end unless ``keep``."""
    if parent:
        parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(work, 0o755)
    try:
        yield work
    finally:
        if keep:
            say(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def start_s3(kind: str, work: Path, stack: ExitStack) -> S3Server | None:
    if kind == "none":
        return None
    server = (start_minio if kind == "minio" else start_moto)(work / kind)
    stack.callback(server.stop)
    server.create_bucket(BUCKET)
    return server


def run(opt: Options) -> int:
    with workspace("p88-dump-bench-", opt.workdir, opt.keep) as work, ExitStack() as stack:
        pg_base = opt.reuse.resolve() if opt.reuse else work / "pg"  # a --reuse cluster always stays
        logs = work / "logs"
        logs.mkdir()
        cluster = open_cluster(pg_base, opt.pg_major)
        stack.callback(cluster.stop)
        ensure_database(cluster, opt, pg_base, logs)
        say(describe_database(cluster))
        s3 = start_s3(opt.s3, work, stack)
        servers: dict[str, PidSource] = {"postgres": postgres_pids(cluster)}
        if s3 is not None and s3.proc is not None:
            s3_pid = s3.proc.pid
            servers["s3"] = lambda: [s3_pid]
        ctx = Context(cluster, cluster.url(DB_NAME), logs, work / "p88", servers)
        cases = make_cases(LocalDestination(work / "out"), S3Destination(s3, BUCKET) if s3 else None)
        say(f"measuring {len(cases)} cases x (1 warm-up + {opt.repeat}), load average {loadavg()}")
        load_before = loadavg()
        results = measure(ctx, cases, opt.repeat)
        vs = verdicts(results)
        print()
        print(describe_database(cluster))
        print(versions(ctx) + (f"; S3 server: {s3.kind} on loopback" if s3 else ""))
        print(f"load average (1/5/15 min) before measuring: {load_before}; after: {loadavg()}")
        print()
        print(results_table(results))
        print()
        print(cpu_breakdown(results))
        print()
        print(failure_report(results))
        print()
        print(verdict_table(vs))
        print(NOTES)
    missed = any(v.ok is False for v in vs)
    return 1 if opt.check and missed else 0


def run_timed(run: Callable[[T], int], opt: T) -> int:
    """``run(opt)`` with its total time on stderr; a failed command aborts with exit 2."""
    t0 = time.monotonic()
    try:
        return run(opt)
    except CommandFailed as exc:
        say(f"benchmark aborted: {exc}")
        return 2
    finally:
        say(f"total time {time.monotonic() - t0:.0f} s")


def main(argv: list[str] | None = None) -> int:
    return run_timed(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
