"""Session fixtures: real PostgreSQL, S3 (moto and MinIO) and OpenSearch.

A service given by the environment wins over starting one (see
``scripts/services env``). When a service cannot be started, tests that need
it are skipped on a developer machine, but fail under ``CI=true``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.helpers import new_bucket, unavailable
from tests.harness.postgres import PgCluster
from tests.harness.s3 import S3Server, start_minio, start_moto


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "no tests ran" (exit 5) must not pass silently anywhere.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


@pytest.fixture(scope="session")
def services_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("services")
    os.chmod(d, 0o777)
    return d


@pytest.fixture(scope="session")
def pg(services_dir: Path) -> Iterator[PgCluster]:
    """The shared cluster for logical-backup tests (wal_level=replica)."""
    datadir, port = os.environ.get("P88_TEST_PG_DATADIR"), os.environ.get("P88_TEST_PG_PORT")
    if datadir and port:
        from tests.harness.postgres import default_bin_dir

        yield PgCluster(
            Path(datadir),
            int(port),
            default_bin_dir(),
            Path(datadir).parent / "postgres.log",
            Path(datadir).parent / "sock",
        )
        return
    try:
        cluster = PgCluster.create(services_dir / "pg")
        cluster.start()
    except Exception as exc:
        unavailable("PostgreSQL", exc)
    yield cluster
    cluster.destroy()


@pytest.fixture
def pg_factory(tmp_path: Path) -> Iterator[Callable[..., PgCluster]]:
    """Fresh clusters a test may break, stop or restore into."""
    made: list[PgCluster] = []

    def make(name: str = "pg", **kw: Any) -> PgCluster:
        base = tmp_path / name
        try:
            cluster = PgCluster.create(base, **kw)
        except Exception as exc:
            unavailable("PostgreSQL", exc)
        made.append(cluster)
        return cluster

    os.chmod(tmp_path, 0o777)
    yield make
    for c in made:
        c.destroy()


def _s3_from_env(kind: str) -> S3Server | None:
    endpoint = os.environ.get(f"P88_TEST_{kind.upper()}_ENDPOINT")
    if not endpoint:
        return None
    return S3Server(kind, endpoint, None, Path("."), Path("/dev/null"))


@pytest.fixture(scope="session")
def moto(services_dir: Path) -> Iterator[S3Server]:
    server = _s3_from_env("moto")
    if server:
        yield server
        return
    try:
        server = start_moto(services_dir / "moto")
    except Exception as exc:
        unavailable("moto S3 server", exc)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def minio(services_dir: Path) -> Iterator[S3Server]:
    server = _s3_from_env("minio")
    if server:
        yield server
        return
    try:
        server = start_minio(services_dir / "minio")
    except Exception as exc:
        unavailable("MinIO S3 server", exc)
    yield server
    server.stop()


@pytest.fixture
def s3_servers(request: pytest.FixtureRequest) -> Callable[[str], S3Server]:
    return lambda kind: request.getfixturevalue(kind)


@pytest.fixture
def s3_env(minio: S3Server, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, str]]:
    """A fresh bucket on the real S3 server; AWS_* set for in-process code too."""
    env = minio.env()
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    env["P88_STORAGE_URL"] = f"s3://{new_bucket(minio)}/p88"
    yield env


@pytest.fixture(scope="session")
def opensearch(services_dir: Path) -> Iterator[str]:
    url = os.environ.get("P88_TEST_OPENSEARCH_URL")
    if url:
        yield url.rstrip("/")
        return
    try:
        from tests.harness import opensearch_node

        node = opensearch_node.start(services_dir / "opensearch")
    except Exception as exc:
        unavailable("OpenSearch", exc)
    yield node.url
    node.stop()
