"""Benchmark: ``p88backup reindex`` against posting pre-built NDJSON ``_bulk`` requests.

DESIGN §6: reindex throughput >= 0.8 x the throughput of posting the same
documents as pre-built NDJSON ``_bulk`` requests straight to the same node,
and memory flat in the number of rows (peak RSS <= 200 MB at 100k and 1M).

One run, same PostgreSQL table, same OpenSearch node (started from the test
harness), cases alternated:

* raw: the documents are rendered once beforehand (the same ``row_to_json``
  p88backup uses) into 8 MiB NDJSON bodies on disk; the timed part creates
  the index (same mappings, refresh off, no replicas), posts the bodies with
  the same concurrency as p88backup, refreshes and counts;
* p88: ``p88backup reindex --index NAME`` (new index, load, count check,
  alias swap), peak RSS of its Python process from /proc (VmHWM).

Run from the repository root: ``.venv/bin/python bench/reindex_bench.py [--rows N] [--repeat N]``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.dump_bench import Verdict, verdict_table  # noqa: E402
from bench.procstats import refresh_bytecode, run_measured  # noqa: E402
from tests.harness import opensearch_node  # noqa: E402
from tests.harness.postgres import PgCluster  # noqa: E402

THROUGHPUT_LIMIT = 0.8
RSS_LIMIT_MB = 200.0
CHUNK = 8 * 1024 * 1024
CONCURRENCY = 2
BUFFER_BUDGET_MB = 2 * CONCURRENCY * CHUNK / 2**20  # queued + in-flight bodies (p88backup's defaults)
MAPPINGS = {
    "properties": {
        "title": {"type": "text"},
        "body": {"type": "text"},
        "n": {"type": "long"},
        "tags": {"type": "keyword"},
        "updated_at": {"type": "date"},
    }
}
QUERY = "SELECT id, title, body, n, tags, updated_at FROM documents"


def say(msg: str) -> None:
    print(msg, flush=True)


def build_table(pg: PgCluster, rows: int) -> None:
    pg.sql("CREATE DATABASE bench")
    pg.psql(
        "CREATE TABLE documents (id bigint PRIMARY KEY, title text, body text, n bigint, tags text[],"
        " updated_at timestamptz);"
        "INSERT INTO documents SELECT g, 'document ' || g, repeat(md5(g::text) || ' ', 6), g,"
        " ARRAY['t' || g % 17, 'u' || g % 101], '2026-01-01'::timestamptz + g * interval '1 second'"
        f" FROM generate_series(1, {rows}) g; VACUUM ANALYZE documents;",
        "bench",
    )


def prebuild_bodies(pg: PgCluster, index: str, out: Path, limit: int) -> list[Path]:
    """The same documents as NDJSON _bulk bodies on disk (not timed)."""
    import psycopg

    files: list[Path] = []
    buf: list[bytes] = []
    size = 0
    with psycopg.connect(pg.url("bench")) as conn, conn.cursor(name="prebuild") as cur:
        cur.itersize = 5000
        cur.execute(f"SELECT id::text, row_to_json(q)::text FROM ({QUERY} WHERE id <= %s) q", (limit,))
        for rid, doc in cur:
            item = b'{"index":{"_index":"' + index.encode() + b'","_id":' + json.dumps(rid).encode() + b"}}\n"
            item += doc.encode() + b"\n"
            buf.append(item)
            size += len(item)
            if size >= CHUNK:
                files.append(out / f"body-{len(files):05d}.ndjson")
                files[-1].write_bytes(b"".join(buf))
                buf, size = [], 0
    if buf:
        files.append(out / f"body-{len(files):05d}.ndjson")
        files[-1].write_bytes(b"".join(buf))
    return files


def request(url: str, method: str, path: str, body: bytes | None = None) -> dict[str, object]:
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port or 9200, timeout=300)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status >= 300:
            raise RuntimeError(f"{method} {path}: {resp.status} {data[:300]!r}")
        return json.loads(data) if data else {}
    finally:
        conn.close()


def raw_load(url: str, index: str, bodies: list[Path], expected: int) -> float:
    """Create, post every body (CONCURRENCY at a time), refresh, count. Returns seconds."""
    request(url, "DELETE", f"/{index}?ignore_unavailable=true")
    t0 = time.monotonic()
    request(
        url,
        "PUT",
        f"/{index}",
        json.dumps(
            {"settings": {"index": {"refresh_interval": "-1", "number_of_replicas": 0}}, "mappings": MAPPINGS}
        ).encode(),
    )
    queue = list(bodies)
    lock = threading.Lock()
    errors: list[str] = []

    def worker() -> None:
        while True:
            with lock:
                if not queue:
                    return
                path = queue.pop(0)
            resp = request(url, "POST", "/_bulk?filter_path=errors", path.read_bytes())
            if resp.get("errors"):
                errors.append(str(path))

    threads = [threading.Thread(target=worker) for _ in range(CONCURRENCY)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    request(url, "POST", f"/{index}/_refresh")
    count = request(url, "GET", f"/{index}/_count")["count"]
    seconds = time.monotonic() - t0
    if errors or count != expected:
        raise RuntimeError(f"raw load went wrong: errors in {errors[:3]}, count {count} != {expected}")
    request(url, "DELETE", f"/{index}")
    return seconds


@dataclass
class P88Run:
    seconds: float
    rss_mb: float
    docs: int


def p88_load(env: dict[str, str], alias: str, logs: Path, run: str) -> P88Run:
    argv = [
        sys.executable,
        "-m",
        "p88backup",
        "--log-format",
        "json",
        "reindex",
        "--index",
        alias,
        "--json",
        "--concurrency",
        str(CONCURRENCY),
    ]
    stats = run_measured(argv, env=env, log_path=logs / f"p88-{run}.log")
    out = json.loads(_stdout_json(logs / f"p88-{run}.log"))
    return P88Run(stats.seconds, stats.root_hwm_mb, int(out["count"]))


def _stdout_json(log: Path) -> str:
    """run_measured puts stdout and stderr in one log: the result is the pretty JSON object."""
    text = log.read_text()
    start = text.index("{\n")
    return text[start : text.index("\n}", start) + 2]


@contextmanager
def services(work: Path, heap: str) -> Iterator[tuple[PgCluster, opensearch_node.OpenSearchNode]]:
    pg = PgCluster.create(work / "pg")
    pg.start()
    node = opensearch_node.start(work / "opensearch", heap=heap)
    try:
        yield pg, node
    finally:
        node.stop()
        pg.destroy()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--small", type=int, default=100_000, help="rows of the small case (memory flatness)")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--heap", default="1g", help="OpenSearch heap")
    p.add_argument("--check", action="store_true", help="exit 1 on a MISS")
    opt = p.parse_args(argv)
    t_all = time.monotonic()
    refresh_bytecode()
    with tempfile.TemporaryDirectory(prefix="p88-reindex-bench-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o777)
        with services(work, opt.heap) as (pg, node):
            say(f"building {opt.rows} rows ...")
            build_table(pg, opt.rows)
            bodies_dir = work / "bodies"
            bodies_dir.mkdir()
            bodies = prebuild_bodies(pg, "raw-bench", bodies_dir, opt.rows)
            say(f"{len(bodies)} pre-built bodies, {sum(b.stat().st_size for b in bodies) / 1e6:.0f} MB")
            (work / "m.json").write_text(json.dumps(MAPPINGS))
            cfg = work / "p88.toml"
            cfg.write_text(
                f'database_url = "{pg.url("bench")}"\nopensearch_url = "{node.url}"\n'
                f'[[reindex]]\nindex = "docs"\nquery = "{QUERY}"\nmappings = "m.json"\n'
                f'[[reindex]]\nindex = "docs-small"\nquery = "{QUERY} WHERE id <= {opt.small}"\nmappings = "m.json"\n'
            )
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("P88_")},
                "P88_CONFIG": str(cfg),
                "P88_LOCK_DIR": str(work / "locks"),
            }
            logs = work / "logs"
            logs.mkdir()
            raw: list[float] = []
            p88: list[P88Run] = []
            small: list[P88Run] = []
            for i in range(opt.repeat + 1):  # round 0 warms up both
                os.sync()
                r = raw_load(node.url, "raw-bench", bodies, opt.rows)
                os.sync()
                m = p88_load(env, "docs", logs, f"full-{i}")
                s = p88_load(env, "docs-small", logs, f"small-{i}")
                tag = "warm-up" if i == 0 else f"run {i}/{opt.repeat}"
                say(
                    f"  {tag:<9} raw {r:6.2f} s   p88 {m.seconds:6.2f} s ({m.rss_mb:.0f} MB)   "
                    f"p88 {opt.small} rows {s.seconds:5.2f} s ({s.rss_mb:.0f} MB)"
                )
                if i:
                    raw.append(r)
                    p88.append(m)
                    small.append(s)
    raw_s = statistics.median(raw)
    p88_s = statistics.median(x.seconds for x in p88)
    ratio = (opt.rows / p88_s) / (opt.rows / raw_s)
    rss_big = max(x.rss_mb for x in p88)
    rss_small = max(x.rss_mb for x in small)
    say("")
    say(f"{'case':<44} {'median s':>8} {'docs/s':>9} {'peak RSS MB':>11}")
    raw_label = f"raw: pre-built NDJSON _bulk, {CONCURRENCY} in flight"
    say(f"{raw_label:<44} {raw_s:8.2f} {opt.rows / raw_s:9.0f} {'-':>11}")
    say(f"{'p88backup reindex, ' + str(opt.rows) + ' rows':<44} {p88_s:8.2f} {opt.rows / p88_s:9.0f} {rss_big:11.1f}")
    say(
        f"{'p88backup reindex, ' + str(opt.small) + ' rows':<44} "
        f"{statistics.median(x.seconds for x in small):8.2f} {'':>9} {rss_small:11.1f}"
    )
    say("")
    vs = [
        Verdict(
            "reindex throughput / pre-built NDJSON _bulk throughput",
            f"{ratio:.3f}x",
            f">= {THROUGHPUT_LIMIT:.2f}x",
            ratio >= THROUGHPUT_LIMIT,
        ),
        Verdict(
            f"peak RSS of p88backup reindex at {opt.rows} rows",
            f"{rss_big:.1f} MB",
            f"<= {RSS_LIMIT_MB:.0f} MB",
            rss_big <= RSS_LIMIT_MB,
        ),
        Verdict(
            f"RSS growth from {opt.small} to {opt.rows} rows (flat)",
            f"{rss_big - rss_small:+.1f} MB",
            "<= +20 MB",
            rss_big - rss_small <= 20,
        ),
    ]
    say(verdict_table(vs))
    say(f"total time {time.monotonic() - t_all:.0f} s")
    return 1 if opt.check and not all(v.ok for v in vs) else 0


if __name__ == "__main__":
    sys.exit(main())
