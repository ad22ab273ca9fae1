"""A create-only PUT whose answer is lost on the wire (issue 10 item 17), against a real S3
server (MinIO) behind a proxy that forwards the request and drops the answer.

The client retries; the retry finds the key taken (412). Before: the night's dump failed
with exit 10 although the object stored was exactly the one it sent. Now an object is
accepted when this run sent it whole and the stored bytes have its size and SHA-256.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from p88backup.catalog.objects import store
from p88backup.errors import ObjectExistsError
from p88backup.storage.s3 import S3Storage
from p88backup.stream import make_codec
from tests.harness.helpers import cli_env, init_storage, initialised, json_out, log_lines, new_bucket, ok, run_cli
from tests.harness.lossy_proxy import LossyProxy
from tests.harness.postgres import PgCluster
from tests.harness.s3 import S3Server

CODEC = make_codec(threads=1)


@pytest.fixture
def bucket(minio: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for k, v in minio.env().items():
        monkeypatch.setenv(k, v)
    name = new_bucket(minio)
    initialised(S3Storage(name, "p88", retry_deadline=10)).close()
    yield name


def through(proxy: LossyProxy, bucket: str, monkeypatch: pytest.MonkeyPatch) -> S3Storage:
    monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.endpoint)
    return S3Storage(bucket, "p88", retry_deadline=10)


def sha256_of(storage: S3Storage, key: str) -> tuple[int, str]:
    sha, size = hashlib.sha256(), 0
    with storage.open(key) as fh:
        while chunk := fh.read(1 << 20):
            sha.update(chunk)
            size += len(chunk)
    return size, sha.hexdigest()


@pytest.mark.parametrize(
    ("size", "lost_request"),
    [
        (200_000, "PUT /{bucket}/p88/dumps/20261127T021500Z/app.pgdump.zst "),  # one PutObject
        (20 << 20, "POST /{bucket}/p88/dumps/20261127T021500Z/app.pgdump.zst?uploadId="),  # CompleteMultipartUpload
    ],
    ids=["put", "multipart"],
)
def test_lost_answer_to_our_own_create_only_put_is_success(
    minio: S3Server,
    bucket: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    size: int,
    lost_request: str,
) -> None:
    prefix = lost_request.format(bucket=bucket)
    data = os.urandom(size)  # incompressible: the multipart case stays multipart
    with LossyProxy(minio.endpoint, lambda line: line.startswith(prefix)) as proxy:
        storage = through(proxy, bucket, monkeypatch)
        with caplog.at_level(logging.INFO):
            obj = store(storage, "dumps/20261127T021500Z/app.pgdump.zst", io.BytesIO(data), CODEC)
        assert len(proxy.lost) == 1, proxy.lost  # the fault did happen
        assert (obj.size, obj.sha256) == sha256_of(storage, obj.key)
        assert obj.raw_size == size
        assert "already stored by an earlier attempt" in caplog.text
        storage.close()


def test_an_object_another_writer_stored_first_still_refuses(
    minio: S3Server, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Our put sends its whole body and gets 412 because another writer's object landed just
    before it (after our existence check): that object is not ours and is left alone."""
    key = "dumps/20261127T021500Z/app.pgdump.zst"
    theirs = os.urandom(50_000)
    direct = S3Storage(bucket, "p88", retry_deadline=10)  # AWS_ENDPOINT_URL: MinIO itself

    def they_win_the_race(line: str) -> bool:
        if line.startswith(f"PUT /{bucket}/p88/{key} "):
            direct.put(key, io.BytesIO(theirs), overwrite=False)
        return False  # nothing is lost: our PUT reaches MinIO after theirs and gets 412

    with LossyProxy(minio.endpoint, they_win_the_race) as proxy:
        ours = through(proxy, bucket, monkeypatch)
        with pytest.raises(ObjectExistsError):
            store(ours, key, io.BytesIO(os.urandom(50_000)), CODEC)
        ours.close()
    assert sha256_of(direct, key) == (len(theirs), hashlib.sha256(theirs).hexdigest())
    direct.close()


@pytest.mark.timeout(300)
def test_dump_survives_a_lost_answer_and_verifies(pg: PgCluster, minio: S3Server, tmp_path: Path) -> None:
    """End to end: the CLI's dump, whose last create-only object PUT loses its answer."""
    pg.sql("DROP DATABASE IF EXISTS lostanswer")
    pg.sql("CREATE DATABASE lostanswer")
    pg.sql("CREATE TABLE t AS SELECT g, md5(g::text) AS h FROM generate_series(1, 20000) g", "lostanswer")
    bucket = new_bucket(minio)
    base = cli_env(tmp_path, P88_DATABASE_URL=pg.url("lostanswer"), P88_STORAGE_URL=f"s3://{bucket}/p88", **minio.env())
    init_storage(base)

    def dump_object(line: str) -> bool:
        return line.startswith(f"PUT /{bucket}/p88/dumps/") and ".pgdump.zst " in line

    with LossyProxy(minio.endpoint, dump_object) as proxy:
        r = run_cli(["dump", "--json"], {**base, "AWS_ENDPOINT_URL": proxy.endpoint})
    assert len(proxy.lost) == 1, proxy.lost
    summary = json_out(r)
    msgs = [line["msg"] for line in log_lines(r.stderr)]
    assert "transient error, retrying" in msgs and any("already stored by an earlier attempt" in m for m in msgs)
    assert [b["id"] for b in json_out(run_cli(["list", "--json"], base))] == [summary["id"]]
    ok(run_cli(["verify", summary["id"]], base))
    pg.sql("DROP DATABASE lostanswer")
