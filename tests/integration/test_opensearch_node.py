"""The harness's OpenSearch is a real 2.19 node, reachable with opensearch-py."""

from __future__ import annotations

from opensearchpy import OpenSearch


def test_node_answers_and_indexes(opensearch: str) -> None:
    client = OpenSearch(hosts=[opensearch])
    assert client.info()["version"]["number"].startswith("2.19.")
    client.indices.create(index="harness-check", body={"mappings": {"properties": {"title": {"type": "text"}}}})
    client.index(index="harness-check", id="1", body={"title": "zero downtime search rebuild"}, refresh=True)
    hits = client.search(index="harness-check", body={"query": {"match": {"title": "rebuild"}}})["hits"]["hits"]
    assert [h["_id"] for h in hits] == ["1"]
    client.indices.delete(index="harness-check")
