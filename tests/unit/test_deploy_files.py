"""The deployment files, checked where ``docker compose config`` cannot: healthchecks, restart
policies and hardening on every service, the sidecar's command in the CLI, the db settings the
sidecar needs, the alert rules against p88backup's metrics, the cron files, and every p88backup
command line of the runbook and the cron files parsed by the real CLI.

The Compose CLI's own verdict on the same files is tests/integration/test_compose.py.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from p88backup.cli.main import COMMANDS
from tests.harness.deploy import (
    COMPOSE_DIR,
    CRON_DIR,
    REPO,
    REQUIRED_VARIABLES,
    CommandLine,
    compose_variables,
    cron_commands,
    cron_jobs,
    db_setting_problems,
    dockerignore_rules,
    dockerignored,
    duration_seconds,
    env_file_names,
    env_file_values,
    load_compose,
    p88backup_argv,
    postgres_settings,
    promql_series,
    registry_series,
    runbook_commands,
    service_problems,
    split_commands,
)

BASE = COMPOSE_DIR / "docker-compose.yml"
DEV = COMPOSE_DIR / "docker-compose.dev.yml"
CRON_FILES = [CRON_DIR / "p88backup", CRON_DIR / "p88backup-compose"]


def base() -> dict[str, Any]:
    return load_compose(BASE)


def dev() -> dict[str, Any]:
    return load_compose(DEV)


def _stack_services() -> list[tuple[str, str]]:
    """(file, service) for every service of the stack: the base file's and the dev file's own."""
    found = [("base", name) for name in base()["services"]]
    found += [("dev", name) for name, svc in dev()["services"].items() if "image" in svc]
    return found


# -- services ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("where", "name"), _stack_services())
def test_every_service_has_healthcheck_restart_policy_and_hardening(where: str, name: str) -> None:
    svc = (base() if where == "base" else dev())["services"][name]
    assert service_problems(name, svc) == []


def test_the_stack_has_the_services_of_container_stack_md() -> None:
    assert set(base()["services"]) == {"web", "worker", "db", "redis", "search", "backup", "traefik", "grafana-agent"}
    assert base()["services"]["traefik"]["profiles"] == ["proxy"]
    assert {"mailhog", "pgadmin"} <= set(dev()["services"])


@pytest.mark.parametrize(
    ("name", "svc", "problems"),
    [
        (
            "redis",
            {},
            [
                "no healthcheck",
                "restart policy None",
                "no no-new-privileges",
                "root filesystem not",
                "capabilities not dropped",
                "runs as root",
            ],
        ),
        (
            "redis",
            {
                "healthcheck": {"test": ["CMD", "redis-cli", "ping"]},
                "restart": "unless-stopped",
                "security_opt": ["no-new-privileges:true"],
                "read_only": True,
                "cap_drop": ["ALL"],
            },
            ["runs as root"],
        ),
        (
            "db",
            {"healthcheck": {"test": ["NONE"]}, "restart": "no"},
            ["no healthcheck", "restart policy 'no'", "no no-new-privileges"],
        ),
        (
            "grafana-agent",
            {
                "healthcheck": {"test": ["CMD", "true"]},
                "restart": "always",
                "security_opt": ["no-new-privileges:true"],
                "read_only": True,
                "cap_drop": ["ALL"],
            },
            [],
        ),
    ],
)
def test_service_problems_table(name: str, svc: dict[str, Any], problems: list[str]) -> None:
    found = service_problems(name, svc)
    assert len(found) == len(problems)
    for got, want in zip(found, problems, strict=True):
        assert got.startswith(want)


def test_the_sidecar_runs_a_command_of_the_cli() -> None:
    """The sidecar's command must be one the CLI has (p88backup.cli.main.COMMANDS) and parse."""
    from tests.harness.deploy import cli_parse_error

    command = base()["services"]["backup"]["command"]
    assert command[0] == "schedule"
    assert command[0] in COMMANDS, f"p88backup has no command {command[0]!r} (yet?): {sorted(COMMANDS)}"
    assert cli_parse_error(command) is None


def test_sidecar_healthcheck_and_scrape_use_the_schedule_listen_port() -> None:
    from p88backup.settings import ScheduleSettings

    port = ScheduleSettings.model_fields["listen"].default.rpartition(":")[2]
    backup = base()["services"]["backup"]
    assert f"http://127.0.0.1:{port}/healthz" in " ".join(backup["healthcheck"]["test"])
    agent = yaml.safe_load((COMPOSE_DIR / "grafana-agent" / "agent.yaml").read_text())
    jobs = {job["job_name"]: job for job in agent["metrics"]["configs"][0]["scrape_configs"]}
    assert jobs["p88backup"]["static_configs"][0]["targets"] == [f"backup:{port}"]
    # p88backup's series carry a `job` label of their own (dump, drill ...): keep it
    assert jobs["p88backup"]["honor_labels"] is True


def test_grafana_agent_is_checked_on_ready_and_ships_logs() -> None:
    svc = base()["services"]["grafana-agent"]
    assert "/-/ready" in " ".join(svc["healthcheck"]["test"])
    assert "-config.expand-env" in svc["command"]
    agent = yaml.safe_load((COMPOSE_DIR / "grafana-agent" / "agent.yaml").read_text())
    logs = agent["logs"]["configs"][0]
    assert logs["scrape_configs"][0]["docker_sd_configs"][0]["host"] == "unix:///var/run/docker.sock"
    assert logs["clients"][0]["url"] == "${GRAFANA_LOGS_URL}"
    assert agent["metrics"]["global"]["remote_write"][0]["url"] == "${GRAFANA_METRICS_URL}"
    # the values come from the environment: each one is in both env files of the agent
    used = set(re.findall(r"\$\{([A-Z_]+)\}", (COMPOSE_DIR / "grafana-agent" / "agent.yaml").read_text()))
    given = {"ENVIRONMENT", "P88_MONITOR_PASSWORD"} | env_file_names(
        (COMPOSE_DIR / "env" / "prod" / "grafana-agent.env.template").read_text()
    )
    assert used <= given
    assert used - {"ENVIRONMENT", "P88_MONITOR_PASSWORD"} <= set(
        env_file_values((COMPOSE_DIR / "env" / "dev" / "grafana-agent.env").read_text())
    )


# -- the database ------------------------------------------------------------------------------


def test_db_settings_allow_the_sidecars_replication_and_bound_its_slot() -> None:
    db = base()["services"]["db"]
    settings = postgres_settings(db["command"])
    assert db_setting_problems(settings) == []
    assert int(settings["archive_timeout"]) <= 300, "the RPO of a quiet database is archive_timeout"
    assert duration_seconds(db["stop_grace_period"]) >= 60, "time for the shutdown checkpoint"
    assert db["shm_size"]
    script = (COMPOSE_DIR / "initdb" / "10-p88backup-role.sh").read_text()
    assert re.search(r"CREATE ROLE backup WITH [^;]*\bREPLICATION\b", script)
    assert re.search(r'"host replication backup all scram-sha-256" >> "\$PGDATA/pg_hba.conf"', script)
    # the passwords reach psql through its environment (\getenv), never its command line
    assert "\\getenv pw P88_BACKUP_PASSWORD" in script
    assert not re.search(r"-v \w+=\"?\$P88_\w*PASSWORD", script)


@pytest.mark.parametrize(
    ("settings", "problems"),
    [
        ({}, ["wal_level", "max_wal_senders", "max_replication_slots", "no archive_timeout", "no max_slot"]),
        (
            {
                "wal_level": "replica",
                "max_wal_senders": "10",
                "max_replication_slots": "1",
                "archive_timeout": "60s",
                "max_slot_wal_keep_size": "10GB",
            },
            ["max_replication_slots"],
        ),
        (
            {
                "wal_level": "logical",
                "max_wal_senders": "2",
                "max_replication_slots": "2",
                "archive_timeout": "60",
                "max_slot_wal_keep_size": "-1",
            },
            ["no max_slot"],
        ),
    ],
)
def test_db_setting_problems_table(settings: dict[str, str], problems: list[str]) -> None:
    found = db_setting_problems(settings)
    assert [p.split(" ")[0] for p in found] == [p.split(" ")[0] for p in problems]


@pytest.mark.parametrize(("text", "seconds"), [("120s", 120), ("2m0s", 120), ("1m30s", 90), ("1h", 3600)])
def test_duration_seconds_table(text: str, seconds: float) -> None:
    assert duration_seconds(text) == seconds


def test_the_db_image_is_debian_and_the_sidecar_uses_the_same_major() -> None:
    image = compose_default(BASE.read_text(), "DB_IMAGE")
    assert re.fullmatch(r"postgres:16-bookworm", image), image
    dockerfile = (COMPOSE_DIR / "backup.Dockerfile").read_text()
    assert "ARG PG_MAJOR=16" in dockerfile and "FROM postgres:${PG_MAJOR}-bookworm" in dockerfile


def compose_default(text: str, name: str) -> str:
    m = re.search(r"\$\{" + name + r":-([^}]*)\}", text)
    assert m, f"{name} has no default"
    return m.group(1)


# -- variables and env files -------------------------------------------------------------------


def test_secrets_and_values_without_a_safe_default_are_required() -> None:
    variables = compose_variables(BASE.read_text())
    for name in REQUIRED_VARIABLES:
        assert variables.get(name) == {":?"}, f"{name}: {variables.get(name)}"
    for name, operators in variables.items():
        assert operators, f"${{{name}}} is used bare: it would be blank when unset"


def test_every_variable_is_documented_in_env_example() -> None:
    documented = env_file_names((COMPOSE_DIR / ".env.example").read_text())
    used = set(compose_variables(BASE.read_text())) | set(compose_variables(DEV.read_text()))
    assert used - documented - {"APP_SRC"} == set()  # APP_SRC: dev only, in env/dev/compose.env
    assert "APP_SRC" in env_file_values((COMPOSE_DIR / "env" / "dev" / "compose.env").read_text())
    # the required ones are listed, all empty: copied unfilled, the file is refused
    values = env_file_values((COMPOSE_DIR / ".env.example").read_text())
    assert set(values) == REQUIRED_VARIABLES
    assert not any(values.values())


def test_dev_compose_env_sets_every_required_variable() -> None:
    values = env_file_values((COMPOSE_DIR / "env" / "dev" / "compose.env").read_text())
    assert all(values.get(name) for name in REQUIRED_VARIABLES)
    assert values["ENVIRONMENT"] == "dev"
    assert values["COMPOSE_FILE"].split(":") == ["docker-compose.yml", "docker-compose.dev.yml"]


@pytest.mark.parametrize("environment", ["dev", "prod"])
def test_each_environments_env_files_exist(environment: str) -> None:
    """dev's files are in the repository; prod's are written from their templates (they hold
    secrets, so git ignores them). The old file named env/dev/web.env, which did not exist."""
    for name, svc in base()["services"].items():
        for entry in svc.get("env_file", []):
            path = COMPOSE_DIR / re.sub(r"\$\{ENVIRONMENT[^}]*\}", environment, entry)
            if environment == "prod" and path.parent.name == "prod":
                assert path.with_name(path.name + ".template").is_file(), f"{name}: {entry}"
            else:
                assert path.is_file(), f"{name}: {entry} -> {path}"
    assert "/env/prod/*.env" in (COMPOSE_DIR / ".gitignore").read_text().splitlines()


def test_prod_templates_hold_no_secret_values() -> None:
    for template in (COMPOSE_DIR / "env" / "prod").glob("*.template"):
        for key, value in env_file_values(template.read_text()).items():
            if re.search(r"PASSWORD|SECRET|API_KEY|ACCESS_KEY", key):
                assert value == "", f"{template.name}: {key} has a value"


def test_the_sidecar_schedule_is_utc_cron_of_existing_jobs() -> None:
    from p88backup.settings import ScheduleSettings

    values = env_file_values((COMPOSE_DIR / "env" / "backup.env").read_text())
    schedule = {
        k.removeprefix("P88_SCHEDULE__").lower(): v for k, v in values.items() if k.startswith("P88_SCHEDULE__")
    }
    assert set(schedule) == {"dump", "basebackup", "expire", "wal_verify", "drill"}
    assert set(schedule) <= set(ScheduleSettings.model_fields)
    for expr in schedule.values():
        assert len(expr.split()) == 5, expr


# -- the image's build context -----------------------------------------------------------------


def test_dockerignore_keeps_the_build_context_to_what_the_dockerfile_copies() -> None:
    rules = dockerignore_rules((REPO / ".dockerignore").read_text())
    dockerfile = (COMPOSE_DIR / "backup.Dockerfile").read_text()
    copied = [src for line in re.findall(r"^COPY (.+) \S+$", dockerfile, re.M) for src in line.split()]
    assert copied == ["pyproject.toml", "README.md", "constraints.txt", "p88backup"]
    for src in copied:
        assert not dockerignored(src, rules), src
    assert not dockerignored("p88backup/cli/main.py", rules)
    for left_out in (
        ".venv/bin/python",
        ".git/HEAD",
        "tests/unit/test_cli.py",
        "compose/README.md",
        "p88backup/__pycache__/x.pyc",
    ):
        assert dockerignored(left_out, rules), left_out


@pytest.mark.parametrize(
    ("patterns", "path", "ignored"),
    [
        ("*\n!p88backup/", "p88backup/cli/main.py", False),
        ("*\n!p88backup/", "tests/x.py", True),
        ("*\n!README.md", "compose/README.md", True),
        ("*\n!README.md", "README.md", False),
        ("**/__pycache__", "a/b/__pycache__/c.pyc", True),
        (".venv", ".venv/lib/x", True),
        ("", "anything", False),
    ],
)
def test_dockerignore_table(patterns: str, path: str, ignored: bool) -> None:
    assert dockerignored(path, dockerignore_rules(patterns)) is ignored


# -- alerts ------------------------------------------------------------------------------------


def _alert_rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((COMPOSE_DIR / "grafana-agent" / "alerts.yml").read_text())
    return [rule for group in data["groups"] for rule in group["rules"]]


def test_alert_rules_use_only_series_that_p88backup_exports() -> None:
    known = registry_series() | {"up"}  # up: Prometheus's own, per scrape target
    for rule in _alert_rules():
        assert set(rule) <= {"alert", "expr", "for", "labels", "annotations"}, rule["alert"]
        series = promql_series(rule["expr"])
        assert series, f"{rule['alert']}: names no series"
        assert series <= known, f"{rule['alert']}: {sorted(series - known)} not in p88backup/metrics.py"
        assert rule["labels"]["severity"] in ("critical", "warning")
        assert rule["annotations"]["summary"]


def test_alert_rules_cover_old_backups_stopped_archiving_and_failed_drills() -> None:
    exprs = {rule["alert"]: " ".join(rule["expr"].split()) for rule in _alert_rules()}
    joined = "\n".join(exprs.values())
    for kind in ("dump", "basebackup", "drill"):
        assert f'time() - max(p88backup_newest_backup_timestamp_seconds{{kind="{kind}"}}) >' in joined, kind
    assert "time() - p88backup_newest_wal_timestamp_seconds > 15 * 60" in joined
    assert "p88backup_drill_success == 0" in joined and 'p88backup_check_ok{check="drill_passed"} == 0' in joined
    assert "p88backup_status_check_success == 0" in joined and "p88backup_healthy == 0" in joined
    assert 'up{job="p88backup"}' in joined


def test_alert_rules_cannot_go_quiet_while_protection_has_stopped() -> None:
    """Before: backup ages were read from the sidecar's per-process job series (a restart resolved
    an active alert and restarted the absent() timers), archiving stopped needed a known lag (NaN,
    PostgreSQL unreachable, never fired) and the age gauge (frozen at its last good value while
    storage was down), and nothing alerted on a status check that could not be made."""
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    for name, rule in rules.items():
        expr = rule["expr"]
        # per-process series reset by a restart decide no "too old"; nothing waits on their absence
        assert "p88backup_last_success_timestamp_seconds" not in expr, name
        assert "absent(" not in expr or "absent(up{" in expr, name
        # a gauge frozen (or NaN) when the check fails never decides alone: times and verdicts do
        assert "p88backup_newest_wal_age_seconds" not in expr, name
        if "p88backup_wal_archive_lag_bytes" in expr and name != "P88BackupArchiveLagHigh":
            # NaN compares false: the lag may only *silence* the rule when it is known to be small
            assert " ".join(expr.split()).endswith("unless on() p88backup_wal_archive_lag_bytes <= 16 * 1024 * 1024")
    for name in ("P88BackupStatusCheckFailing", "P88BackupUnhealthy"):
        assert rules[name]["labels"]["severity"] == "critical" and rules[name]["for"] == "15m"


@pytest.mark.parametrize(
    ("expr", "series"),
    [
        ('time() - max(a_b{job="dump"}) > 26 * 3600', {"a_b"}),
        ("increase(x_total[1h]) > 0", {"x_total"}),
        ("a > 900 and b > 16 * 1024", {"a", "b"}),
        ('absent(up{job="p88backup"})', {"up"}),
        ("sum by (job) (rate(c[5m])) / on(job) d", {"c", "d"}),
    ],
)
def test_promql_series_table(expr: str, series: set[str]) -> None:
    assert promql_series(expr) == series


# -- command lines of the runbook and the cron files -------------------------------------------


def _all_command_lines() -> list[CommandLine]:
    found = runbook_commands() + runbook_commands(COMPOSE_DIR / "README.md")
    for path in CRON_FILES:
        for job in cron_jobs(path):
            found += [CommandLine(job.where, tuple(argv)) for _, argv in cron_commands(job)]
    return found


def test_the_command_lines_are_found() -> None:
    """The discovery below is not vacuous: the runbook and both cron files hold commands."""
    lines = _all_command_lines()
    wheres = {c.where.split(":")[0] for c in lines}
    assert wheres == {"docs/BU_recovery.md", "compose/README.md", "cron/p88backup", "cron/p88backup-compose"}
    assert len(runbook_commands()) >= 10


@pytest.mark.parametrize("line", _all_command_lines(), ids=str)
def test_every_command_line_parses_with_the_real_cli(line: CommandLine) -> None:
    from tests.harness.deploy import cli_parse_error

    assert cli_parse_error(line.argv) is None, str(line)


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["verify", "latest"], None),
        (["--log-format", "json", "status"], None),
        (["restore", "--dump", "latest", "--target-db", "x"], None),
        (["dump", "--no-such-option"], "No such option"),
        (["no-such-command"], "No such command"),
        (["--log-format", "xml", "status"], "Invalid value"),
        (["restore-point"], "Missing argument"),
        (["exit-codes", "--help"], None),
    ],
)
def test_cli_parse_error_table(argv: list[str], error: str | None) -> None:
    from tests.harness.deploy import cli_parse_error

    found = cli_parse_error(argv)
    assert (found is None) if error is None else (found is not None and error in found), found


@pytest.mark.parametrize(
    ("line", "argvs"),
    [
        ("p88 dump && p88 verify latest", [["dump"], ["verify", "latest"]]),
        ("docker compose run --rm -T backup status   # comment", [["status"]]),
        ("docker compose -f a.yml -f b.yml run --rm -T backup basebackup", [["basebackup"]]),
        ("docker compose run --rm -v vol:/restore backup restore --pitr latest", [["restore", "--pitr", "latest"]]),
        ("docker compose run --rm --entrypoint bash backup", []),
        ("docker compose run --rm --entrypoint=p88backup backup list", [["list"]]),
        ("docker compose run --rm web manage.py", []),
        ("docker compose ps backup", []),
        ("psql -h localhost -p 5499 -U backup p88", []),
        ("p88backup wal-verify | tail -n 3; echo done", [["wal-verify"]]),
    ],
)
def test_command_extraction_table(line: str, argvs: list[list[str]]) -> None:
    found = [argv for tokens in split_commands(line) if (argv := p88backup_argv(tokens))]
    assert found == argvs


# -- cron --------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", CRON_FILES, ids=lambda p: p.name)
def test_cron_files_say_utc_mail_failures_and_use_pipefail(path: Path) -> None:
    jobs = cron_jobs(path)
    assert jobs
    env = jobs[0].environment
    assert env["SHELL"] == "/bin/bash"  # pipefail and set -a are bash
    assert env["CRON_TZ"] == "UTC"
    assert env["MAILTO"]
    for job in jobs:
        assert job.command.startswith("set -o pipefail;"), job.where
        assert cron_commands(job), f"{job.where}: no job run through p88backup-job"


def test_host_cron_exports_its_env_file() -> None:
    for job in cron_jobs(CRON_DIR / "p88backup"):
        assert "set -a; . /etc/p88backup/env; set +a;" in job.command, job.where


@pytest.mark.parametrize("path", CRON_FILES, ids=lambda p: p.name)
def test_cron_runs_the_schedulers_jobs_at_its_times(path: Path) -> None:
    """The same jobs, same times, as P88_SCHEDULE__* of the compose sidecar (verify follows dump)."""
    values = env_file_values((COMPOSE_DIR / "env" / "backup.env").read_text())
    schedule = {
        k.removeprefix("P88_SCHEDULE__").lower(): v for k, v in values.items() if k.startswith("P88_SCHEDULE__")
    }
    from_cron = {}
    for job in cron_jobs(path):
        (name, argv), *after = cron_commands(job)
        assert name == argv[0], job.where  # the wrapper's name is the job's
        from_cron[argv[0].replace("-", "_")] = job.schedule
        assert [a for _, a in after] in ([], [["verify", "latest"]]), job.where
    # `status` is no scheduler job (the scheduler checks it every minute for /healthz): cron runs it hourly.
    assert from_cron.pop("status") == "10 * * * *"
    assert from_cron == schedule


@pytest.fixture
def fakebin(tmp_path: Path) -> Path:
    """PATH with the real p88backup-job, and stand-ins for p88backup and logger that record calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shutil.copy(CRON_DIR / "p88backup-job", bin_dir / "p88backup-job")
    (bin_dir / "p88backup").write_text(
        "#!/bin/bash\n"
        'echo "$*" >> "$REC/calls"\n'
        'env > "$REC/env.$1"\n'
        'echo "{\\"msg\\": \\"running $1\\"}" >&2\n'
        'exit "${FAIL_CODE:-0}"\n'
    )
    (bin_dir / "logger").write_text(
        '#!/bin/bash\n[ -n "${LOGGER_BROKEN:-}" ] && exit 1\necho "logger $*" >> "$REC/syslog"\n'
        'while [ "$#" -gt 0 ]; do [ "$1" = -f ] && cat "$2" >> "$REC/syslog"; shift; done\n'
    )
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    return bin_dir


def _run_line(command: str, fakebin: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    rec = tmp_path / "rec"
    rec.mkdir(exist_ok=True)
    return subprocess.run(
        ["/bin/bash", "-c", command],
        env={"PATH": f"{fakebin}:/usr/bin:/bin", "REC": str(rec), "TMPDIR": str(tmp_path), **env},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_host_cron_line_passes_the_env_file_to_p88backup(fakebin: Path, tmp_path: Path) -> None:
    """The old lines sourced the file without exporting it: PGPASSWORD never reached p88backup."""
    env_file = tmp_path / "env"
    env_file.write_text("PGPASSWORD=from-the-env-file\nAWS_ACCESS_KEY_ID=key-id\n")
    job = cron_jobs(CRON_DIR / "p88backup")[0]
    r = _run_line(job.command.replace("/etc/p88backup/env", str(env_file)), fakebin, tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout == r.stderr == ""  # success: no output, so cron sends no mail
    seen = (tmp_path / "rec" / "env.dump").read_text()
    assert "PGPASSWORD=from-the-env-file" in seen.splitlines()
    assert "AWS_ACCESS_KEY_ID=key-id" in seen.splitlines()
    assert (tmp_path / "rec" / "calls").read_text().splitlines() == ["dump", "verify latest"]
    syslog = (tmp_path / "rec" / "syslog").read_text()
    assert "-t p88backup-dump" in syslog and "running dump" in syslog


def test_a_failed_job_exits_non_zero_and_says_so_for_cron_mail(fakebin: Path, tmp_path: Path) -> None:
    """The old lines piped into logger without pipefail: a failed dump exited 0 and said nothing."""
    env_file = tmp_path / "env"
    env_file.write_text("PGPASSWORD=x\n")
    job = cron_jobs(CRON_DIR / "p88backup")[0]
    r = _run_line(job.command.replace("/etc/p88backup/env", str(env_file)), fakebin, tmp_path, FAIL_CODE="8")
    assert r.returncode == 8
    assert "p88backup job dump failed: exit 8" in r.stderr
    assert "running dump" in r.stderr  # the last lines of output, in the mail
    assert (tmp_path / "rec" / "calls").read_text().splitlines() == ["dump"]  # no verify after a failed dump
    assert "-p user.err job dump failed: exit 8" in (tmp_path / "rec" / "syslog").read_text()


def test_without_syslog_the_output_goes_to_cron_mail(fakebin: Path, tmp_path: Path) -> None:
    r = _run_line("p88backup-job expire p88backup expire", fakebin, tmp_path, LOGGER_BROKEN="1")
    assert r.returncode == 0
    assert "syslog unavailable" in r.stderr and "running expire" in r.stderr


def test_the_job_wrapper_needs_a_name_and_a_command(fakebin: Path, tmp_path: Path) -> None:
    r = _run_line("p88backup-job dump", fakebin, tmp_path)
    assert r.returncode == 2 and "usage" in r.stderr


def test_the_job_wrapper_is_executable() -> None:
    assert os.access(CRON_DIR / "p88backup-job", os.X_OK)
    assert (CRON_DIR / "p88backup-job").read_text().startswith("#!/bin/bash\n")
