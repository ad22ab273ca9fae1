"""archive_command / restore_command edges that need no server: exit statuses
PostgreSQL acts on, and durability of an "already archived" answer."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from p88backup.core.wal.archive import WalArchive
from p88backup.errors import ObjectNotFoundError, StorageError
from p88backup.storage.memory import MemoryStorage
from p88backup.stream import make_codec
from tests.harness.helpers import SEG, cli_env, init_storage, initialised, run_cli
from tests.harness.helpers import wal_header as header

NAME = "000000010000000000000003"


def segment(path: Path) -> Path:
    path.write_bytes(header(3) + b"\0" * (SEG - len(header(3))))
    return path


class Recording(MemoryStorage):
    def __init__(self) -> None:
        super().__init__(uuid.uuid4().hex)
        initialised(self)
        self.synced: list[str] = []
        self.missing = False

    def sync(self, key: str) -> None:
        self.synced.append(key)

    def check(self) -> None:
        if self.missing:
            raise StorageError("bucket does not exist")


def test_identical_repush_makes_the_stored_copy_durable_before_saying_so(tmp_path: Path) -> None:
    storage = Recording()
    archive = WalArchive(storage, make_codec(threads=1))
    seg = segment(tmp_path / NAME)
    first = archive.push(seg)
    assert not first.already_archived and storage.synced == []  # a put is durable by itself
    again = archive.push(seg)
    assert again.already_archived and storage.synced == [again.key]


def test_fetch_says_not_found_only_when_the_archive_is_there(tmp_path: Path) -> None:
    storage = Recording()
    archive = WalArchive(storage, make_codec(threads=1))
    with pytest.raises(ObjectNotFoundError):
        archive.fetch(NAME, tmp_path / "x")
    storage.missing = True
    with pytest.raises(StorageError) as err:
        archive.fetch(NAME, tmp_path / "x")
    assert not isinstance(err.value, ObjectNotFoundError)


def test_wal_fetch_from_a_storage_root_that_is_not_there_aborts_recovery(tmp_path: Path) -> None:
    env = cli_env(tmp_path, P88_STORAGE_URL=f"file://{tmp_path}/not-mounted")
    r = run_cli(["wal-fetch", NAME, str(tmp_path / "x")], env)
    assert r.returncode == 126, r.stderr
    assert "does not exist" in r.stderr
    (tmp_path / "not-mounted").mkdir()
    init_storage(env)
    assert run_cli(["wal-fetch", NAME, str(tmp_path / "x")], env).returncode == 1  # now truly not archived


def test_wal_fetch_accepts_options_after_the_command_and_never_exits_2(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    cfg = tmp_path / "p88.toml"
    cfg.write_text(f'storage_url = "file://{tmp_path}/store"\n')
    env = cli_env(tmp_path)
    init_storage({**env, "P88_CONFIG": str(cfg)})
    # the form its --help documents: wal-fetch [--config FILE] NAME DEST
    assert run_cli(["wal-fetch", "--config", str(cfg), NAME, str(tmp_path / "x")], env).returncode == 1
    assert run_cli(["wal-fetch", f"--config={cfg}", "-v", NAME, str(tmp_path / "x")], env).returncode == 1
    # a usage error must not read as "not in the archive" (any status < 126 would)
    r = run_cli(["wal-fetch", NAME], env)
    assert r.returncode == 126 and "takes 2 argument" in r.stderr
    assert run_cli(["wal-fetch", "--bogus", NAME, str(tmp_path / "x")], env).returncode == 126
    # wal-push keeps click's usage status
    assert run_cli(["wal-push"], env).returncode == 2
