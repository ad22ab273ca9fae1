"""Benchmark: what one status check of ``schedule``'s health monitor costs on S3, before and after
:class:`p88backup.core.status.RepeatedStatus` (the review's item: "the health monitor lists the whole
WAL archive and reads every manifest and drill report every 60 s").

On one bucket (MinIO by default, built by the test harness; ``--s3 moto`` for the Python server):

1. Stores ``--dumps`` dumps (manifest + one object each), two base backups, ``--drills`` drill
   reports, and ``--wal`` WAL files on timeline 1 (straight through the S3 client, in parallel).
2. ``fresh``: what every check did before (and what ``p88backup status`` does, once):
   :func:`~p88backup.core.status.collect` on a fresh :class:`~p88backup.catalog.backups.Catalog`
   and :class:`~p88backup.core.wal.archive.WalArchive`.
   ``repeated``: one :class:`~p88backup.core.status.RepeatedStatus`, called again and again.
   Between two checks one more WAL segment is archived (a server writing 16 MiB a minute), the
   same for both, and both reports are compared (they must be equal).
3. Prints, per check, the S3 requests by operation (counted on the client: every HTTP request
   boto3 sends) and the wall time: the first check, the median of ``--checks`` later ones, and for
   ``repeated`` the full relisting it makes every 15 minutes (``FULL_EVERY``), amortised over a
   check a minute.

Run from the repository root with the project's venv::

    .venv/bin/python bench/status_bench.py                  # MinIO, 5000 WAL files, 50 dumps
    .venv/bin/python bench/status_bench.py --s3 moto --wal 1000 --checks 3   # smoke
"""

from __future__ import annotations

import argparse
import io
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def seg(timeline: int, segno: int) -> str:
    return f"{timeline:08X}{segno // 256:08X}{segno % 256:08X}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--s3", choices=["minio", "moto"], default="minio")
    ap.add_argument("--wal", type=int, default=5000, help="WAL files in the archive")
    ap.add_argument("--dumps", type=int, default=50)
    ap.add_argument("--drills", type=int, default=4)
    ap.add_argument("--checks", type=int, default=10, help="checks measured after the first, per variant")
    args = ap.parse_args()

    import boto3
    from botocore.config import Config

    from p88backup.catalog.backups import Catalog
    from p88backup.catalog.layout import wal_key
    from p88backup.catalog.models import DrillReport, DrillRun, DrillSource
    from p88backup.core.health import Limits
    from p88backup.core.status import RepeatedStatus, StatusReport, collect
    from p88backup.core.statuscache import FULL_EVERY
    from p88backup.core.wal.archive import WalArchive
    from p88backup.storage.s3 import S3Storage
    from p88backup.stream import Codec
    from tests.harness.helpers import fake_basebackup_manifest, fake_dump_manifest
    from tests.harness.s3 import ACCESS_KEY, SECRET_KEY, start_minio, start_moto

    work = Path(tempfile.mkdtemp(prefix="p88-status-bench-"))
    server = (start_minio if args.s3 == "minio" else start_moto)(work / args.s3)
    try:
        bucket = server.create_bucket(f"p88-{uuid.uuid4().hex[:12]}")
        requests: Counter[str] = Counter()

        def client() -> Any:
            c = boto3.session.Session().client(
                "s3",
                endpoint_url=server.endpoint,
                aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY,
                region_name="us-east-1",
                config=Config(retries={"total_max_attempts": 1}, max_pool_connections=32),
            )
            return c

        counted = client()

        def count(model: Any, **_: Any) -> None:
            requests[model.name] += 1

        counted.meta.events.register("before-call.s3", count)
        storage = S3Storage(bucket, "prod", client=counted)
        storage.init(b'{"p88backup": 1}')

        # -- the archive ------------------------------------------------------------------
        now = datetime.now(UTC).replace(microsecond=0)
        catalog = Catalog(storage)
        started = time.monotonic()
        for n in range(args.dumps, 0, -1):
            when = now - timedelta(days=n)
            m = fake_dump_manifest(when.strftime("%Y%m%dT%H%M%SZ"), when)
            storage.put(m.objects[0].key, io.BytesIO(b"x"))
            catalog.write(m)
        for n in (14, 7):
            when = now - timedelta(days=n)
            catalog.write(fake_basebackup_manifest(when.strftime("%Y%m%dT%H%M%SZ"), when, seg(1, 2)))
        for n in range(args.drills, 0, -1):
            when = now - timedelta(days=7 * n)
            run = DrillRun(kind="dump", backup_id="20261101T000000Z", ok=True, source_now=when)
            catalog.write_drill(
                DrillReport(
                    id=when.strftime("%Y%m%dT%H%M%SZ"),
                    started_at=when,
                    finished_at=when,
                    ok=True,
                    p88backup_version="bench",
                    source=DrillSource(clock="production"),
                    drills=[run],
                )
            )
        raw = client()
        with ThreadPoolExecutor(16) as pool:
            list(
                pool.map(
                    lambda n: raw.put_object(Bucket=bucket, Key="prod/" + wal_key(seg(1, n), ".zst"), Body=b"w"),
                    range(2, args.wal + 2),
                )
            )
        print(
            f"{args.s3}: {args.dumps} dumps, 2 base backups, {args.drills} drill reports, {args.wal} WAL files "
            f"(stored in {time.monotonic() - started:.1f}s)"
        )

        # -- the checks -------------------------------------------------------------------
        limits = Limits(max_dump_age=26 * 3600, max_wal_age=900)
        codec = Codec()
        next_segno = args.wal + 2

        def fresh() -> StatusReport:
            return collect(catalog, WalArchive(storage, codec), now=now, limits=limits, conninfo=None)

        repeated_status = RepeatedStatus(storage, codec)

        def repeated() -> StatusReport:
            return repeated_status(now=now, limits=limits, conninfo=None)

        def measure(check: Callable[[], StatusReport]) -> tuple[float, Counter[str], StatusReport]:
            requests.clear()
            t = time.perf_counter()
            report = check()
            return time.perf_counter() - t, Counter(requests), report

        results: dict[str, list[tuple[float, Counter[str]]]] = {"fresh": [], "repeated": []}
        for i in range(args.checks + 1):
            if i:  # a minute later: one more segment archived
                raw.put_object(Bucket=bucket, Key="prod/" + wal_key(seg(1, next_segno), ".zst"), Body=b"w")
                next_segno += 1
            a, b = measure(fresh), measure(repeated)
            assert a[2].as_dict() == b[2].as_dict(), "repeated and fresh checks disagree"
            results["fresh"].append(a[:2])
            results["repeated"].append(b[:2])
        # the periodic full relisting: as it happens FULL_EVERY seconds after the first
        repeated_status.wal.clock = lambda: time.monotonic() + FULL_EVERY
        full = measure(repeated)
        assert full[2].as_dict() == fresh().as_dict()

        def show(name: str, runs: list[tuple[float, Counter[str]]]) -> None:
            first, later = runs[0], runs[1:]
            total = statistics.median(sum(c.values()) for _, c in later)
            print(
                f"{name:9} first check: {sum(first[1].values()):4d} requests {first[0] * 1000:7.0f} ms {dict(first[1])}"
            )
            print(
                f"{name:9} later checks (median of {len(later)}): {total:4.0f} requests "
                f"{statistics.median(t for t, _ in later) * 1000:7.0f} ms  {dict(later[-1][1])}"
            )

        show("fresh", results["fresh"])
        show("repeated", results["repeated"])
        per_minute = FULL_EVERY / 60
        tail = statistics.median(sum(c.values()) for _, c in results["repeated"][1:])
        tail_ms = statistics.median(t for t, _ in results["repeated"][1:]) * 1000
        full_n = sum(full[1].values())
        print(f"repeated  full relisting (every {FULL_EVERY:.0f}s): {full_n:4d} requests {full[0] * 1000:7.0f} ms")
        amortised = (full_n + (per_minute - 1) * tail) / per_minute
        amortised_ms = (full[0] * 1000 + (per_minute - 1) * tail_ms) / per_minute
        fresh_n = statistics.median(sum(c.values()) for _, c in results["fresh"][1:])
        fresh_ms = statistics.median(t for t, _ in results["fresh"][1:]) * 1000
        print(
            f"per check, a check a minute: fresh {fresh_n:.0f} requests {fresh_ms:.0f} ms; "
            f"repeated {amortised:.1f} requests {amortised_ms:.0f} ms (amortised)"
        )
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
