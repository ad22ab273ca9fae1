"""S3 credentials scoped to the storage's prefix (issue 10 item 16), on MinIO: s3:ListBucket with
an s3:prefix condition and object actions on prefix/*, nothing bucket-wide.

Before: ``check()`` asked HeadBucket, which needs bucket-wide ListBucket; with such a policy
it was denied, so ``wal-fetch`` exited 126 for every missing file and recovery could never
start (nor end: "not in the archive" is how PostgreSQL learns the archive is exhausted).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from p88backup.errors import StorageError
from p88backup.storage.marker import initialise
from p88backup.storage.s3 import S3Storage
from tests.harness.helpers import cli_env, new_bucket, ok, run_cli
from tests.harness.s3 import S3Server

SEGMENT = "000000010000000000000001"


@pytest.fixture
def scoped(minio: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, dict[str, str]]]:
    bucket = new_bucket(minio)
    env = minio.scoped_env(bucket, "p88")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    yield bucket, env


def test_prefix_scoped_credentials_are_enough(
    scoped: tuple[str, dict[str, str]], caplog: pytest.LogCaptureFixture
) -> None:
    bucket, _ = scoped
    s = S3Storage(bucket, "p88", retry_deadline=5)
    assert initialise(s).outcome == "initialised"
    s.check()
    s.put("dumps/20261127T021500Z/manifest.json", io.BytesIO(b"{}"))
    assert [o.key for o in s.list("dumps/")] == ["dumps/20261127T021500Z/manifest.json"]
    assert s.stat("dumps/20261127T021500Z/manifest.json").size == 2
    s.delete_many(["dumps/20261127T021500Z/manifest.json"])
    # Listing interrupted uploads needs a bucket-wide right: expire goes on without it.
    with caplog.at_level(logging.WARNING):
        assert s.reap_interrupted(0) == []
    assert "AbortIncompleteMultipartUpload" in caplog.text
    fresh = S3Storage(bucket, "p88", retry_deadline=5)  # another process: finds the marker itself
    fresh.check()
    fresh.close()
    s.close()


def test_outside_the_prefix_check_says_access_denied_and_what_is_needed(scoped: tuple[str, dict[str, str]]) -> None:
    bucket, _ = scoped
    other = S3Storage(bucket, "elsewhere", retry_deadline=5)
    with pytest.raises(StorageError, match="access denied") as err:
        other.check()
    assert "s3:ListBucket on its prefix" in (err.value.hint or "")
    other.close()


def test_wal_fetch_with_scoped_credentials_says_not_found_not_126(
    scoped: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    bucket, aws = scoped
    env = cli_env(tmp_path, P88_STORAGE_URL=f"s3://{bucket}/p88", **aws)
    ok(run_cli(["init"], env))
    r = run_cli(["wal-fetch", SEGMENT, str(tmp_path / "x")], env)
    assert r.returncode == 1, r.stderr  # "not in the archive": recovery can end normally
    r = ok(run_cli(["list"], env))
    assert "no backups" in r.stdout
    ok(run_cli(["expire"], env))  # its sweep of interrupted uploads warns instead of failing
