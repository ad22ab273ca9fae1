"""The main job on embedded defaults: a throwaway PostgreSQL with sample data,
``file://`` storage set up with ``init``, then ``dump``, ``list``, ``verify`` and
``restore --dump latest``, and a check that the restored copy matches row for row.

Run through ``scripts/demo`` (which sets things up first). ``--keep`` leaves the
cluster and the backups in place and prints how to reach them.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.harness.helpers import table_checksums  # noqa: E402
from tests.harness.postgres import PgCluster  # noqa: E402

SAMPLE = """
CREATE TABLE customers (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL,
                        email text UNIQUE, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
                     customer_id bigint NOT NULL REFERENCES customers, total numeric(10,2) NOT NULL,
                     items jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
INSERT INTO customers (name, email)
  SELECT 'Customer ' || g, 'c' || g || '@example.org' FROM generate_series(1, 20000) g;
INSERT INTO orders (customer_id, total, items, created_at)
  SELECT 1 + g % 20000, (g % 500) + 0.99, jsonb_build_object('sku', 'SKU-' || g % 977, 'qty', 1 + g % 5),
         now() - (g % 1000) * interval '1 hour'
  FROM generate_series(1, 200000) g;
CREATE INDEX ON orders (customer_id);
"""


def run(args: list[str], env: dict[str, str]) -> None:
    print(f"\n$ p88backup {shlex.join(args)}", flush=True)
    subprocess.run([sys.executable, "-m", "p88backup", *args], env=env, check=True)


def main() -> None:
    keep = "--keep" in sys.argv
    work = Path(tempfile.mkdtemp(prefix="p88demo-"))
    os.chmod(work, 0o777)
    cluster = PgCluster.create(work / "pg")
    try:
        cluster.start()
        cluster.sql("CREATE DATABASE shop")
        cluster.psql(SAMPLE, "shop")
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("P88_")},
            "P88_DATABASE_URL": cluster.url("shop"),
            "P88_STORAGE_URL": f"file://{work}/backups",
            "P88_LOCK_DIR": str(work / "locks"),
            "P88_WORK_DIR": str(work / "tmp"),
            "P88_PG_BIN_DIR": str(cluster.bindir),  # the client tools of the server the demo started
        }
        print(f"throwaway PostgreSQL at {cluster.url('shop')}; backups in {work}/backups", flush=True)
        run(["--log-format", "console", "init"], env)  # once per storage, as an operator sets it up
        run(["--log-format", "console", "dump"], env)
        run(["list"], env)
        run(["--log-format", "console", "verify", "latest"], env)
        run(["--log-format", "console", "restore", "--dump", "latest", "--target-db", "shop_restored"], env)
        same = table_checksums(cluster, "shop") == table_checksums(cluster, "shop_restored")
        print(f"\nrestored copy identical to the original: {'yes' if same else 'NO'}", flush=True)
        if not same:
            raise SystemExit(1)
        if keep:
            print(f"\nkept: export P88_DATABASE_URL={cluster.url('shop')} P88_STORAGE_URL=file://{work}/backups")
    finally:
        if not keep:
            cluster.destroy()
            subprocess.run(["rm", "-rf", str(work)], check=False)


if __name__ == "__main__":
    main()
