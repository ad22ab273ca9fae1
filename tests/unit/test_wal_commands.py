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


@pytest.mark.parametrize(
    "before",
    [
        ["--bogus"],  # an option Click does not know, before the command
        ["--config"],  # a value missing: the command name is taken as the file
        ["-x", "--log-format", "json"],
        ["--log-format", "xml"],
    ],
)
def test_a_command_line_nobody_can_parse_never_reads_as_not_archived(tmp_path: Path, before: list[str]) -> None:
    env = cli_env(tmp_path, P88_STORAGE_URL=f"file://{tmp_path}/store")
    r = run_cli([*before, "wal-fetch", NAME, str(tmp_path / "x")], env)
    assert r.returncode == 126, (r.returncode, r.stderr)


def test_a_bad_log_format_after_the_command(tmp_path: Path) -> None:
    env = cli_env(tmp_path, P88_STORAGE_URL=f"file://{tmp_path}/store")
    r = run_cli(["wal-fetch", "--log-format=xml", NAME, str(tmp_path / "x")], env)
    assert r.returncode == 126 and "--log-format must be one of json, console" in r.stderr
    r = run_cli(["wal-push", "--log-format=xml", str(tmp_path / NAME)], env)
    assert r.returncode == 2


NOT_ON_THE_ARCHIVE_PATH = ("click", "pydantic", "pydantic_core", "pydantic_settings", "boto3", "botocore", "psycopg")


def test_wal_push_imports_none_of_the_heavy_libraries(tmp_path: Path) -> None:
    """The start-up budget of DESIGN §6: archive_command runs once per WAL segment."""
    import subprocess
    import sys

    from tests.harness.helpers import REPO

    cfg = tmp_path / "p88.toml"  # with a config file: the whole file is checked on this path too
    cfg.write_text(f'storage_url = "file://{tmp_path}/store"\ncompression_level = 3\n[retention]\nkeep_daily = 7\n')
    env = cli_env(tmp_path, P88_CONFIG=str(cfg))
    init_storage(env)
    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "p88backup", "--log-format", "json", "wal-push"]
        + [str(segment(tmp_path / NAME))],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    imported = {
        line.split("|")[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:") and "|" in line
    }
    assert "p88backup.core.wal.archive" in imported and "tomllib" in imported  # it did measure the push
    heavy = sorted(m for m in imported if m.split(".")[0] in NOT_ON_THE_ARCHIVE_PATH)
    assert heavy == [], f"wal-push imported {heavy}"


def test_encrypted_archive_repush_with_the_private_key_off_the_server(tmp_path: Path) -> None:
    import pyrage

    key = pyrage.x25519.Identity.generate()
    env = cli_env(tmp_path, P88_STORAGE_URL=f"file://{tmp_path}/store", P88_AGE_RECIPIENTS=str(key.to_public()))
    init_storage(env)
    seg = segment(tmp_path / NAME)
    assert run_cli(["wal-push", str(seg)], env).returncode == 0
    r = run_cli(["wal-push", str(seg)], env)  # PostgreSQL retrying: identical, and no key to decrypt
    assert r.returncode == 0 and "already archived (identical)" in r.stderr, r.stderr
    seg.write_bytes(seg.read_bytes()[:-1] + b"\1")
    r = run_cli(["wal-push", str(seg)], env)
    assert r.returncode == 10 and "different content" in r.stderr, r.stderr


def test_1mb_segments_push_and_fetch(tmp_path: Path) -> None:
    mb = 1024 * 1024
    name = "000000010000000000000100"  # segment 256: a name only small segments have
    env = cli_env(tmp_path, P88_STORAGE_URL=f"file://{tmp_path}/store")
    init_storage(env)
    seg = tmp_path / name
    seg.write_bytes(header(0x100, size=mb) + b"\0" * (mb - len(header(0x100, size=mb))))
    r = run_cli(["wal-push", str(seg)], env)
    assert r.returncode == 0, r.stderr
    assert run_cli(["wal-fetch", name, str(tmp_path / "back")], env).returncode == 0
    assert (tmp_path / "back").read_bytes() == seg.read_bytes()
    r = run_cli(["wal-fetch", "000000010000000000000101", str(tmp_path / "x")], env)
    assert r.returncode == 1, r.stderr  # simply not archived yet
