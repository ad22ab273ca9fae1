"""Session fixtures: real PostgreSQL (of a chosen major), S3 (moto and MinIO) and OpenSearch.

A service given by the environment wins over starting one (see
``scripts/services env``). When a service cannot be started, tests that need
it are skipped on a developer machine, but fail under ``CI=true``.

PostgreSQL majors: a test marked ``@pytest.mark.matrix`` runs once per major of
``MATRIX_MAJORS`` (ids ``pg15``, ``pg16``, ``pg18``); every other test that makes
clusters runs once, on the production major 16 (id ``pg16``). ``pg_factory`` and
fixtures that take ``pg_major`` follow it. ``P88_TEST_PG_MAJOR=N`` runs it all on N.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness.helpers import INTEGRITY_CHECKS, new_bucket, unavailable
from tests.harness.postgres import (
    MATRIX_MAJORS,
    PRODUCTION_MAJOR,
    PgCluster,
    bin_dir_for,
    default_major,
    installs,
    stop_servers_under,
)
from tests.harness.s3 import S3Server, start_minio, start_moto


def matrix_majors() -> list[int]:
    return [int(os.environ["P88_TEST_PG_MAJOR"])] if os.environ.get("P88_TEST_PG_MAJOR") else list(MATRIX_MAJORS)


def _default_major_or_production() -> int:
    try:
        return default_major()
    except RuntimeError:  # nothing installed: the pg_major fixture says so (skip, or fail in CI)
        return PRODUCTION_MAJOR


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Give every test that makes clusters its major, visible in its id."""
    matrix = metafunc.definition.get_closest_marker("matrix") is not None
    if "pg_major" not in metafunc.fixturenames:
        if matrix:
            raise pytest.UsageError(
                f"{metafunc.definition.nodeid} is marked matrix but none of its fixtures takes pg_major"
            )
        return
    majors = matrix_majors() if matrix else [_default_major_or_production()]
    metafunc.parametrize("pg_major", majors, ids=[f"pg{m}" for m in majors], indirect=True, scope="module")


@pytest.fixture(scope="module")
def pg_major(request: pytest.FixtureRequest) -> int:
    """The PostgreSQL major of this test's clusters."""
    major = int(getattr(request, "param", _default_major_or_production()))
    try:
        bin_dir_for(major)
    except RuntimeError as exc:
        unavailable(f"PostgreSQL {major}", exc)
    return major


@pytest.fixture(scope="session", autouse=True)
def no_server_left_running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Set up first, torn down last (also after a timeout or Ctrl-C): stop any PostgreSQL server
    still running under this session's temp dir, e.g. one a timed-out test or a restore started."""
    yield
    for datadir in stop_servers_under(tmp_path_factory.getbasetemp()):
        print(f"\nharness: stopped a PostgreSQL server left running in {datadir}")


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # "no tests ran" (exit 5) must not pass silently anywhere.
    if exitstatus == pytest.ExitCode.NO_TESTS_COLLECTED:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Which integrity check ran on which major (amcheck where installed, else pg_checksums)."""
    if not INTEGRITY_CHECKS:
        return
    counts = Counter((major, check) for _, major, check in INTEGRITY_CHECKS)
    terminalreporter.section("integrity checks of restored clusters")
    for (major, check), n in sorted(counts.items()):
        terminalreporter.line(f"PostgreSQL {major}: {check} x{n}")


@pytest.fixture(scope="session", autouse=True)
def service_user_can_run_the_cli(request: pytest.FixtureRequest) -> None:
    """As root, test servers run as ``postgres`` and call the venv's p88backup from archive_command
    and restore_command, and the servers themselves may live in the venv (the wheel's 16 and 18).
    If that user cannot run them, every archive attempt fails and base backups wait for WAL that
    never comes: stop the whole session now, with the reason, instead."""
    if os.geteuid() != 0 or not any("integration" in item.path.parts for item in request.session.items):
        return
    from tests.harness.archiving import P88
    from tests.harness.procs import service_user, service_user_cannot_run

    programs = [[P88, "--version"]] + [[str(d / "postgres"), "--version"] for d in installs().values()]
    failure = service_user_cannot_run(programs)
    if failure:
        user = service_user()
        pytest.exit(
            f"the {user} user cannot run {failure}\nTest servers run as {user} and call p88backup from"
            " archive_command/restore_command: archiving would fail and tests would wait for it. Run"
            " scripts/setup as root (it makes the clone's parent directories traversable), or clone the"
            f" repository where {user} can reach it.",
            returncode=pytest.ExitCode.TESTS_FAILED,
        )


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
        major = int((Path(datadir) / "PG_VERSION").read_text().strip())
        yield PgCluster(
            Path(datadir),
            int(port),
            bin_dir_for(major),
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
def pg_factory(tmp_path: Path, pg_major: int) -> Iterator[Callable[..., PgCluster]]:
    """Fresh clusters a test may break, stop or restore into, of the test's major unless told."""
    made: list[PgCluster] = []

    def make(name: str = "pg", **kw: Any) -> PgCluster:
        base = tmp_path / name
        kw.setdefault("major", pg_major)
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
