"""What a drill checks on a restored scratch server: row counts recorded at backup time, the
configured SQL checks (``[[drill.checks]]``) and ``pg_amcheck`` where the server has amcheck.

A SQL check passes when its query returns exactly one row whose first column
is boolean true (:func:`judge`, pure). Anything else fails it, named: false,
NULL, no row, several rows, a value that is not a boolean, or an SQL error.
A check never stops the others: the report lists every one.
"""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from p88backup.catalog.models import DatabaseDump, DrillCheckResult
from p88backup.core.logical.dump import count_rows
from p88backup.errors import PgToolError
from p88backup.pg.conn import ConnInfo, first_line
from p88backup.pg.tools import client_for

log = logging.getLogger(__name__)

STATEMENT_TIMEOUT = "10min"  # a check that hangs must not hold the drill (DESIGN §3.13)
AMCHECK_TIMEOUT = 6 * 3600.0
Status = Literal["passed", "failed", "skipped"]


@dataclass(frozen=True)
class CheckSpec:
    """One ``[[drill.checks]]`` entry."""

    name: str
    sql: str
    database: str | None = None


def judge(rows: Sequence[Sequence[Any]] | None) -> tuple[bool, str]:
    """(passed, why) for what a check's query returned (None: no result set at all)."""
    if rows is None:
        return False, "the statement returned no result set"
    if len(rows) != 1:
        return False, f"returned {len(rows)} rows, expected exactly one"
    if not rows[0]:
        return False, "returned a row without columns"
    value = rows[0][0]
    if value is True:
        return True, "true"
    if value is False:
        return False, "returned false"
    if value is None:
        return False, "returned NULL"
    shown = repr(value)
    return False, f"returned {shown[:60]}{'...' if len(shown) > 60 else ''} ({type(value).__name__}), not a boolean"


def compare_counts(recorded: dict[str, int], restored: dict[str, int]) -> tuple[bool, str]:
    """Row counts recorded at backup time against those restored: (all equal, summary)."""
    wrong = {t: (n, restored.get(t)) for t, n in recorded.items() if restored.get(t) != n}
    if not wrong:
        return True, f"{len(recorded)} table{'s' if len(recorded) != 1 else ''}, every count as recorded at backup time"
    sample = "; ".join(
        f"{t}: {want} recorded, {'missing' if have is None else have} restored"
        for t, (want, have) in list(wrong.items())[:5]
    )
    return False, f"{len(wrong)} of {len(recorded)} tables differ from the counts recorded at backup time: {sample}"


def row_count_check(ci: ConnInfo, db: DatabaseDump) -> DrillCheckResult:
    """The restored database's row counts against those the dump recorded (exact counts only)."""
    name = f"row counts {db.name}"
    if db.row_counts_kind != "exact" or not db.row_counts:
        why = f"dump.row_counts was {db.row_counts_kind}" if db.row_counts_kind != "exact" else "no tables recorded"
        return DrillCheckResult(name=name, kind="row_counts", database=db.name, status="skipped", detail=why)
    t0 = time.monotonic()
    try:
        with ci.with_db(db.name).connect() as conn:
            restored = count_rows(conn, "exact")
        ok, detail = compare_counts(db.row_counts, restored)
    except Exception as exc:  # psycopg's errors, or DatabaseError: the check failed, named
        ok, detail = False, f"counting failed: {first_line(exc)}"
    return DrillCheckResult(
        name=name,
        kind="row_counts",
        database=db.name,
        status="passed" if ok else "failed",
        detail=detail,
        seconds=round(time.monotonic() - t0, 3),
    )


def sql_checks(
    ci: ConnInfo, checks: Sequence[CheckSpec], default_db: str, databases: Sequence[str]
) -> list[DrillCheckResult]:
    """Run every configured check in its database (``default_db`` unless it names one)."""
    results = []
    for check in checks:
        db = check.database or default_db
        t0 = time.monotonic()
        if db not in databases:
            ok, detail = (
                False,
                f"database {db!r} is not in the restored copy (it has: {', '.join(databases) or 'none'})",
            )
        else:
            ok, detail = _run_check(ci.with_db(db), check.sql)
        log.info(
            "drill check " + ("passed" if ok else "failed"),
            extra={"p88": {"check": check.name, "database": db, "detail": detail}},
        )
        results.append(
            DrillCheckResult(
                name=check.name,
                kind="sql",
                database=db,
                status="passed" if ok else "failed",
                detail=detail,
                seconds=round(time.monotonic() - t0, 3),
            )
        )
    return results


@dataclass(frozen=True)
class CheckRun:
    """The checks of one restored copy, and when the RTO clock stopped."""

    checks: list[DrillCheckResult]
    passed_at: float | None  # monotonic time every counted check had passed (None: one failed)
    checks_seconds: float  # from the end of the restore until then
    amcheck_seconds: float  # pg_amcheck, after the RTO clock stopped


def checks_after_restore(
    ci: ConnInfo,
    first: list[DrillCheckResult],
    configured: Sequence[Any],
    default_db: str,
    databases: Sequence[str],
    major: int,
    pg_bin_dir: Path | None,
    restored_at: float,
) -> CheckRun:
    """``first`` (e.g. row counts) and the configured SQL checks, which stop the RTO clock when they
    pass; then pg_amcheck where installed."""
    checks = list(first) + sql_checks(ci, configured, default_db, databases)
    passed_at = None if any(c.status == "failed" for c in checks) else time.monotonic()
    checks_s = time.monotonic() - restored_at
    t_am = time.monotonic()
    checks += amcheck(ci, databases, major, pg_bin_dir)
    return CheckRun(checks, passed_at, checks_s, time.monotonic() - t_am)


def _run_check(ci: ConnInfo, sql: str) -> tuple[bool, str]:
    try:
        with ci.connect() as conn:
            conn.execute(f"SET statement_timeout = '{STATEMENT_TIMEOUT}'")
            cur = conn.execute(sql)
            rows = cur.fetchall() if cur.description else None
    except Exception as exc:  # an SQL error is a failed check, not a crash
        return False, f"error: {first_line(exc)}"
    return judge(rows)


def databases_of(ci: ConnInfo) -> list[str]:
    """The databases one can connect to on a server (templates excluded)."""
    with ci.connect() as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate ORDER BY 1"
        ).fetchall()
    return [r[0] for r in rows]


def amcheck(ci: ConnInfo, databases: Sequence[str], major: int, pg_bin_dir: Path | None) -> list[DrillCheckResult]:
    """``pg_amcheck --heapallindexed`` on each database, where the server has amcheck (contrib).

    Skipped, and said so, where amcheck or pg_amcheck is not installed, or where
    the extension is missing and we may not install it (not a superuser).
    """
    if not databases:
        return []
    try:
        with ci.with_db(databases[0]).connect() as conn:
            available = conn.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'amcheck'").fetchone()
            superuser = bool(conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0])
    except Exception as exc:
        return [_amcheck_result(databases[0], "failed", f"cannot ask the server: {first_line(exc)}")]
    if not available:
        return [_amcheck_result(None, "skipped", "amcheck is not installed on this server (PostgreSQL contrib)")]
    try:
        tool = client_for("pg_amcheck", major, pg_bin_dir)
    except PgToolError as exc:
        return [_amcheck_result(None, "skipped", f"pg_amcheck not found: {exc}")]
    results = []
    for db in databases:
        target = ci.with_db(db)
        if not superuser and not _has_extension(target):
            results.append(_amcheck_result(db, "skipped", "amcheck is not installed in it, and only a superuser may"))
            continue
        t0 = time.monotonic()
        argv = [str(tool.path), "--no-password", "--install-missing", "--heapallindexed", target.dsn()]
        try:
            r = subprocess.run(argv, capture_output=True, text=True, env=target.env(), timeout=AMCHECK_TIMEOUT)
            ok = r.returncode == 0
            detail = "no corruption found" if ok else _last_lines(r.stdout + "\n" + r.stderr)
        except subprocess.TimeoutExpired:
            ok, detail = False, f"did not finish within {AMCHECK_TIMEOUT:.0f}s"
        results.append(_amcheck_result(db, "passed" if ok else "failed", detail, time.monotonic() - t0))
    return results


def _has_extension(ci: ConnInfo) -> bool:
    try:
        with ci.connect() as conn:
            return conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'amcheck'").fetchone() is not None
    except Exception:
        return False


def _amcheck_result(db: str | None, status: Status, detail: str, seconds: float = 0.0) -> DrillCheckResult:
    return DrillCheckResult(
        name=f"pg_amcheck {db}" if db else "pg_amcheck",
        kind="amcheck",
        database=db,
        status=status,
        detail=detail,
        seconds=round(seconds, 3),
    )


def _last_lines(text: str, n: int = 6) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return " | ".join(lines[-n:])[-800:] or "pg_amcheck failed without a message"
