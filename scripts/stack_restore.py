"""The supported in-stack restore of the compose stack (docs/BU_recovery.md §3, §4).

``scripts/stack-restore`` runs it on the Docker host, in ``compose/``. Two restores:

``--pitr TARGET`` (a time, ``latest``, ``name:LABEL``, ...): the database goes back to TARGET
in the volume the stack always uses. In order: stop the app; make the restore point
``before-stack-restore-<stamp>`` (it switches WAL) and wait, bounded, until the archive holds
that segment; stop the sidecar; stop the database (clean shutdown); keep the old data
directory (renamed beside the new one, inside the same volume); ``restore --pitr TARGET
--start --stop`` into the database's own PGDATA (as the db image's uid 999, without starting
anything else); start the database; start the sidecar (it follows the new timeline by itself:
spool files of the old branch go to its ``abandoned/`` folder, its slot is created again);
take a base backup (which also proves WAL reaches the archive); ``wal-verify``; ``reindex``;
start the app; ``status``.

Why the restore point and the wait: wal-stream stores only completed segments. The segment
the database is writing stays in the sidecar's spool as a ``.partial`` (for up to
``archive_timeout``, 60 s in the stack) and a stopped sidecar does not store it, so without
the switch ``--pitr latest`` would lose the commits made since the last segment switch. After
it, every commit of the stopped app is archived, and ``name:before-stack-restore-<stamp>``
is the exact point to come back to (with ``--timeline`` of the old branch). A database that
cannot be reached (its volume is gone: the runbook's §3) is warned about, and the restore goes
on with what is archived.

``--dump ID|latest``: a logical restore of one database, swapped in by name. Stop the app and
the sidecar, ``restore --dump`` into a new database as the database superuser (the ``backup``
role may read everything but create nothing), rename the live database aside and the
restored one into its place, start the sidecar, ``wal-verify``, ``reindex``, start the app.

Nothing is deleted: the old data directory (``pgdata.before-<stamp>``) or the old database
(``<db>_before_<stamp>``) stays until the operator drops it. No override file: the restore
goes where the stack's own configuration (``docker compose config``) puts the data, so cron,
deploys and the next ``docker compose up`` all find it there.

Why a script on the host and not a p88backup command: only the host can stop and start
containers (the sidecar has no Docker socket, and should not), and the host has Docker and
python3 (Ansible needs it) but not p88backup. The steps are data (:func:`pitr_steps`,
:func:`dump_steps`) carried out by a runner: :class:`ComposeRunner` here, and in
``tests/integration/test_stack_restore.py`` a runner that carries out the same steps, with the
same p88backup command lines and the same shell for setting the old data aside, against a
real PostgreSQL, wal-stream and storage (there is no Docker engine on the test machines).

Standard library only.
"""

from __future__ import annotations

import argparse
import json
import os
import posixpath
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

APP = ("web", "worker")
SIDECAR = "backup"
DB = "db"
BASEBACKUP_WAL_TIMEOUT = 600
POLL_SECONDS = 2.0  # between two looks at the archive while waiting for the last WAL
# Exit statuses of p88backup (its ExitCode, a contract) that do not stop the sequence.
CONFIG = 3  # reindex: no OpenSearch or no [[reindex]] definition in this stack
DATABASE = 13  # restore-point: the database is not running (its volume is gone): nothing more to archive
STATUS_UNHEALTHY = 18  # status: a threshold exceeded (e.g. no drill yet): shown, not fatal
ARCHIVING = 17  # what p88backup exits with when WAL does not reach the archive; used here for the same

# Keeps the old data directory: a rename inside the volume (no copy, no extra space), then an
# empty PGDATA owned by the database's user. Run by the db image as root in the stack, and by
# the test as is. Arguments: PGDATA, the name to keep the old one under, the owner (user:group).
SET_ASIDE_SH = r"""
set -eu
data=$1 aside=$2 owner=$3
volume=$(dirname "$data")
if [ -e "$volume/PG_VERSION" ]; then
  echo "the cluster lives at the volume root $volume, not in $data: move it into $data once" \
       "(docs/BU_recovery.md, 'The database volume layout')" >&2
  exit 3
fi
if [ -e "$aside" ]; then
  echo "$aside exists already: nothing moved" >&2
  exit 3
fi
if [ -d "$data" ] && [ -n "$(ls -A "$data")" ]; then
  mv "$data" "$aside"
  echo "kept the old data directory as $aside"
else
  echo "no old data directory in $data (a new volume): nothing to keep"
  rmdir "$data" 2>/dev/null || true
fi
mkdir -m 700 "$data"
chown "$owner" "$data"
"""


class StackRestoreError(Exception):
    """A refusal or a failed step: the message says what to do."""


@dataclass(frozen=True)
class Step:
    """One step: ``what`` is printed, ``action`` names the runner method, ``args`` its arguments."""

    what: str
    action: str
    args: tuple[str, ...] = ()
    tolerate: frozenset[int] = frozenset()  # p88backup exit statuses that only warn
    warning: str = "see the message above"  # what a tolerated exit means


def stamp(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")


def restore_point_name(when: str) -> str:
    """The restore point made just before a restore (``when``: :func:`stamp`)."""
    return f"before-stack-restore-{when}"


def pitr_steps(
    target: str,
    pgdata: str,
    aside: str,
    wal_timeout: int = BASEBACKUP_WAL_TIMEOUT,
    timeline: int | None = None,
    point: str | None = None,
) -> list[Step]:
    follow = ("--timeline", str(timeline)) if timeline is not None else ()
    point = point or restore_point_name(stamp())
    return [
        Step("stop the app", "stop", APP),
        Step(
            f"restore point {point} (switches WAL), then wait until the sidecar has archived that segment:"
            " wal-stream stores only completed segments, so the last commits reach the archive only this way",
            "archive_last_wal",
            (point, str(wal_timeout)),
            frozenset({DATABASE}),
            "the database did not take the restore point: what it wrote after its newest archived segment is not"
            " in the archive and will not be in the restored database; the restore goes on with what is archived",
        ),
        Step("stop the sidecar", "stop", (SIDECAR,)),
        Step("stop the database (fast shutdown, with its checkpoint)", "stop", (DB,)),
        Step(
            f"keep the old data directory: {pgdata} -> {aside} (a rename in the same volume)",
            "set_aside",
            (pgdata, aside),
        ),
        Step(
            f"restore {target} into {pgdata}: base backup + WAL, recover, promote, stop cleanly",
            "restore_in_volume",
            ("restore", "--pitr", target, *follow, "--target-dir", pgdata, "--start", "--stop"),
        ),
        Step("start the database on the restored data directory (a new timeline)", "start", (DB,)),
        Step(
            "start the sidecar: it follows the new timeline (old spool files go to abandoned/) and creates"
            " its slot again",
            "start",
            (SIDECAR,),
        ),
        Step(
            "new base backup, the first on the new timeline (it also proves WAL reaches the archive)",
            "p88backup",
            ("basebackup", "--wal-timeout", str(wal_timeout)),
        ),
        Step("check the WAL archive", "p88backup", ("wal-verify",)),
        Step("rebuild the search index from the restored database", "p88backup", ("reindex",), frozenset({CONFIG})),
        Step("start the app", "start", APP),
        Step("what is protected now", "p88backup", ("status",), frozenset({STATUS_UNHEALTHY})),
    ]


def dump_steps(ref: str, database: str, restored: str, aside: str) -> list[Step]:
    return [
        Step("stop the app and the sidecar (nothing may hold the database open)", "stop", (*APP, SIDECAR)),
        Step(
            f"restore dump {ref} into a new database {restored}, as the database superuser",
            "p88backup_superuser",
            ("restore", "--dump", ref, "--target-db", restored),
        ),
        Step(f"swap: {database} -> {aside}, {restored} -> {database}", "swap", (database, restored, aside)),
        Step("start the sidecar", "start", (SIDECAR,)),
        Step("check the WAL archive", "p88backup", ("wal-verify",)),
        Step("rebuild the search index from the restored database", "p88backup", ("reindex",), frozenset({CONFIG})),
        Step("start the app", "start", APP),
        Step("what is protected now", "p88backup", ("status",), frozenset({STATUS_UNHEALTHY})),
    ]


def swap_sql(database: str, restored: str, aside: str) -> str:
    """Rename the live database aside and the restored one into its place. The old one keeps
    refusing connections, so nothing writes to it by mistake; drop it when no longer wanted."""
    d, r, a = (_ident(x) for x in (database, restored, aside))
    return (
        f"ALTER DATABASE {d} WITH ALLOW_CONNECTIONS false;\n"
        f"SELECT count(pg_terminate_backend(pid, 10000)) AS disconnected FROM pg_stat_activity"
        f" WHERE datname = {_literal(database)} AND pid <> pg_backend_pid();\n"
        f"ALTER DATABASE {d} RENAME TO {a};\n"
        f"ALTER DATABASE {r} RENAME TO {d};\n"
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


class Runner(Protocol):
    """What a step needs done. Each p88backup method returns the command's exit status."""

    def stop(self, *services: str) -> None: ...
    def start(self, *services: str) -> None: ...
    def set_aside(self, pgdata: str, aside: str) -> None: ...
    def restore_in_volume(self, *argv: str) -> int: ...
    def archive_last_wal(self, point: str, timeout: str) -> int: ...
    def p88backup(self, *argv: str) -> int: ...
    def p88backup_superuser(self, *argv: str) -> int: ...
    def swap(self, database: str, restored: str, aside: str) -> None: ...


def run(steps: Sequence[Step], runner: Runner, say: Callable[[str], None] = print) -> None:
    """Carry out ``steps`` in order, printing each; stop at the first that fails."""
    for n, step in enumerate(steps, 1):
        say(f"[{n}/{len(steps)}] {step.what}")
        try:
            result = getattr(runner, step.action)(*step.args)
        except StackRestoreError as exc:
            raise StackRestoreError(f"step {n} failed: {step.what}\n{exc}\n{_left(steps, n)}") from None
        if isinstance(result, int) and result != 0:
            if result in step.tolerate:
                say(f"      warning: exit {result}, continuing ({step.warning})")
                continue
            raise StackRestoreError(f"step {n} failed with exit {result}: {step.what}\n{_left(steps, n)}")


def _left(steps: Sequence[Step], done: int) -> str:
    left = "\n".join(f"  [{i}] {s.what}" for i, s in enumerate(steps[done:], done + 1))
    return f"nothing was deleted; fix the cause, then run the remaining steps by hand:\n{left}"


# -- waiting for the last WAL ---------------------------------------------------------------------


def parse_lsn(text: str) -> int:
    """PostgreSQL's ``X/Y`` notation as a number."""
    high, _, low = text.partition("/")
    return (int(high, 16) << 32) | int(low, 16)


def point_archived(point: dict[str, Any], wal: dict[str, Any]) -> bool:
    """Whether the archive holds the segment of restore point ``point`` (``restore-point --json``),
    judged from the ``wal`` section of ``status --json``.

    With the server's position known, ``archived_lsn`` is the end of the newest archived segment
    on the server's own timeline history: the point is archived once that reaches its LSN. Without
    it (the server did not answer this time) the newest segment's name decides, on the point's
    timeline only.
    """
    if wal.get("archived_lsn") is not None and wal.get("server_timeline") == point["timeline"]:
        return parse_lsn(str(wal["archived_lsn"])) >= parse_lsn(str(point["lsn"]))
    newest = str(wal.get("newest_segment") or "")
    segment = str(point["segment"])
    return newest[:8] == segment[:8] and newest >= segment


def _json(out: str, what: str) -> dict[str, Any]:
    try:
        data = json.loads(out)
    except ValueError:
        raise StackRestoreError(f"{what} printed no JSON: {out.strip()[:200]!r}") from None
    if not isinstance(data, dict):
        raise StackRestoreError(f"{what} printed no JSON object: {out.strip()[:200]!r}")
    return data


Capture = Callable[..., tuple[int, str]]  # p88backup ARGV... -> (exit status, stdout)


def archive_last_wal(
    p88backup: Capture,
    point: str,
    timeout: float,
    *,
    say: Callable[[str], None] = print,
    poll: float = POLL_SECONDS,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    """Make restore point ``point`` (which switches WAL), then wait until the archive holds its
    segment, at most ``timeout`` seconds. Returns an exit status: 0 once archived, the failed
    command's own, or 17 (WAL not reaching the archive) when the wait ran out."""
    rc, out = p88backup("restore-point", "--json", point)
    if rc != 0:
        return rc
    record = _json(out, "restore-point --json")
    say(f"      restore point {point} at {record['lsn']}, WAL segment {record['segment']}; waiting for the archive")
    deadline = clock() + timeout
    while True:
        rc, out = p88backup("status", "--json")
        if rc not in (0, STATUS_UNHEALTHY):
            return rc  # the archive cannot be read: status said why
        wal = _json(out, "status --json").get("wal") or {}
        if point_archived(record, wal):
            say(f"      archived: newest segment {wal.get('newest_segment')}")
            return 0
        if clock() >= deadline:
            say(
                f"      {record['segment']} did not reach the archive within {timeout:g} s (newest archived:"
                f" {wal.get('newest_segment')}). Is the sidecar running and the storage reachable? docker compose"
                " logs backup; p88backup status --component wal-stream"
            )
            return ARCHIVING
        sleep(poll)


# -- the stack ------------------------------------------------------------------------------------


@dataclass
class Stack:
    """What the restore needs from the stack's configuration (``docker compose config``)."""

    pgdata: str
    volume_key: str  # the db volume's key in the compose file (docker compose resolves it)
    volume_name: str  # its Docker name, for people
    superuser: str
    superuser_password: str = field(repr=False)
    database: str = "p88"
    db_port: int = 5432


def stack_of(config: dict[str, Any]) -> Stack:
    """Read the db service of a resolved compose model; refuse a layout the restore cannot keep."""
    services = config.get("services", {})
    for name in (DB, SIDECAR, *APP):
        if name not in services:
            raise StackRestoreError(f"the compose project has no service {name!r}: is this the Project 88 stack?")
    db = services[DB]
    env = db.get("environment") or {}
    pgdata = env.get("PGDATA")
    mounts = [v for v in db.get("volumes", []) if v.get("type") == "volume" and v.get("source")]
    if not pgdata:
        raise StackRestoreError(
            "the db service sets no PGDATA: its cluster lives at the volume root, where an old data directory"
            " cannot be kept beside the restored one (docs/BU_recovery.md, 'The database volume layout')"
        )
    pgdata = posixpath.normpath(pgdata)
    holder = next((v for v in mounts if posixpath.dirname(pgdata) == posixpath.normpath(v["target"])), None)
    if holder is None:
        raise StackRestoreError(
            f"PGDATA {pgdata} is not a directory directly inside a named volume of the db service"
            " (expected e.g. db_data:/var/lib/postgresql/data with PGDATA=/var/lib/postgresql/data/pgdata)"
        )
    key = holder["source"]
    name = (config.get("volumes", {}).get(key) or {}).get("name", key)
    password = env.get("POSTGRES_PASSWORD")
    if not password:
        raise StackRestoreError("the db service has no POSTGRES_PASSWORD (needed for restore --dump)")
    return Stack(pgdata, key, name, env.get("POSTGRES_USER") or "postgres", password, env.get("POSTGRES_DB") or "p88")


class ComposeRunner:
    """Carries out the steps with ``docker compose`` in the current directory (``compose/``)."""

    def __init__(
        self,
        stack: Stack,
        compose: Sequence[str] = ("docker", "compose"),
        identity: str | None = None,
        dry_run: bool = False,
        say: Callable[[str], None] = print,
    ) -> None:
        self.stack, self.compose, self.identity, self.dry_run, self.say = stack, list(compose), identity, dry_run, say

    # the command lines, for --dry-run and the tests
    def _run_backup(self, *extra: str) -> list[str]:
        argv = [*self.compose, "run", "--rm", "--no-deps", "-T", *extra]
        if self.identity:
            argv += ["-v", f"{self.identity}:/run/secrets/p88backup.age:ro"]
            argv += ["-e", "P88_AGE_IDENTITY_FILE=/run/secrets/p88backup.age"]
        return [*argv, SIDECAR]

    def _call(self, argv: list[str], *, stdin: str | None = None, env: dict[str, str] | None = None) -> int:
        self.say("      $ " + shlex.join(argv) + (" <<'EOF'" if stdin is not None else ""))
        if stdin is not None:
            self.say("\n".join(f"      {line}" for line in [*stdin.strip().splitlines(), "EOF"]))
        if self.dry_run:
            return 0
        return subprocess.run(argv, input=stdin, text=True, env=env, check=False).returncode

    def _must(self, argv: list[str], **kw: Any) -> None:
        rc = self._call(argv, **kw)
        if rc != 0:
            raise StackRestoreError(f"exit {rc}: {shlex.join(argv)}")

    def stop(self, *services: str) -> None:
        self._must([*self.compose, "stop", *services])

    def start(self, *services: str) -> None:
        # --wait for what has a healthcheck that means "up"; the sidecar's /healthz also judges
        # backup ages, so its start is proven by the base backup's archive check instead
        wait = [] if services == (SIDECAR,) else ["--wait"]
        self._must([*self.compose, "up", "-d", *wait, "--no-deps", *services])

    def set_aside(self, pgdata: str, aside: str) -> None:
        # the db image, as root: it can rename and chown whatever the volume holds
        self._must(
            [
                *self.compose,
                "run",
                "--rm",
                "--no-deps",
                "-T",
                "--user",
                "root",
                "--entrypoint",
                "sh",
                DB,
                "-s",
                "--",
                pgdata,
                aside,
                "postgres:postgres",
            ],
            stdin=SET_ASIDE_SH,
        )

    def restore_in_volume(self, *argv: str) -> int:
        # the sidecar image (uid 999, like the db's postgres) with the db volume at the db's path
        mount = f"{self.stack.volume_key}:{posixpath.dirname(self.stack.pgdata)}"
        return self._call([*self._run_backup("-v", mount), *argv])

    def archive_last_wal(self, point: str, timeout: str) -> int:
        if self.dry_run:
            self.say("      $ " + shlex.join([*self._run_backup(), "restore-point", "--json", point]))
            self.say("      $ " + shlex.join([*self._run_backup(), "status", "--json"]))
            self.say(f"        (every {POLL_SECONDS:g} s until the archive holds that segment, {timeout} s at most)")
            return 0
        return archive_last_wal(self._capture, point, float(timeout), say=self.say)

    def _capture(self, *argv: str) -> tuple[int, str]:
        """A p88backup command's exit status and stdout; its stderr is shown when it fails."""
        cmd = [*self._run_backup(), *argv]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False)
        except subprocess.TimeoutExpired:
            raise StackRestoreError(f"no answer within 300 s: {shlex.join(cmd)}") from None
        if r.returncode not in (0, STATUS_UNHEALTHY):
            self.say(f"      $ {shlex.join(cmd)} -> exit {r.returncode}\n{r.stderr.strip()}")
        return r.returncode, r.stdout

    def p88backup(self, *argv: str) -> int:
        return self._call([*self._run_backup(), *argv])

    def p88backup_superuser(self, *argv: str) -> int:
        s = self.stack
        url = f"postgresql://{s.superuser}@{DB}:{s.db_port}/postgres"
        # the password goes through the environment, never on a command line (DESIGN §3.7)
        env = {**os.environ, "PGPASSWORD": s.superuser_password}
        return self._call([*self._run_backup("-e", f"P88_DATABASE_URL={url}", "-e", "PGPASSWORD"), *argv], env=env)

    def swap(self, database: str, restored: str, aside: str) -> None:
        argv = [
            *self.compose,
            "exec",
            "-T",
            DB,
            "psql",
            "-X",
            "-v",
            "ON_ERROR_STOP=1",
            "-U",
            self.stack.superuser,
            "-d",
            "postgres",
        ]
        self._must(argv, stdin=swap_sql(database, restored, aside))


def compose_config(compose: Sequence[str]) -> dict[str, Any]:
    """The resolved model (``.env``, env files, COMPOSE_FILE applied). It holds secrets: parsed
    here, never printed."""
    r = subprocess.run([*compose, "config", "--format", "json"], capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise StackRestoreError(f"docker compose config failed: {r.stderr.strip()}")
    return dict(json.loads(r.stdout))


# -- command line ---------------------------------------------------------------------------------


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="stack-restore",
        description="Restore the Project 88 stack's database in place, the supported way (docs/BU_recovery.md).",
        epilog="Examples:\n"
        "  scripts/stack-restore --pitr 2026-11-27T14:04:00+01:00\n"
        "  scripts/stack-restore --pitr latest --identity /root/p88backup.age\n"
        "  scripts/stack-restore --dump latest\n"
        "  scripts/stack-restore --pitr latest --timeline 1      (back to the newest point of timeline 1)\n",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--pitr", metavar="TARGET", help="time with zone, latest, name:LABEL, lsn:X/Y, xid:N")
    what.add_argument("--dump", metavar="ID|latest", help="a nightly dump of the stack's database")
    p.add_argument("-C", "--directory", default=".", help="the compose/ directory (default: the current one)")
    p.add_argument("--identity", metavar="FILE", help="age private key file, for encrypted backups")
    p.add_argument(
        "--timeline",
        type=int,
        metavar="N",
        help="--pitr: follow timeline N instead of the newest (e.g. back to the state before an earlier restore)",
    )
    p.add_argument(
        "--wal-timeout",
        type=int,
        default=BASEBACKUP_WAL_TIMEOUT,
        metavar="SECONDS",
        help="how long each wait for WAL to reach the archive may last: the last WAL before a --pitr restore, and"
        " the new base backup's",
    )
    p.add_argument("--compose", default="docker compose", help="the compose command (default: docker compose)")
    p.add_argument("--dry-run", action="store_true", help="print the steps and their commands, run nothing")
    p.add_argument("--yes", action="store_true", help="do not ask before starting")
    args = p.parse_args(argv)
    if args.pitr is not None and not args.pitr.strip():
        p.error("--pitr needs a target: a time with zone, latest, name:LABEL, ...")
    if args.timeline is not None and args.pitr is None:
        p.error("--timeline goes with --pitr")
    if args.identity and not os.path.isabs(args.identity):
        args.identity = os.path.abspath(args.identity)
    return args


def main(argv: Sequence[str] | None = None, confirm: Callable[[str], str] = input) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        os.chdir(args.directory)
        compose = shlex.split(args.compose)
        stack = stack_of(compose_config(compose))
        when = stamp()
        if args.pitr is not None:
            aside = f"{stack.pgdata}.before-{when}"
            point = restore_point_name(when)
            steps = pitr_steps(args.pitr, stack.pgdata, aside, args.wal_timeout, args.timeline, point)
            print(
                f"point-in-time restore to {args.pitr} into {stack.pgdata} (volume {stack.volume_name});"
                f" the old data directory is kept as {aside}, the moment before the restore as restore point"
                f" {point}"
            )
        else:
            restored, aside = f"{stack.database}_restored_{when.lower()}", f"{stack.database}_before_{when.lower()}"
            steps = dump_steps(args.dump, stack.database, restored, aside)
            print(f"restore of dump {args.dump} into database {stack.database}; the old one is kept as {aside}")
        if not args.dry_run and not args.yes:
            print("\n".join(f"  [{n}] {s.what}" for n, s in enumerate(steps, 1)))
            if confirm("The app is down from step 1 until the end. Type 'restore' to go on: ").strip() != "restore":
                print("nothing done")
                return 1
        run(steps, ComposeRunner(stack, compose, args.identity, args.dry_run))
    except StackRestoreError as exc:
        print(f"stack-restore: {exc}", file=sys.stderr)
        return 1
    print("done" if not args.dry_run else "(dry run: nothing was run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
