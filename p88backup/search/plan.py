"""Reindex's decisions, as pure functions of what OpenSearch reported.

Given an :class:`AliasState` (where the alias points, whether its name is a
plain index, which versioned indices exist), these functions say which index
to build, what one atomic ``_aliases`` call must do, which index is kept for
rollback and which older versions go, where ``--rollback`` and ``--since``
point. :mod:`p88backup.search.reindex` carries the plans out through the
adapter; ``tests/unit/test_reindex_plan.py`` checks them by tables.

Naming: an alias ``NAME`` is served by versioned indices ``NAME-<utc stamp>``
(``NAME-20261127t021500z``, ``-2``, ``-3``... within one second); the first
run over a plain index ``NAME`` keeps its data as ``NAME-legacy-<stamp>``.
Only indices named so are "ours": nothing else is ever deleted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from p88backup.errors import SearchError
from p88backup.search.adapter import AddAlias, AliasAction, IndexInfo, RemoveAlias, RemoveIndex

META_KEY = "p88backup"
"""Our key in an index's mapping ``_meta``: alias, complete, rows, times."""
STAMP_FORMAT = "%Y%m%dt%H%M%Sz"
_STAMP = r"\d{8}t\d{6}z"
_AGE = re.compile(rf"({_STAMP})(?:-(\d+))?$")


def is_ours(alias: str, name: str) -> bool:
    """True if ``name`` is a versioned or legacy index built for ``alias``."""
    return re.fullmatch(rf"{re.escape(alias)}-(legacy-)?{_STAMP}(-\d+)?", name) is not None


def age_key(name: str) -> tuple[str, int]:
    """Build-time order of our index names: the stamp, then ``-N``; a legacy clone predates the
    index built in the same run. Other names sort before all of ours."""
    m = _AGE.search(name)
    if not m:
        return ("", 0)
    return (m.group(1), 0 if "-legacy-" in name else int(m.group(2) or 1))


def is_complete(name: str, info: IndexInfo) -> bool:
    """A finished build (marked at the end of its count check), or a legacy clone (whole by making)."""
    ours = info.meta.get(META_KEY)
    return "-legacy-" in name or (isinstance(ours, Mapping) and ours.get("complete") is True)


def new_names(alias: str, now: datetime, taken: Iterable[str]) -> tuple[str, str]:
    """The name of the next build and of its legacy clone (used if ``alias`` is a plain index);
    neither among ``taken``."""
    used = set(taken)
    base = now.astimezone(UTC).strftime(STAMP_FORMAT)
    n = 1
    while True:
        suffix = base if n == 1 else f"{base}-{n}"
        new, legacy = f"{alias}-{suffix}", f"{alias}-legacy-{suffix}"
        if new not in used and legacy not in used:
            return new, legacy
        n += 1


def build_settings(wanted: Mapping[str, Any]) -> dict[str, Any]:
    """Settings of an index while it loads: the configured ones, without refresh or replicas."""
    return {**wanted, "refresh_interval": "-1", "number_of_replicas": 0}


def final_settings(wanted: Mapping[str, Any], previous: Mapping[str, Any]) -> dict[str, Any]:
    """Refresh and replicas once loaded: as configured, else as the index being replaced had them,
    else OpenSearch's defaults (``None`` resets a setting)."""
    return {k: wanted.get(k, previous.get(k)) for k in ("refresh_interval", "number_of_replicas")}


@dataclass(frozen=True)
class AliasState:
    """What OpenSearch holds for one alias name."""

    alias: str
    live: tuple[str, ...] = ()
    """Indices the alias points to, sorted."""
    concrete: bool = False
    """``alias`` is the name of a plain index (made before p88backup managed it)."""
    infos: Mapping[str, IndexInfo] = field(default_factory=dict)
    """Every index of interest by name: ours, the live ones, the plain one."""

    @property
    def ours(self) -> list[str]:
        return sorted(n for n in self.infos if is_ours(self.alias, n))

    def info(self, name: str) -> IndexInfo:
        return self.infos.get(name, IndexInfo())


@dataclass(frozen=True)
class FullPlan:
    """A full rebuild: build ``new``, then ``swap`` in one atomic call, then delete ``delete``."""

    alias: str
    new: str
    previous: str | None
    """Kept for ``--rollback``: the newest index the alias pointed to, or the legacy clone."""
    swap: tuple[AliasAction, ...]
    delete: tuple[str, ...]
    legacy: str | None = None
    """Migrating: the plain index ``alias`` is cloned to this name, then replaced by the alias."""
    previous_settings: Mapping[str, Any] = field(default_factory=dict)
    """Settings of the index being replaced (for :func:`final_settings`)."""


def plan_full(state: AliasState, now: datetime) -> FullPlan:
    alias = state.alias
    new, legacy = new_names(alias, now, [*state.infos, *state.live])
    if state.concrete:
        # First run over a plain index: its data survive as a clone for rollback; the alias
        # appears in the same call that deletes the index, so no search finds nothing.
        swap: tuple[AliasAction, ...] = (AddAlias(new, alias), RemoveIndex(alias))
        previous: str | None = legacy
        migrating: str | None = legacy
        settings = state.info(alias).settings
    else:
        swap = (AddAlias(new, alias), *(RemoveAlias(i, alias) for i in state.live))
        # Several live indices (a hand-made state): the newest of ours is the one to go back to.
        previous = max(state.live, key=lambda n: (age_key(n), n)) if state.live else None
        migrating = None
        settings = state.info(previous).settings if previous else {}
    delete = tuple(n for n in state.ours if n not in (new, previous))
    return FullPlan(alias, new, previous, swap, delete, migrating, settings)


@dataclass(frozen=True)
class RollbackPlan:
    alias: str
    target: str
    current: str
    swap: tuple[AliasAction, ...]


def plan_rollback(state: AliasState) -> RollbackPlan:
    """Point the alias back at the newest complete index of ours built before the live one."""
    alias = state.alias
    if state.concrete:
        raise SearchError(
            f"{alias!r} is a plain index, not an alias: nothing to roll back",
            hint="a full reindex replaces it by an alias and keeps its data for rollback",
        )
    if not state.live:
        raise SearchError(f"there is no alias {alias!r}: nothing to roll back", hint="run a full reindex first")
    if len(state.live) > 1:
        raise SearchError(
            f"alias {alias!r} points to several indices ({', '.join(state.live)}): cannot tell which to leave",
            hint="a full reindex points it at one new index",
        )
    current = state.live[0]
    older = [n for n in state.ours if age_key(n) < age_key(current) and is_complete(n, state.info(n))]
    if not older:
        raise SearchError(f"no earlier complete index of {alias!r} to roll back to (live: {current})")
    target = max(older, key=age_key)
    return RollbackPlan(alias, target, current, (AddAlias(target, alias), RemoveAlias(current, alias)))


def since_target(state: AliasState) -> str:
    """The one live index that ``--since`` upserts into."""
    if state.concrete:
        raise SearchError(
            f"{state.alias!r} is a plain index: --since writes only into an index p88backup built",
            hint="run a full reindex first: it replaces the plain index by an alias",
        )
    if len(state.live) != 1:
        found = ", ".join(state.live) or "none"
        raise SearchError(
            f"alias {state.alias!r} must point to one index for --since (found {found})",
            hint="run a full reindex first",
        )
    return state.live[0]
