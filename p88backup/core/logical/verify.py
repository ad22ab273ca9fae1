"""``verify``: re-read every stored object of a backup and prove it restorable.

The **full** check, per object: size, SHA-256 of the stored bytes, a full
decode (zstd frame checksums, age authentication), and a format check:
pg_restore reads every custom-format archive end to end (``--list`` for a
directory dump's TOC), and globals must start with the cluster-dump header.

An encrypted backup can be decoded only where its age identity is, and the
encryption policy keeps that key off the database server where the nightly
``verify`` runs. There the **stored** check runs instead: size, SHA-256 and
the age file's structure (:mod:`p88backup.agefile`: header, one stanza per
recipient the manifest lists, a payload length age's chunking can produce).
The report says which check ran; the full one runs where the key is (the
drill host: ``verify --full``, or the weekly drill). Unencrypted backups
always get the full check: decoding them needs no key.
"""

from __future__ import annotations

import logging
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from p88backup import agefile
from p88backup.catalog.backups import Catalog
from p88backup.catalog.models import BaseBackupManifest, DumpManifest, StoredObject
from p88backup.catalog.objects import VerifyingReader, check_stat, open_decoded
from p88backup.errors import CryptoError, P88Error, VerifyError
from p88backup.pg.proc import ToolProcess, run_tool
from p88backup.pg.tools import client_for, major_of
from p88backup.storage import Readable, Storage
from p88backup.stream import Codec, copy_stream, drain

log = logging.getLogger(__name__)
CHUNK = 1024 * 1024


FULL = "full"  # size, SHA-256, decoded (zstd, age), read by pg_restore / format checks
STORED = "stored"  # size, SHA-256, age structure: what can be checked without the private key
NOT_CHECKED_WITHOUT_KEY = (
    "decryption, zstd decoding and pg_restore were not run: this host has no age identity. "
    "They run where the key is: `p88backup verify --full` on the drill host (the weekly drill does it too)"
)


@dataclass
class ObjectCheck:
    key: str
    ok: bool
    problem: str | None = None


@dataclass
class VerifyReport:
    kind: str
    id: str
    checks: list[ObjectCheck] = field(default_factory=list)
    level: str = FULL

    @property
    def not_checked(self) -> str | None:
        """What this report does not cover (None for a full check)."""
        return None if self.level == FULL else NOT_CHECKED_WITHOUT_KEY

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list[ObjectCheck]:
        return [c for c in self.checks if not c.ok]


def restore_tool_major(m: DumpManifest) -> int:
    """pg_restore must read the archive version written by the pg_dump used."""
    try:
        tool_major = int(m.tool_version.split(".")[0])
    except ValueError:
        tool_major = 0
    return max(major_of(m.server_version_num), tool_major)


class Verifier:
    """``full``: require the full check (an encrypted backup without the identity is a CryptoError)."""

    def __init__(self, storage: Storage, codec: Codec, pg_bin_dir: Path | None = None, *, full: bool = False) -> None:
        self.storage, self.codec, self.pg_bin_dir, self.full = storage, codec, pg_bin_dir, full
        self.catalog = Catalog(storage)

    def verify(self, manifest: DumpManifest | BaseBackupManifest) -> VerifyReport:
        encrypted = manifest.encoding.encryption == "age"
        if encrypted and self.codec.identity_file is None:
            if self.full:
                raise CryptoError(
                    f"{manifest.kind} {manifest.id} is encrypted and this host has no age identity:"
                    " the full check (decryption, decoding, pg_restore) cannot run here",
                    hint="run it where the key is (the drill host), or drop --full for the check of the stored"
                    " bytes (size, SHA-256, age structure)",
                )
            return self._verify_stored(manifest)
        report = VerifyReport(manifest.kind, manifest.id)
        if isinstance(manifest, DumpManifest):
            pg_restore = client_for("pg_restore", restore_tool_major(manifest), self.pg_bin_dir).path
            for db in manifest.databases:
                if db.format == "custom":
                    self._check(report, db.objects[0], encrypted, lambda r: self._read_archive(pg_restore, r))
                else:
                    self._check_directory(report, db.objects, encrypted, pg_restore)
            if manifest.globals is not None:
                self._check(report, manifest.globals, encrypted, self._globals_header)
        else:
            for obj in manifest.objects:
                self._check(report, obj, encrypted, drain)
        return report

    def _verify_stored(self, manifest: DumpManifest | BaseBackupManifest) -> VerifyReport:
        """Without the key: size, SHA-256 and age structure of every object (see the module docstring)."""
        report = VerifyReport(manifest.kind, manifest.id, level=STORED)
        recipients = len(manifest.encoding.recipients)

        def structure(obj: StoredObject) -> None:
            raw = VerifyingReader(self.storage.open(obj.key), obj)
            try:
                # reads to the end: the SHA-256 is compared there, after the structure
                agefile.check_stream(raw, recipients=recipients, what=obj.key)
            finally:
                raw.close()

        for obj in manifest.objects:
            self._record(report, obj, structure)
        return report

    def _check(self, report: VerifyReport, obj: StoredObject, encrypted: bool, consume) -> None:  # type: ignore[no-untyped-def]
        def decode(obj: StoredObject) -> None:
            decoded, raw = open_decoded(self.storage, obj, self.codec, encrypted=encrypted)
            try:
                consume(decoded)
                drain(decoded)  # the consumer may stop early; checksums need the whole object
            finally:
                raw.close()

        self._record(report, obj, decode)

    def _record(self, report: VerifyReport, obj: StoredObject, check: Callable[[StoredObject], None]) -> None:
        """Run ``check`` after the size pre-check; record the object as good or with its problem."""
        try:
            check_stat(self.storage, obj)
            check(obj)
            report.checks.append(ObjectCheck(obj.key, True))
        except P88Error as exc:
            problem = str(exc) if obj.key in str(exc) else f"{obj.key}: {exc}"
            log.error("verify failed", extra={"p88": {"key": obj.key, "problem": problem}})
            report.checks.append(ObjectCheck(obj.key, False, problem))

    def _read_archive(self, pg_restore: Path, decoded: Readable) -> None:
        """Have pg_restore read the whole archive (TOC and every data block) into
        /dev/null: stronger than ``--list``, which reads only the TOC and so
        cannot notice an archive cut short after it."""
        with ToolProcess(
            [str(pg_restore), "--file=/dev/null"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, what="pg_restore"
        ) as tool:
            try:
                while chunk := decoded.read(CHUNK):
                    tool.stdin.write(chunk)
            except BrokenPipeError:
                pass  # it quit early; finish() below reports why
            finally:
                try:
                    tool.stdin.close()
                except BrokenPipeError:
                    pass
            tool.finish()

    @staticmethod
    def _globals_header(decoded: Readable) -> None:
        from p88backup.core.logical.dump import GLOBALS_MAGIC

        head = decoded.read(len(GLOBALS_MAGIC))
        if head != GLOBALS_MAGIC:
            raise VerifyError("globals dump does not start with the pg_dumpall header")

    def _check_directory(
        self, report: VerifyReport, objects: list[StoredObject], encrypted: bool, pg_restore: Path
    ) -> None:
        toc = [o for o in objects if o.key.rsplit("/", 1)[-1].startswith("toc.dat")]
        with tempfile.TemporaryDirectory(prefix="p88verify-") as tmp:

            def save_toc(decoded: Readable) -> None:
                with open(Path(tmp) / "toc.dat", "wb") as out:
                    copy_stream(decoded, out)
                run_tool([str(pg_restore), "--list", tmp], message="pg_restore --list of the directory archive")

            if not toc:
                report.checks.append(ObjectCheck("toc.dat", False, "directory dump has no toc.dat"))
            for obj in toc:
                self._check(report, obj, encrypted, save_toc)
        for obj in objects:
            if obj not in toc:
                self._check(report, obj, encrypted, drain)
