"""Reading times and durations people type: one parser for every command.

``restore --pitr 2026-11-27T14:04:00+01:00``, ``reindex --since ...`` and the
``status`` thresholds (``26h``, ``8d``, ``15m``) all read their values here, so
the same text means the same thing everywhere. Times must carry a zone: at
3 a.m. nobody should have to guess whether a time was UTC or local.
Standard library only.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*(s|m|h|d|w)")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class TimeFormatError(ValueError):
    """The text is not a time (or duration) in a form we accept; the message says which form."""


def parse_time(text: str) -> datetime:
    """An ISO-8601 time with a zone: ``2026-11-27T03:15:00+01:00``, ``...Z``, or with a space for ``T``."""
    t = text.strip()
    try:
        when = datetime.fromisoformat(t.replace("Z", "+00:00").replace("z", "+00:00").replace(" ", "T", 1))
    except ValueError:
        raise TimeFormatError(
            f"cannot read {text!r} as a time: use ISO-8601 with a zone, e.g. 2026-11-27T03:15:00+00:00"
        ) from None
    if when.tzinfo is None or when.utcoffset() is None:
        raise TimeFormatError(f"the time {text!r} has no time zone: add one, e.g. 2026-11-27T03:15:00+00:00 or ...Z")
    return when


def parse_duration(text: str) -> timedelta:
    """``90s``, ``15m``, ``26h``, ``8d``, ``2w``, or a combination such as ``1d12h``."""
    t = text.strip().lower().replace(" ", "")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(t):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if not t or pos != len(t):
        raise TimeFormatError(f"cannot read {text!r} as a duration: use e.g. 15m, 26h, 8d, 1d12h")
    return timedelta(seconds=total)


def format_duration(seconds: float) -> str:
    """``93784`` -> ``1d2h3m`` (at most three units; for messages)."""
    s = int(round(abs(seconds)))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if s >= size or (unit == "s" and not parts):
            parts.append(f"{s // size}{unit}")
            s %= size
    return ("-" if seconds < 0 else "") + "".join(parts[:3])
