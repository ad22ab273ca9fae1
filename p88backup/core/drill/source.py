"""The production server as a drill sees it: read only, for its clock and its list of databases.

A drill never writes to production. It asks it two things: ``now()``, the
clock RPO is measured against (the same clock that stamped the commits and
the dump's snapshot), and which databases exist, before and after, so the
report shows production untouched. Every session is read only
(``default_transaction_read_only``). When production cannot be reached the
drill still runs, on its own clock, and the report says so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from p88backup.catalog.models import DrillSource
from p88backup.pg.conn import ConnInfo, first_line

log = logging.getLogger(__name__)


class Source:
    def __init__(self, ci: ConnInfo | None, *, clock: Callable[[], datetime] = lambda: datetime.now(UTC)) -> None:
        self.ci, self.clock = ci, clock
        self.problems: list[str] = [] if ci is not None else ["no database_url configured"]
        self.own_clock = ci is None  # some figure was measured against the drill host's clock
        self.databases_before: list[str] | None = None
        self.databases_after: list[str] | None = None

    def _connect(self) -> Any:
        assert self.ci is not None
        options = f"{self.ci.params.get('options', '')} -c default_transaction_read_only=on".strip()
        return self.ci.connect(options=options)

    def _ask(self, what: str, query: str) -> list[tuple[Any, ...]] | None:
        if self.ci is None:
            return None
        try:
            with self._connect() as conn:
                return list(conn.execute(query).fetchall())
        except Exception as exc:  # unreachable or refused: the drill goes on without it
            reason = f"production unreachable ({what}): {first_line(exc)}"
            if reason not in self.problems:
                self.problems.append(reason)
            log.warning("drill: production not reachable", extra={"p88": {"what": what, "error": first_line(exc)}})
            return None

    def now(self) -> datetime:
        """Production's clock, or ours when production cannot be asked (``note`` says why)."""
        rows = self._ask("clock", "SELECT now()")
        if rows:
            now: datetime = rows[0][0]
            return now
        self.own_clock = True
        return self.clock()

    def databases(self) -> list[str] | None:
        rows = self._ask("databases", "SELECT datname FROM pg_database ORDER BY 1")
        return None if rows is None else [r[0] for r in rows]

    def record_before(self) -> None:
        self.databases_before = self.databases()

    def record_after(self) -> None:
        self.databases_after = self.databases()
        before, after = self.databases_before, self.databases_after
        if before is not None and after is not None and before != after:
            # Not the drill's doing (it never connects to production but read only): someone else's.
            log.warning(
                "production's databases changed while the drill ran",
                extra={"p88": {"before": before, "after": after}},
            )

    def describe(self) -> DrillSource:
        return DrillSource(
            clock="drill host" if self.own_clock else "production",
            note="; ".join(self.problems) or None,
            databases_before=self.databases_before,
            databases_after=self.databases_after,
        )
