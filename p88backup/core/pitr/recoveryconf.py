"""The recovery settings of a restored data directory: written by us, and only by us.

A base backup carries its cluster's ``postgresql.conf`` and
``postgresql.auto.conf``. If that cluster was itself restored, they may hold
an earlier restore's ``restore_command``, ``recovery_target_*`` or
``archive_mode = off``; left in place, they would decide the next recovery
(DESIGN §3.10: seen as a ``latest`` restore that stopped at an old target and
exited 0 with rows missing). So a restore:

* removes every recovery parameter from ``postgresql.auto.conf``, and any
  block an earlier p88backup restore wrote there (also the unmarked form of
  releases before the markers: a ``# p88backup restore --pitr ...`` comment
  followed by settings), where its ``archive_mode = off`` and trial ports
  would otherwise outlive it;
* comments out every recovery parameter in ``postgresql.conf`` (kept
  readable, marked with :data:`DISABLED`);
* appends its own settings as one marked block, which it removes again once
  the server has promoted.

Pure text functions; the caller reads and writes the files.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

BEGIN = "# p88backup restore: begin"
END = "# p88backup restore: end"
LEGACY_BEGIN = "# p88backup restore --pitr"  # no end marker: the block ends at the first non-setting line
DISABLED = "#p88backup-disabled# "

# `name = value`, `name value` or `name=value`; names are case-insensitive.
_SETTING = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_.]*)\s*(?:=|\s|$)")


def setting_name(line: str) -> str | None:
    """The parameter a configuration line sets (lower case), or None for comments and blanks."""
    if line.lstrip().startswith("#"):
        return None
    m = _SETTING.match(line)
    return m.group(1).lower() if m else None


def quote(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def _lines(text: str) -> list[str]:
    return text.splitlines(keepends=True) if text else []


def remove_settings(text: str, names: Iterable[str]) -> tuple[str, list[str]]:
    """``postgresql.auto.conf`` without the given parameters and without p88backup blocks.

    Returns the new text and the names removed (in file order, repeats kept).
    """
    drop = {n.lower() for n in names}
    out: list[str] = []
    removed: list[str] = []
    block_kind: str | None = None  # "marked" or "legacy" while inside one of our blocks
    for line in _lines(text):
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            block_kind = "marked"
            continue
        if stripped.startswith(LEGACY_BEGIN):
            block_kind = "legacy"
            continue
        if block_kind == "marked":
            if stripped == END:
                block_kind = None
            elif (name := setting_name(line)) is not None:
                removed.append(name)
            continue
        if block_kind == "legacy":
            if (name := setting_name(line)) is not None:
                removed.append(name)
                continue
            block_kind = None
        name = setting_name(line)
        if name is not None and name in drop:
            removed.append(name)
            continue
        out.append(line)
    return "".join(out), removed


def disable_settings(text: str, names: Iterable[str]) -> tuple[str, list[str]]:
    """``postgresql.conf`` with the given parameters commented out (marked, so a person sees why)."""
    drop = {n.lower() for n in names}
    out: list[str] = []
    disabled: list[str] = []
    for line in _lines(text):
        name = setting_name(line)
        if name is not None and name in drop:
            out.append(DISABLED + line)
            disabled.append(name)
        else:
            out.append(line)
    return "".join(out), disabled


def block(settings: Mapping[str, str], title: str) -> str:
    """Our settings, quoted, between the markers that :func:`remove_settings` recognises."""
    body = "".join(f"{k} = {quote(v)}\n" for k, v in settings.items())
    return f"{BEGIN} ({title})\n{body}{END}\n"


def keep_only(text: str, names: Iterable[str]) -> str:
    """Inside our block, keep only the given parameters (drop the block if none is left)."""
    keep = {n.lower() for n in names}
    out: list[str] = []
    block_lines: list[str] = []
    in_block = False
    for line in _lines(text):
        stripped = line.strip()
        if stripped.startswith(BEGIN):
            in_block, block_lines = True, [line]
            continue
        if in_block:
            if stripped == END:
                in_block = False
                kept = [ln for ln in block_lines[1:] if setting_name(ln) in keep]
                if kept:
                    out += [block_lines[0], *kept, line]
            else:
                block_lines.append(line)
            continue
        out.append(line)
    return "".join(out)
