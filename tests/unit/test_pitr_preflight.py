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


def test_latest_that_stopped_before_the_newest_archived_wal_fails_loudly(tmp_path: Path) -> None:
    # Seen before the fix: a 'latest' restore from a backup that carried an old recovery target
    # stopped right after the backup's end, exited 0, and 3 of 1013 rows were missing.
    from p88backup.core.pitr.plan import RecoveryPlan
    from p88backup.core.pitr.restore import PitrResult
    from p88backup.core.pitr.server import Promotion
    from p88backup.errors import PitrTargetError

    restorer = PitrRestorer(_storage(encrypted=False), make_codec(), PitrOptions(Target("latest"), tmp_path, "true"))
    plan = RecoveryPlan("20261127T020000Z", 1, 9, "000000010000000000000009")
    result = PitrResult("20261127T020000Z", "latest", str(tmp_path), 1, 9, 0.0, log_file="server.log")
    stopped_early = Promotion(
        None, "0/5000100", 2, "recovery stopping before commit of transaction 727", 0x5000100, SEG
    )
    with pytest.raises(PitrTargetError, match="before the newest archived WAL.*recovery stopping before commit"):
        restorer._check_replayed_all(plan, stopped_early, result)
    replayed = Promotion(None, "0/9000100", 2, None, 0x9000100, SEG)
    restorer._check_replayed_all(plan, replayed, result)
    assert result.replayed_to == "000000010000000000000009"


SEG = 16 * 1024 * 1024
