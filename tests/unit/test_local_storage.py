"""Local storage: which files and directories are fsynced, and a root that is only ever made by init."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from p88backup.catalog.layout import STORAGE_MARKER
from p88backup.errors import ObjectNotFoundError, StorageError, StorageNotInitialisedError
from p88backup.storage.local import TMP_DIR, LocalStorage
from p88backup.storage.marker import initialise
from tests.harness.helpers import initialised


@pytest.fixture
def fsynced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = os.fsync

    def record(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    return seen


def test_put_fsyncs_the_file_and_every_directory_up_to_the_root(tmp_path: Path, fsynced: list[str]) -> None:
    root = tmp_path / "store"
    root.mkdir()
    (root / "wal" / "0000000100000000").mkdir(parents=True)  # made by an earlier, killed put
    s = initialised(LocalStorage(root))
    s.put("wal/0000000100000000/seg.zst", io.BytesIO(b"x"), overwrite=False)
    dirs = [str(root / "wal" / "0000000100000000"), str(root / "wal"), str(root)]
    assert fsynced[-3:] == dirs


def test_sync_makes_an_existing_object_durable(tmp_path: Path, fsynced: list[str]) -> None:
    root = tmp_path / "store"
    s = initialised(LocalStorage(root))
    s.put("a/b/obj", io.BytesIO(b"x"))
    fsynced.clear()
    s.sync("a/b/obj")
    assert fsynced == [str(root / "a/b/obj"), str(root / "a/b"), str(root / "a"), str(root)]
    with pytest.raises(ObjectNotFoundError):
        s.sync("a/b/missing")


def test_init_makes_a_missing_root_durably(tmp_path: Path, fsynced: list[str]) -> None:
    root = tmp_path / "srv" / "p88"
    assert initialise(LocalStorage(root)).outcome == "initialised"
    # only the marker: no temp directory owned by whoever ran init for wal-push to trip over
    assert [p.name for p in root.iterdir()] == [STORAGE_MARKER]
    # each new directory's entry is synced in its parent, the marker's directory too
    assert {str(tmp_path), str(tmp_path / "srv"), str(root)} <= set(fsynced)


def test_a_volume_unmounted_under_a_running_process_is_noticed(tmp_path: Path) -> None:
    """The marker is checked on every operation, not once: wal-stream runs for months."""
    root = tmp_path / "mnt"
    s = initialised(LocalStorage(root))
    s.put("wal/00000001/a", io.BytesIO(b"a"))
    root.rename(tmp_path / "the-volume")  # unmounted: an empty mount point is left
    root.mkdir()
    with pytest.raises(StorageNotInitialisedError):
        s.put("wal/00000001/b", io.BytesIO(b"b"))
    with pytest.raises(StorageNotInitialisedError):
        s.stat("wal/00000001/a")
    assert list(root.iterdir()) == []


def test_init_of_a_fresh_filesystem_is_not_an_adoption(tmp_path: Path) -> None:
    root = tmp_path / "mnt"
    (root / "lost+found").mkdir(parents=True)  # what mkfs leaves at a volume's root
    (root / TMP_DIR).mkdir()
    assert initialise(LocalStorage(root)).outcome == "initialised"


def test_init_refuses_a_root_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "store").write_text("not a directory")
    with pytest.raises(StorageError, match="not a directory"):
        initialise(LocalStorage(tmp_path / "store"))


def test_a_directory_it_may_not_read_is_an_error_not_a_shorter_listing(tmp_path: Path) -> None:
    # As root every directory is readable: drop to another user's view with a subprocess if needed.
    import os
    import subprocess
    import sys

    from tests.harness.helpers import initialised

    s = initialised(LocalStorage(tmp_path / "store"))
    s.put("wal/00000001/000000010000000000000001.zst", io.BytesIO(b"x"))
    os.chmod(tmp_path / "store" / "wal" / "00000001", 0o000)
    code = (
        "import sys; from pathlib import Path; from p88backup.storage.local import LocalStorage\n"
        "from p88backup.errors import StorageError\n"
        f"s = LocalStorage(Path({str(tmp_path / 'store')!r}))\n"
        "try:\n    print(len(list(s.list('wal/'))))\nexcept StorageError as e:\n    print('error', e)\n"
    )
    user = "postgres" if os.geteuid() == 0 else None
    if user:
        from tests.harness.procs import make_traversable

        make_traversable(tmp_path)
        for d in (tmp_path / "store", tmp_path / "store" / "wal"):
            os.chmod(d, 0o755)
        os.chmod(tmp_path / "store" / "p88backup.json", 0o644)
    r = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        user=user,
        group=user,
        extra_groups=[] if user else None,
        timeout=60,
    )
    os.chmod(tmp_path / "store" / "wal" / "00000001", 0o755)
    assert r.stdout.startswith("error") and "cannot list" in r.stdout, r.stdout + r.stderr
