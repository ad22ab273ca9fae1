"""PostgreSQL's ``backup_manifest`` and ``backup_label``: parse and check.

The manifest lists every file of a base backup with size and checksum, the
WAL range the backup needs, and a SHA-256 of itself. It is what
``pg_verifybackup`` checks; ``verify`` and ``restore --pitr`` check the same.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime

from p88backup.core.wal import names as walnames
from p88backup.errors import VerifyError


@dataclass(frozen=True)
class ManifestFile:
    path: str
    size: int
    algorithm: str | None
    checksum: str | None


@dataclass
class BackupManifestInfo:
    files: dict[str, ManifestFile]
    wal_ranges: list[tuple[int, int, int]] = field(default_factory=list)  # (timeline, start, end)

    @property
    def data_size(self) -> int:
        return sum(f.size for f in self.files.values())

    @property
    def end_lsn(self) -> int:
        return max(end for _, _, end in self.wal_ranges)

    @property
    def end_timeline(self) -> int:
        return max(self.wal_ranges, key=lambda r: r[2])[0]


def parse_backup_manifest(raw: bytes) -> BackupManifestInfo:
    """Parse and check the manifest's own SHA-256 (as pg_verifybackup does)."""
    marker = raw.rfind(b'"Manifest-Checksum"')
    if marker < 0:
        raise VerifyError("backup_manifest has no Manifest-Checksum")
    try:
        doc = json.loads(raw)
    except ValueError:
        raise VerifyError("backup_manifest is not valid JSON") from None
    if hashlib.sha256(raw[:marker]).hexdigest() != doc.get("Manifest-Checksum"):
        raise VerifyError("backup_manifest checksum mismatch (the manifest is damaged)")
    files = {}
    for f in doc.get("Files", []):
        path = f.get("Path") or bytes.fromhex(f["Encoded-Path"]).decode("utf-8", "replace")
        files[path] = ManifestFile(path, int(f["Size"]), f.get("Checksum-Algorithm"), f.get("Checksum"))
    ranges = [
        (int(r["Timeline"]), walnames.parse_lsn(r["Start-LSN"]), walnames.parse_lsn(r["End-LSN"]))
        for r in doc.get("WAL-Ranges", [])
    ]
    if not ranges:
        raise VerifyError("backup_manifest has no WAL-Ranges")
    return BackupManifestInfo(files, ranges)


@dataclass(frozen=True)
class BackupLabel:
    start_lsn: int
    start_segment: str
    checkpoint_lsn: int
    start_time: datetime
    timeline: int
    label: str


_LABEL_RE = {
    "start": re.compile(r"^START WAL LOCATION: ([0-9A-F/]+) \(file ([0-9A-F]{24})\)$", re.M),
    "checkpoint": re.compile(r"^CHECKPOINT LOCATION: ([0-9A-F/]+)$", re.M),
    "time": re.compile(r"^START TIME: (.+)$", re.M),
    "timeline": re.compile(r"^START TIMELINE: (\d+)$", re.M),
    "label": re.compile(r"^LABEL: (.*)$", re.M),
}


def parse_backup_label(raw: bytes) -> BackupLabel:
    text = raw.decode("utf-8", "replace")
    found = {k: r.search(text) for k, r in _LABEL_RE.items()}
    missing = [k for k, m in found.items() if m is None and k != "label"]
    if missing:
        raise VerifyError(f"backup_label lacks {', '.join(missing)}")
    start, cp, tm, tl, lb = (found[k] for k in ("start", "checkpoint", "time", "timeline", "label"))
    assert start and cp and tm and tl
    when = tm.group(1).strip()
    # "2026-11-27 07:08:33 UTC"; PostgreSQL writes the server's log_timezone abbreviation.
    try:
        stamp = datetime.strptime(when[:19], "%Y-%m-%d %H:%M:%S")
        start_time = stamp.replace(tzinfo=UTC) if when.endswith(("UTC", "GMT")) else stamp.astimezone(UTC)
    except ValueError:
        raise VerifyError(f"backup_label has an unreadable START TIME: {when!r}") from None
    return BackupLabel(
        start_lsn=walnames.parse_lsn(start.group(1)),
        start_segment=start.group(2),
        checkpoint_lsn=walnames.parse_lsn(cp.group(1)),
        start_time=start_time,
        timeline=int(tl.group(1)),
        label=lb.group(1) if lb else "",
    )
