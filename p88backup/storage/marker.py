"""``p88backup init``: a storage is set up once, on purpose, and carries a marker.

The marker (``p88backup.json`` at the root or prefix) is what tells p88backup's
storage from an empty mount point or a wrong prefix; every backend refuses to
work without it (see :mod:`p88backup.storage.base`). This module writes it and
reads it back; the backends decide where it lives and create a missing local
root, the only time that happens.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from p88backup import __version__
from p88backup.catalog.layout import STORAGE_MARKER
from p88backup.storage.base import InitOutcome, Storage

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Of the storage layout (catalog/layout.py). Raised when a layout change needs readers to know."""


@dataclass(frozen=True)
class InitResult:
    url: str
    outcome: InitOutcome
    marker: dict[str, Any] | None
    """The marker now in storage (None if unreadable: someone else's file under that name)."""

    def as_dict(self) -> dict[str, Any]:
        return {"storage": self.url, "outcome": self.outcome, "marker": self.marker}


def marker_body(now: datetime) -> bytes:
    doc = {
        "format_version": FORMAT_VERSION,
        "created_at": now.astimezone(UTC).isoformat(),
        "created_by": f"p88backup {__version__}",
    }
    return json.dumps(doc, indent=2).encode() + b"\n"


def read_marker(storage: Storage) -> dict[str, Any] | None:
    with storage.open(STORAGE_MARKER) as fh:
        raw = fh.read()
    try:
        doc = json.loads(raw)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def initialise(storage: Storage, *, now: datetime | None = None) -> InitResult:
    """Mark ``storage`` as p88backup's (create-only); a no-op if it already is."""
    outcome = storage.init(marker_body(now or datetime.now(UTC)))
    fields = {"storage": storage.url, "marker": STORAGE_MARKER}
    if outcome == "adopted":
        log.warning(
            "adopted a storage that holds objects but had no marker (made by a p88backup from before markers)",
            extra={"p88": fields},
        )
    elif outcome == "initialised":
        log.info("storage initialised", extra={"p88": fields})
    else:
        log.info("storage already initialised; nothing to do", extra={"p88": fields})
    return InitResult(storage.url, outcome, read_marker(storage))
