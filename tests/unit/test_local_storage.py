"""Local storage durability: which files and directories are fsynced."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from p88backup.errors import ObjectNotFoundError
from p88backup.storage.local import LocalStorage


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
    s = LocalStorage(root)
    s.put("wal/0000000100000000/seg.zst", io.BytesIO(b"x"), overwrite=False)
    dirs = [str(root / "wal" / "0000000100000000"), str(root / "wal"), str(root)]
    assert fsynced[-3:] == dirs


def test_sync_makes_an_existing_object_durable(tmp_path: Path, fsynced: list[str]) -> None:
    root = tmp_path / "store"
    s = LocalStorage(root)
    s.put("a/b/obj", io.BytesIO(b"x"))
    fsynced.clear()
    s.sync("a/b/obj")
    assert fsynced == [str(root / "a/b/obj"), str(root / "a/b"), str(root / "a"), str(root)]
    with pytest.raises(ObjectNotFoundError):
        s.sync("a/b/missing")
