"""restore --pitr checks keys and programs before it touches the target directory (issue 10 item 10).

Before the fix, ``--force`` emptied the target and only then failed to read the encrypted base
backup without its age identity: the directory's previous contents were gone for nothing.
"""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from p88backup.catalog.backups import Catalog
from p88backup.catalog.layout import wal_key
from p88backup.catalog.models import Encoding
from p88backup.core.pitr.plan import Target
from p88backup.core.pitr.restore import PitrOptions, PitrRestorer
from p88backup.errors import CryptoError, ObjectNotFoundError, PgToolError
from p88backup.storage.memory import MemoryStorage
from p88backup.stream import make_codec
from tests.harness.helpers import fake_basebackup_manifest, initialised

WHEN = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"


def _storage(encrypted: bool) -> MemoryStorage:
    storage = initialised(MemoryStorage(uuid.uuid4().hex))
    manifest = fake_basebackup_manifest("20261127T020000Z", WHEN, "000000010000000000000002")
    if encrypted:
        manifest = manifest.model_copy(update={"encoding": Encoding(encryption="age", recipients=[RECIPIENT])})
    Catalog(storage).write(manifest)
    storage.put(manifest.files[0].key, io.BytesIO(b"x"))  # its base.tar object, of the recorded size (1)
    for n in (2, 3):
        storage.put(wal_key(f"00000001000000000000000{n}", ".zst"), io.BytesIO(b"w"))
    return storage


def _non_empty(tmp_path: Path) -> Path:
    target = tmp_path / "target"
    target.mkdir()
    (target / "precious").write_text("keep me")
    return target


def test_missing_identity_refuses_before_force_empties_the_target(tmp_path: Path) -> None:
    target = _non_empty(tmp_path)
    options = PitrOptions(Target("latest"), target, "true", force=True)
    with pytest.raises(CryptoError):
        PitrRestorer(_storage(encrypted=True), make_codec(), options).run()
    assert (target / "precious").read_text() == "keep me"


def test_missing_server_programs_refuse_before_force_empties_the_target(tmp_path: Path) -> None:
    target = _non_empty(tmp_path)
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    options = PitrOptions(Target("latest"), target, "true", force=True, start=True, pg_bin_dir=empty_bin)
    with pytest.raises(PgToolError, match="PostgreSQL 16"):
        PitrRestorer(_storage(encrypted=False), make_codec(), options).run()
    assert (target / "precious").read_text() == "keep me"


def test_missing_base_backup_object_refuses_before_force_empties_the_target(tmp_path: Path) -> None:
    # The manifest is there, its base.tar is not (lost, or expired meanwhile): nothing to restore from.
    storage = _storage(encrypted=False)
    storage.delete(Catalog(storage).basebackups()[0].files[0].key)
    target = _non_empty(tmp_path)
    with pytest.raises(ObjectNotFoundError):
        PitrRestorer(storage, make_codec(), PitrOptions(Target("latest"), target, "true", force=True)).run()
    assert (target / "precious").read_text() == "keep me"
