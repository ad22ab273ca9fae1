"""Logging, configured once per process: JSON lines or console text on stderr.

Containers get JSON lines (the stack's log shipper parses them); a person at a
terminal gets short text lines. Structured fields go in ``extra={"p88": {...}}``
and become top-level keys of the JSON line.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any, TextIO

from p88backup.errors import P88Error
from p88backup.redact import SECRETS


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "p88", None)
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exc"] = SECRETS.scrub(self.formatException(record.exc_info))
        return json.dumps(line, default=str, ensure_ascii=False)


class ConsoleFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = f"{record.levelname.lower():7} {record.getMessage()}"
        fields = getattr(record, "p88", None)
        if isinstance(fields, dict) and fields:
            text += "  " + " ".join(f"{k}={v}" for k, v in fields.items())
        if record.exc_info:
            text += "\n" + SECRETS.scrub(self.formatException(record.exc_info))
        return text


def configure(fmt: str | None = None, verbose: int = 0, stream: TextIO | None = None) -> None:
    """Install one stderr handler on the ``p88backup`` logger.

    ``fmt`` is ``json``, ``console`` or ``None`` (json unless stderr is a TTY).
    ``verbose``: 0 = INFO, 1+ = DEBUG (with tracebacks of expected errors).
    """
    stream = stream or sys.stderr
    if fmt is None:
        fmt = "console" if stream.isatty() else "json"
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else ConsoleFormatter())
    handler.addFilter(SECRETS)
    root = logging.getLogger("p88backup")
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


def report_error(exc: P88Error) -> None:
    """One ERROR line for an expected failure (plus its hint); the traceback only at DEBUG."""
    root = logging.getLogger("p88backup")
    if not root.handlers:  # failed before logging was configured
        configure(None, 0)
    extra: dict[str, Any] = {"exit_code": int(exc.exit_code), "error": type(exc).__name__}
    if exc.hint:
        extra["hint"] = exc.hint
    root.error(str(exc), extra={"p88": extra}, exc_info=exc if root.isEnabledFor(logging.DEBUG) else None)


def fields(**kw: Any) -> dict[str, Any]:
    """``log.info("done", extra=fields(bytes=n))`` -> structured keys."""
    return {"p88": kw}
