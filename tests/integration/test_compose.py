"""compose/ validated by the real Docker Compose CLI (built from its Go module, no engine needed:
``docker compose config`` loads, interpolates, merges and validates as ``up`` would), and the
db settings it gives tried on a real PostgreSQL.

Prod is tried as an operator sets it up: compose/ copied, .env written from .env.example, the
env/prod files from their templates. Each run sees only the variables given (``env -i``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.harness.compose import compose_binary, run_compose, run_initdb_script
from tests.harness.deploy import (
    COMPOSE_DIR,
    REQUIRED_VARIABLES,
    db_setting_problems,
    env_file_names,
    postgres_settings,
    service_problems,
)
from tests.harness.helpers import unavailable
from tests.harness.postgres import PgCluster

PROD_VALUES = {
    "ENVIRONMENT": "prod",
    "IMAGE_REPO": "registry.gitlab.com/p88/app",
    "IMAGE_TAG": "1.42.0@sha256:" + "0" * 64,
    "POSTGRES_PASSWORD": "test-superuser-password",
    "P88_BACKUP_PASSWORD": "test-backup-password",
    "P88_MONITOR_PASSWORD": "test-monitor-password",
}


@pytest.fixture(scope="session")
def compose_cli() -> Path:
    try:
        return compose_binary()
    except Exception as exc:  # no Go, no proxy: a failure under CI, a skip elsewhere
        unavailable("Docker Compose CLI", exc)
        raise


@pytest.fixture
def prod_project(tmp_path: Path) -> Path:
    """compose/ as a prod host has it: a copy, .env filled in from .env.example, and
    env/prod/*.env written from the templates (by Ansible, from the vault)."""
    root = tmp_path / "srv"
    project = root / "compose"
    shutil.copytree(COMPOSE_DIR, project)
    (root / "p88backup").mkdir()  # the build context (..) exists on a host with the clone
    example = (project / ".env.example").read_text()
    filled = re.sub(r"^([A-Z0-9_]+)=$", lambda m: f"{m.group(1)}={PROD_VALUES[m.group(1)]}", example, flags=re.M)
    (project / ".env").write_text(filled)
    for template in (project / "env" / "prod").glob("*.template"):
        template.with_suffix("").write_text(template.read_text())
    return project


def config(cli: Path, cwd: Path, *args: str, **variables: str) -> subprocess.CompletedProcess[str]:
    return run_compose([*args], cwd=cwd, variables=variables, home=cwd, binary=cli)


def model(r: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert isinstance(data, dict)
    return data


def test_compose_cli_is_the_pinned_release(compose_cli: Path, tmp_path: Path) -> None:
    r = run_compose(["version"], cwd=tmp_path, variables={}, home=tmp_path, binary=compose_cli)
    assert r.returncode == 0 and "v5.6.0" in r.stdout


def test_prod_config_is_accepted_and_every_service_is_checked_and_hardened(
    compose_cli: Path, prod_project: Path
) -> None:
    stack = model(config(compose_cli, prod_project, "config", "--format", "json"))
    services = stack["services"]
    assert set(services) == {"web", "worker", "db", "redis", "search", "backup", "grafana-agent"}
    for name, svc in services.items():
        assert service_problems(name, svc) == [], name
    # the prod env files are read (not dev's, not nothing)
    assert services["backup"]["environment"]["P88_STORAGE_URL"].startswith("s3://")
    assert services["web"]["environment"]["APP_ENV"] == "production"
    assert services["backup"]["command"] == ["schedule"]
    assert services["web"]["image"] == PROD_VALUES["IMAGE_REPO"] + ":" + PROD_VALUES["IMAGE_TAG"]
    # the depends_on conditions: nothing starts on a db that is not accepting connections
    for name in ("web", "worker", "backup"):
        assert services[name]["depends_on"]["db"]["condition"] == "service_healthy", name
    assert db_setting_problems(postgres_settings(services["db"]["command"])) == []


def test_proxy_profile_adds_traefik(compose_cli: Path, prod_project: Path) -> None:
    services = model(config(compose_cli, prod_project, "--profile", "proxy", "config", "--format", "json"))["services"]
    assert "traefik" in services
    assert service_problems("traefik", services["traefik"]) == []
    assert services["traefik"]["depends_on"]["web"]["condition"] == "service_healthy"


def test_dev_config_is_accepted_with_its_own_env_file(compose_cli: Path) -> None:
    """In the checkout as it is: env/dev/compose.env names both files and sets the dev values."""
    r = config(compose_cli, COMPOSE_DIR, "--env-file", "env/dev/compose.env", "config", "--format", "json")
    services = model(r)["services"]
    assert {"mailhog", "pgadmin"} <= set(services)
    assert "grafana-agent" not in services  # only with --profile observability
    for name, svc in services.items():
        assert service_problems(name, svc) == [], name
    # tmpfs PostgreSQL (§6) instead of the db_data volume
    mounts = {v["target"]: v["type"] for v in services["db"]["volumes"]}
    assert mounts["/var/lib/postgresql/data"] == "tmpfs"
    assert services["backup"]["environment"]["P88_STORAGE_URL"] == "file:///var/backups/p88"

    observed = config(
        compose_cli,
        COMPOSE_DIR,
        "--env-file",
        "env/dev/compose.env",
        "--profile",
        "observability",
        "config",
        "--services",
    )
    assert observed.returncode == 0, observed.stderr
    assert "grafana-agent" in observed.stdout.split()


def test_the_required_variables_are_the_secrets_and_what_has_no_safe_default(
    compose_cli: Path, prod_project: Path
) -> None:
    r = config(compose_cli, prod_project, "config", "--variables", "--format", "json")
    variables = model(r)
    required = {name for name, v in variables.items() if v.get("Required")}
    assert required == REQUIRED_VARIABLES
    documented = env_file_names((prod_project / ".env.example").read_text())
    assert set(variables) <= documented, sorted(set(variables) - documented)


@pytest.mark.parametrize("missing", sorted(REQUIRED_VARIABLES))
def test_a_missing_required_variable_is_refused(compose_cli: Path, prod_project: Path, missing: str) -> None:
    env_file = prod_project / ".env"
    env_file.write_text(re.sub(rf"^{missing}=.*$", f"{missing}=", env_file.read_text(), flags=re.M))
    r = config(compose_cli, prod_project, "config", "-q")
    assert r.returncode != 0
    assert f"required variable {missing} is missing a value" in r.stderr


def test_env_example_copied_unfilled_is_refused(compose_cli: Path, prod_project: Path) -> None:
    shutil.copy(prod_project / ".env.example", prod_project / ".env")
    r = config(compose_cli, prod_project, "config", "-q")
    assert r.returncode != 0
    # one message per field: `image: ${IMAGE_REPO:?}:${IMAGE_TAG:?}` names IMAGE_REPO only
    for name in REQUIRED_VARIABLES - {"IMAGE_TAG"}:
        assert f"required variable {name} is missing a value" in r.stderr


def test_a_missing_prod_env_file_is_refused(compose_cli: Path, prod_project: Path) -> None:
    """The environment's files are required: no silent fallback to dev's or to nothing."""
    (prod_project / "env" / "prod" / "backup.env").unlink()
    r = config(compose_cli, prod_project, "config", "-q")
    assert r.returncode != 0
    assert "env/prod/backup.env" in r.stderr


def _psql(cluster: PgCluster, conninfo: str, sql: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(cluster.bindir / "psql"), "-X", "-At", "-d", conninfo, "-c", sql],
        env={**os.environ, "PGPASSWORD": password},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_the_db_settings_and_roles_let_the_sidecar_stream_on_real_postgresql(
    compose_cli: Path, prod_project: Path, pg_factory: Callable[..., PgCluster]
) -> None:
    """The db command of the resolved prod model, the initdb script, and the image's pg_hba
    (`host all all all scram-sha-256`, appended by its entrypoint; no replication rule) on a real
    server: the backup role may open a replication connection and create its slot, the monitor
    role reads statistics and no data."""
    db = model(config(compose_cli, prod_project, "config", "--format", "json"))["services"]["db"]
    settings = postgres_settings(db["command"])
    cluster = pg_factory("db", settings=settings)
    # what a client in another container meets (the harness itself connects as postgres over
    # 127.0.0.1: its own line)
    (cluster.datadir / "pg_hba.conf").write_text(
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all all scram-sha-256\n"
    )
    cluster.start()
    assert cluster.scalar("SHOW archive_timeout") == "1min"
    assert cluster.scalar("SHOW max_slot_wal_keep_size") == settings["max_slot_wal_keep_size"]

    replication = f"host=127.0.0.1 port={cluster.port} user=backup dbname=p88 replication=true"
    before = _psql(cluster, replication, "IDENTIFY_SYSTEM", PROD_VALUES["P88_BACKUP_PASSWORD"])
    assert before.returncode != 0 and "no pg_hba.conf entry for replication connection" in before.stderr

    run_initdb_script(
        cluster,
        "postgres",
        {k: PROD_VALUES[k] for k in ("P88_BACKUP_PASSWORD", "P88_MONITOR_PASSWORD")},
    )
    cluster.restart()  # the image starts the real server after the init scripts
    cluster.sql("CREATE DATABASE p88")
    cluster.sql("CREATE TABLE private (secret text)", dbname="p88")

    r = _psql(cluster, replication, "IDENTIFY_SYSTEM", PROD_VALUES["P88_BACKUP_PASSWORD"])
    assert r.returncode == 0, r.stderr
    r = _psql(
        cluster,
        replication,
        "CREATE_REPLICATION_SLOT p88backup PHYSICAL RESERVE_WAL",
        PROD_VALUES["P88_BACKUP_PASSWORD"],
    )
    assert r.returncode == 0, r.stderr
    assert cluster.scalar("SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'p88backup'") == "reserved"

    monitor = f"host=127.0.0.1 port={cluster.port} user=p88_monitor dbname=p88"
    r = _psql(cluster, monitor, "SELECT count(*) > 0 FROM pg_ls_waldir()", PROD_VALUES["P88_MONITOR_PASSWORD"])
    assert r.returncode == 0 and r.stdout.strip() == "t", r.stderr
    r = _psql(cluster, monitor, "SELECT * FROM private", PROD_VALUES["P88_MONITOR_PASSWORD"])
    assert r.returncode != 0 and "permission denied" in r.stderr
    r = _psql(cluster, replication, "IDENTIFY_SYSTEM", "a-wrong-password")
    assert r.returncode != 0 and "password authentication failed" in r.stderr
