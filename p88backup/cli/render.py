"""Rendering results: JSON for machines, tables and lines for people.

Results go to stdout; logs go to stderr. Nothing here decides anything.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any


def _default(o: Any) -> Any:
    if hasattr(o, "model_dump"):  # a pydantic model
        return o.model_dump(mode="json")
    if isinstance(o, datetime):
        return o.isoformat()
    if hasattr(o, "__fspath__"):
        return str(o)
    raise TypeError(f"cannot render {type(o).__name__}")


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, default=_default, indent=2, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title, show_lines=False, header_style="bold")
    for col in columns:
        t.add_column(col, no_wrap=True)
    for row in rows:
        t.add_row(*("" if v is None else str(v) for v in row))
    console = Console(soft_wrap=True)
    if not console.is_terminal:
        console.width = 200  # a pipe or a log: never wrap ids
    console.print(t)


def kv(pairs: Iterable[tuple[str, Any]]) -> None:
    for key, value in pairs:
        sys.stdout.write(f"{key} = {json.dumps(value, default=_default, ensure_ascii=False)}\n")


def human_bytes(n: int | float | None) -> str:
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, sec = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{sec:02d}s" if hours else f"{minutes}m{sec:02d}s"


def flatten(data: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.extend(flatten(value, name + "."))
        else:
            out.append((name, value))
    return out
