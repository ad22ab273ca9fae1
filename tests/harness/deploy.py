"""Checks of the deployment files (compose/, cron/, the runbook) that ``docker compose config``
cannot make: shared by the fast structural tests (raw YAML) and the Compose CLI tests (the model
the real CLI resolved and merged).

Pure functions over plain data, so each is table-tested on its own.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.harness.helpers import REPO

COMPOSE_DIR = REPO / "compose"
CRON_DIR = REPO / "cron"
RUNBOOK = REPO / "docs" / "BU_recovery.md"
# Variables the stack cannot start without (`${VAR:?…}` in the compose files; none has a default).
REQUIRED_VARIABLES = frozenset(
    {"ENVIRONMENT", "IMAGE_REPO", "IMAGE_TAG", "POSTGRES_PASSWORD", "P88_BACKUP_PASSWORD", "P88_MONITOR_PASSWORD"}
)

# container_stack.md §8: db and search keep the capabilities (and writable root) their upstream
# entrypoints need; pgAdmin (dev only) writes its config into the image at start.
KEEPS_UPSTREAM_DEFAULTS = {"db", "search", "pgadmin"}
# Root without capabilities, for the docker socket (owned by root).
ROOT_FOR_DOCKER_SOCKET = {"traefik", "grafana-agent"}
RESTART_POLICIES = {"always", "unless-stopped"}


# -- compose -----------------------------------------------------------------------------------


class _ComposeLoader(yaml.SafeLoader):
    """PyYAML plus the merge tags of compose files (``!reset``, ``!override``): the value as is."""


def _tagged(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


_ComposeLoader.add_constructor("!reset", _tagged)
_ComposeLoader.add_constructor("!override", _tagged)


def load_compose(path: Path) -> dict[str, Any]:
    data = yaml.load(path.read_text(), Loader=_ComposeLoader)  # noqa: S506 - a SafeLoader subclass
    assert isinstance(data, dict), f"{path}: not a mapping"
    return data


def service_problems(name: str, svc: dict[str, Any]) -> list[str]:
    """What a service of the stack lacks: healthcheck, restart policy, hardening (§8)."""
    problems = []
    hc = svc.get("healthcheck") or {}
    if hc.get("disable") or not hc.get("test") or hc.get("test") == ["NONE"]:
        problems.append("no healthcheck")
    if svc.get("restart") not in RESTART_POLICIES:
        problems.append(f"restart policy {svc.get('restart')!r}, want one of {sorted(RESTART_POLICIES)}")
    if "no-new-privileges:true" not in (svc.get("security_opt") or []):
        problems.append("no no-new-privileges")
    if name in KEEPS_UPSTREAM_DEFAULTS:
        return problems
    if svc.get("read_only") is not True:
        problems.append("root filesystem not read_only")
    if "ALL" not in (svc.get("cap_drop") or []):
        problems.append("capabilities not dropped (cap_drop: [ALL])")
    user = str(svc.get("user", ""))
    if name not in ROOT_FOR_DOCKER_SOCKET and (not user or user.split(":")[0] in ("0", "root")):
        problems.append(f"runs as root (user {user!r})")
    return problems


def postgres_settings(command: list[str]) -> dict[str, str]:
    """The ``-c name=value`` settings of a ``postgres`` command line."""
    settings = {}
    for flag, value in zip(command, command[1:], strict=False):
        if flag == "-c":
            key, _, val = value.partition("=")
            settings[key.strip()] = val.strip()
    return settings


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 0.000001}


def duration_seconds(text: str) -> float:
    """A compose duration (``120s``, ``1m30s``, the CLI's ``2m0s``) in seconds."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def db_setting_problems(settings: dict[str, str]) -> list[str]:
    """What keeps the sidecar from streaming WAL, or leaves the WAL it has not taken unbounded."""
    problems = []
    if settings.get("wal_level") not in ("replica", "logical"):
        problems.append(f"wal_level {settings.get('wal_level')!r}: pg_receivewal needs replica")
    for name in ("max_wal_senders", "max_replication_slots"):
        # wal-stream and a concurrent pg_basebackup each need one
        if int(settings.get(name, "0")) < 2:
            problems.append(f"{name} {settings.get(name)!r}: need at least 2")
    if int(settings.get("archive_timeout", "0").rstrip("s") or 0) <= 0:
        problems.append("no archive_timeout: a quiet database never closes its segment")
    if settings.get("max_slot_wal_keep_size", "-1") in ("-1", ""):
        problems.append("no max_slot_wal_keep_size: a stuck sidecar fills the db disk")
    return problems


VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}")


def compose_variables(text: str) -> dict[str, set[str]]:
    """Each ``${VAR...}`` of a compose file and the operators it is used with ('' = none)."""
    text = text.replace("$$", "")  # an escaped dollar is the container's, not compose's
    text = re.sub(r"(^|\s)#.*$", "", text, flags=re.M)  # YAML comments are not interpolated
    found: dict[str, set[str]] = {}
    for m in VARIABLE.finditer(text):
        found.setdefault(m.group(1), set()).add(m.group(2) or "")
    return found


def env_file_names(text: str) -> set[str]:
    """Names assigned or shown (``# NAME=``) in an env file such as .env.example."""
    return set(re.findall(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=", text, re.M))


def env_file_values(text: str) -> dict[str, str]:
    """The ``NAME=value`` lines of an env file (comments and blank lines skipped)."""
    values = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


# -- .dockerignore -----------------------------------------------------------------------------


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + r"\Z")


def dockerignore_rules(text: str) -> list[tuple[bool, re.Pattern[str]]]:
    """(exclude?, regex) per pattern, in order; as Docker reads them (paths cleaned, no leading /)."""
    rules = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        pattern = pattern.strip().strip("/") or "."
        rules.append((not negate, _pattern_regex(pattern)))
    return rules


def dockerignored(path: str, rules: list[tuple[bool, re.Pattern[str]]]) -> bool:
    """Whether Docker leaves ``path`` (relative, '/'-separated) out of the build context: the last
    pattern that matches the path or one of its parent directories decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for exclude, regex in rules:
        if any(regex.match(c) for c in candidates):
            excluded = exclude
    return excluded


# -- PromQL ------------------------------------------------------------------------------------

_PROMQL_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}


def promql_series(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions and keywords left out)."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # range selectors
    s = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end() :].lstrip().startswith("(") or m.group() in _PROMQL_KEYWORDS:
            continue
        names.add(m.group())
    return names


def registry_series() -> set[str]:
    """Every series name p88backup's metrics registry can export."""
    from p88backup import metrics

    names = set()
    for family in metrics.registry().collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type in ("histogram", "summary"):
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


# -- p88backup command lines in the runbook and the cron files --------------------------------

# docker compose's own options that take a value, before `run` and after it.
_COMPOSE_VALUE_OPTIONS = {"-f", "--file", "-p", "--project-name", "--env-file", "--profile", "--project-directory"}
_RUN_VALUE_OPTIONS = {
    "-v",
    "--volume",
    "-e",
    "--env",
    "--entrypoint",
    "--name",
    "-u",
    "--user",
    "-w",
    "--workdir",
    "-p",
    "--publish",
    "-l",
    "--label",
}
_OPERATORS = {"&&", "||", ";", "|", "&", "(", ")"}


@dataclass(frozen=True)
class CommandLine:
    where: str  # file:line
    argv: tuple[str, ...]  # the arguments after `p88backup`

    def __str__(self) -> str:
        return f"{self.where}: p88backup {shlex.join(self.argv)}"


def split_commands(line: str) -> list[list[str]]:
    """A shell line's simple commands (split at && || ; | &), comments dropped."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    for token in lexer:
        if token in _OPERATORS:
            commands.append([])
        else:
            commands[-1].append(token)
    return [c for c in commands if c]


def p88backup_argv(tokens: list[str], job_wrapper: bool = False) -> list[str] | None:
    """The p88backup arguments of one simple command, or None if it does not run p88backup.

    Understands ``p88backup ...``, the runbook's ``p88 ...`` alias, ``docker compose [opts] run
    [opts] backup ...`` (the image's entrypoint is p88backup; another --entrypoint is not), and,
    with ``job_wrapper``, cron's ``p88backup-job NAME COMMAND...``.
    """
    if job_wrapper and tokens[:1] == ["p88backup-job"]:
        tokens = tokens[2:]
    if not tokens:
        return None
    if tokens[0] in ("p88backup", "p88"):
        return tokens[1:]
    if tokens[:2] != ["docker", "compose"]:
        return None
    i = 2
    while i < len(tokens) and tokens[i] != "run":
        i += 2 if tokens[i] in _COMPOSE_VALUE_OPTIONS else 1
    i += 1
    while i < len(tokens) and tokens[i].startswith("-"):
        option, has_value, value = tokens[i].partition("=")
        takes_next = not has_value and option in _RUN_VALUE_OPTIONS
        if option == "--entrypoint" and (value if has_value else "".join(tokens[i + 1 : i + 2])) != "p88backup":
            return None  # e.g. --entrypoint bash: a shell, not p88backup
        i += 2 if takes_next else 1
    if i >= len(tokens) or tokens[i] != "backup":
        return None
    return tokens[i + 1 :]


def _code_lines(text: str) -> Iterator[tuple[int, str]]:
    """Shell lines of a Markdown file: fenced sh/bash/plain blocks (continuations joined), then
    inline code spans outside them; each with its line number."""
    fence: str | None = None
    pending = ""
    start = 0
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            fence = None if fence is not None else (stripped[3:].strip() or "sh")
            continue
        if fence is not None:
            if fence not in ("sh", "bash", "shell", "console"):
                continue
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            yield start, pending + stripped
            pending = ""
            continue
        for span in re.findall(r"`([^`]+)`", line):
            # placeholders in prose ("p88backup ...") are not command lines
            if "..." not in span and "…" not in span:
                yield number, span


def runbook_commands(path: Path = RUNBOOK) -> list[CommandLine]:
    found = []
    for number, line in _code_lines(path.read_text()):
        try:
            commands = split_commands(line)
        except ValueError:  # unbalanced quotes: a span of prose, not a command
            continue
        for tokens in commands:
            argv = p88backup_argv(tokens)
            if argv:  # no arguments: prose naming the program or the compose prefix
                found.append(CommandLine(f"{path.relative_to(REPO)}:{number}", tuple(argv)))
    return found


@dataclass(frozen=True)
class CronJob:
    where: str
    schedule: str  # the five time fields
    user: str
    command: str  # as cron hands it to the shell, variables of the file expanded
    environment: dict[str, str]


_ENV_LINE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def cron_jobs(path: Path) -> list[CronJob]:
    """The job lines of an /etc/cron.d file (five time fields, a user, a command)."""
    env: dict[str, str] = {}
    jobs = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _ENV_LINE.match(line)
        if m:
            env[m.group(1)] = m.group(2).strip().strip("'\"")
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, f"{path}:{number}: not a cron.d job line"
        jobs.append(
            CronJob(f"{path.relative_to(REPO)}:{number}", " ".join(fields[:5]), fields[5], fields[6], dict(env))
        )
    return jobs


def expand(command: str, env: dict[str, str]) -> str:
    """``$NAME`` / ``${NAME}`` of the cron file's own variables, as bash would expand them."""
    return re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", lambda m: env.get(m.group(1), m.group(0)), command)


def cron_commands(job: CronJob) -> list[tuple[str, list[str]]]:
    """(p88backup-job name, p88backup argv) for each wrapped job of a cron line."""
    found = []
    for tokens in split_commands(expand(job.command, job.environment)):
        if tokens[:1] == ["p88backup-job"] and len(tokens) > 2:
            argv = p88backup_argv(tokens, job_wrapper=True)
            assert argv is not None, f"{job.where}: p88backup-job runs something else: {tokens}"
            found.append((tokens[1], argv))
        elif tokens[:1] in (["p88backup"], ["docker"]):
            raise AssertionError(f"{job.where}: a job outside p88backup-job: {shlex.join(tokens)}")
    return found


def cli_parse_error(argv: list[str] | tuple[str, ...]) -> str | None:
    """Why Click refuses ``p88backup ARGV`` (None if it accepts it), without running anything:
    the root's options, the subcommand, and its options and arguments, as ``p88backup`` parses them."""
    import click

    from p88backup.cli.main import cli

    ctx = cli.context_class(cli, info_name="p88backup", **cli.context_settings)
    try:
        with ctx.scope(cleanup=False):
            # the root's own options; the rest starts with the subcommand
            rest = click.Command.parse_args(cli, ctx, list(argv))
            if not rest:
                return "no command"
            name, cmd, args = cli.resolve_command(ctx, rest)
            assert cmd is not None and name is not None
            cmd.make_context(name, args, parent=ctx)
    except click.exceptions.Exit as exc:  # --help, --version
        return None if exc.exit_code == 0 else f"exit {exc.exit_code}"
    except click.ClickException as exc:
        return exc.format_message()
    return None
