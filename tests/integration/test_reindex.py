"""reindex against a real OpenSearch 2.19 node and real PostgreSQL."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from opensearchpy import OpenSearch

from p88backup.errors import ExitCode
from tests.harness import opensearch_node
from tests.harness.helpers import cli_env, json_out, run_cli, unavailable
from tests.harness.postgres import PgCluster
from tests.harness.procs import free_port

MAPPINGS = {
    "properties": {
        "title": {"type": "text"},
        "body": {"type": "text"},
        "n": {"type": "long"},
        "updated_at": {"type": "date"},
    }
}


def make_table(pg: PgCluster, db: str, rows: int) -> None:
    pg.sql(f"DROP DATABASE IF EXISTS {db}")
    pg.sql(f"CREATE DATABASE {db}")
    pg.psql(
        "CREATE TABLE documents (id bigint PRIMARY KEY, title text, body text, n bigint,"
        " updated_at timestamptz NOT NULL DEFAULT '2026-01-01T00:00:00Z');"
        f"INSERT INTO documents SELECT g, 'title ' || g, 'body of document number ' || g || ' ' || md5(g::text), g"
        f" FROM generate_series(1, {rows}) g;"
        "UPDATE documents SET title = 'zanzibar unique needle' WHERE id = 4242;",
        db,
    )


def fresh(pg: PgCluster, db: str, url: str, tmp: Path, rows: int) -> tuple[dict[str, str], OpenSearch]:
    """A documents table of ``rows``, its reindex config, and a node without any documents* index."""
    make_table(pg, db, rows)
    client = OpenSearch(hosts=[url], timeout=60)
    client.indices.delete(index="documents*", params={"expand_wildcards": "all"}, ignore=[404])
    return config(tmp, pg, db, url), client


def config(tmp: Path, pg: PgCluster, db: str, url: str, settings: dict | None = None) -> dict[str, str]:
    (tmp / "documents.mappings.json").write_text(json.dumps(MAPPINGS))
    extra = ""
    if settings:
        (tmp / "documents.settings.json").write_text(json.dumps(settings))
        extra = 'settings = "documents.settings.json"\n'
    cfg = tmp / "p88backup.toml"
    cfg.write_text(
        f'database_url = "{pg.url(db)}"\nopensearch_url = "{url}"\nretry_deadline_seconds = 8\n'
        '[[reindex]]\nindex = "documents"\n'
        'query = "SELECT id, title, body, n, updated_at FROM documents"\n'
        'updated_at_column = "updated_at"\nmappings = "documents.mappings.json"\n' + extra
    )
    return cli_env(tmp, P88_CONFIG=str(cfg))


def alias_target(client: OpenSearch) -> list[str]:
    return sorted(client.indices.get_alias(name="documents"))


@pytest.fixture
def db(pg: PgCluster, request: pytest.FixtureRequest) -> str:
    name = "ri_" + request.node.name.split("[")[0].removeprefix("test_")[:40].lower()
    return name


class SearchLoop(threading.Thread):
    """Searches the alias as fast as it can; records any error or empty answer."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        # no client-side retries: every failed search must show
        self.client = OpenSearch(hosts=[url], timeout=30, max_retries=0, retry_on_status=())
        self.stop = threading.Event()
        self.searches = 0
        self.problems: list[str] = []
        self.problem_times: list[float] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                r = self.client.search(index="documents", body={"query": {"match": {"title": "needle"}}})
                if r["hits"]["total"]["value"] < 1:
                    self.problems.append(f"empty result: {r['hits']}")
            except Exception as exc:
                self.problems.append(f"{type(exc).__name__}: {exc}")
                self.problem_times.append(time.monotonic())
            self.searches += 1


def test_full_rebuild_of_a_million_rows_without_downtime(
    pg: PgCluster, opensearch: str, tmp_path: Path, db: str
) -> None:
    env, client = fresh(pg, db, opensearch, tmp_path, 1_000_000)

    plan = json_out(run_cli(["reindex", "--dry-run", "--json"], env))
    assert plan["rows"] == 1_000_000 and plan["dry_run"] and client.indices.exists(index=plan["index"]) is False

    first = json_out(run_cli(["reindex", "--json"], env, timeout=900))
    assert first["count"] == first["rows"] == first["actions"] == 1_000_000
    assert alias_target(client) == [first["index"]]

    loop = SearchLoop(opensearch)
    loop.start()
    try:
        second = json_out(run_cli(["reindex", "--json"], env, timeout=900))
    finally:
        loop.stop.set()
        loop.join(30)
    assert alias_target(client) == [second["index"]] and second["previous"] == first["index"]
    assert client.count(index="documents")["count"] == 1_000_000
    hits = client.search(index="documents", body={"query": {"match": {"title": "zanzibar"}}})["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["4242"]
    assert loop.searches > 50 and loop.problems == [], loop.problems[:5]
    client.indices.delete(index="documents-*")


def test_first_run_migrates_a_plain_index_safely(pg: PgCluster, opensearch: str, tmp_path: Path, db: str) -> None:
    env, client = fresh(pg, db, opensearch, tmp_path, 20_000)
    client.indices.create(index="documents", body={"mappings": MAPPINGS})  # what the app made before p88backup
    client.index(index="documents", id="4242", body={"title": "old needle"}, refresh=True)
    loop = SearchLoop(opensearch)
    loop.start()
    try:
        result = json_out(run_cli(["reindex", "--json"], env))
    finally:
        loop.stop.set()
        loop.join(30)
    # The one-time switch from a plain index deletes it in the same atomic _aliases call that
    # creates the alias; OpenSearch answers 503 to searches during that call (tens of ms here).
    # Never an empty result, and nothing outside that instant.
    assert loop.searches > 20 and all("503" in p for p in loop.problems), loop.problems[:5]
    assert not loop.problem_times or max(loop.problem_times) - min(loop.problem_times) < 1.0
    assert alias_target(client) == [result["index"]]
    assert result["previous"].startswith("documents-legacy-")
    assert client.count(index=result["previous"])["count"] == 1  # the old data, kept for rollback
    rolled = json_out(run_cli(["reindex", "--rollback", "documents", "--json"], env))
    assert alias_target(client) == [result["previous"]] == [rolled["index"]]
    client.indices.delete(index="documents-*")


def test_a_bad_row_fails_the_run_and_leaves_the_alias(pg: PgCluster, opensearch: str, tmp_path: Path, db: str) -> None:
    env, client = fresh(pg, db, opensearch, tmp_path, 20_000)
    good = json_out(run_cli(["reindex", "--json"], env))
    # a string where the mapping says long: this query makes row 777's n "not a number"
    cfg = Path(env["P88_CONFIG"])
    cfg.write_text(
        cfg.read_text().replace(
            "SELECT id, title, body, n, updated_at FROM documents",
            "SELECT id, title, body, CASE WHEN id = 777 THEN 'not a number' ELSE n::text END AS n, updated_at "
            "FROM documents",
        )
    )
    r = run_cli(["reindex"], env)
    assert r.returncode == ExitCode.SEARCH, r.stderr
    assert "id 777" in r.stderr and "mapper_parsing_exception" in r.stderr
    assert alias_target(client) == [good["index"]]
    assert sorted(client.indices.get(index="documents-*")) == [good["index"]]  # the half-built one is gone
    client.indices.delete(index="documents-*")


def test_since_upserts_changed_rows_and_rollback(pg: PgCluster, opensearch: str, tmp_path: Path, db: str) -> None:
    env, client = fresh(pg, db, opensearch, tmp_path, 20_000)
    first = json_out(run_cli(["reindex", "--json"], env))
    second = json_out(run_cli(["reindex", "--json"], env))
    cut = datetime.now(UTC)
    pg.sql("UPDATE documents SET title = 'changed needle', updated_at = now() WHERE id BETWEEN 100 AND 109", db)
    since = json_out(run_cli(["reindex", "--since", cut.isoformat(), "--json"], env))
    assert since["actions"] == 10 and since["index"] == second["index"]
    assert client.count(index="documents", body={"query": {"match": {"title": "changed"}}})["count"] == 10
    again = json_out(run_cli(["reindex", "--since", cut.isoformat(), "--json"], env))  # idempotent
    assert again["actions"] == 10 and client.count(index="documents")["count"] == 20_000
    rolled = json_out(run_cli(["reindex", "--rollback", "documents", "--json"], env))
    assert rolled["index"] == first["index"] and alias_target(client) == [first["index"]]
    client.indices.delete(index="documents-*")


@pytest.fixture
def node_factory(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    nodes: list[opensearch_node.OpenSearchNode] = []

    def make(name: str, **kw: object) -> opensearch_node.OpenSearchNode:
        try:
            node = opensearch_node.start(tmp_path / name, **kw)  # type: ignore[arg-type]
        except Exception as exc:
            unavailable("OpenSearch", exc)
        nodes.append(node)
        return node

    yield make
    for n in nodes:
        n.stop()


def test_busy_node_429_is_retried_and_the_rebuild_completes(
    pg: PgCluster, tmp_path: Path, db: str, node_factory
) -> None:  # type: ignore[no-untyped-def]
    node = node_factory("busy", settings={"thread_pool.write.size": "1", "thread_pool.write.queue_size": "1"})
    make_table(pg, db, 30_000)
    # several shards: every bulk request fans out to more shard writes than the pool takes
    env = config(tmp_path, pg, db, node.url, settings={"index": {"number_of_shards": 6}})
    result = json_out(run_cli(["reindex", "--json", "--concurrency", "3", "--chunk-mb", "0.5"], env))
    assert result["rejected_retries"] > 0
    assert result["count"] == result["rows"] == 30_000


def test_node_stopped_mid_load_fails_cleanly_and_rerun_succeeds(
    pg: PgCluster, tmp_path: Path, db: str, node_factory
) -> None:  # type: ignore[no-untyped-def]
    port, data = free_port(), tmp_path / "nodedata"
    settings = {"path.data": str(data)}
    node = node_factory("stoppable", port=port, settings=settings)
    make_table(pg, db, 300_000)
    env = config(tmp_path, pg, db, node.url)
    good = json_out(run_cli(["reindex", "--json", "--chunk-mb", "1"], env))
    import subprocess
    import sys

    from tests.harness.helpers import REPO

    proc = subprocess.Popen(
        [sys.executable, "-m", "p88backup", "--log-format", "json", "reindex", "--chunk-mb", "1"],
        env=env,
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    client = OpenSearch(hosts=[node.url], timeout=30)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # until the new index exists (its count stays 0: refresh is off)
        if [i for i in client.indices.get(index="documents-*") if i != good["index"]]:
            break
        time.sleep(0.1)
    time.sleep(1.0)  # well into the load (300k rows take several seconds)
    assert proc.poll() is None, "the load finished before the node could be stopped"
    node.stop()
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == ExitCode.SEARCH, err
    assert "retrying" in err and "cannot reach OpenSearch" in err

    node2 = node_factory("stoppable2", port=port, settings=settings)
    client = OpenSearch(hosts=[node2.url], timeout=30)
    assert alias_target(client) == [good["index"]]  # never moved to the half-built index
    assert client.count(index="documents")["count"] == 300_000
    again = json_out(run_cli(["reindex", "--json"], env))
    assert alias_target(client) == [again["index"]] and again["count"] == 300_000
    assert sorted(client.indices.get(index="documents-*")) == sorted([good["index"], again["index"]])
