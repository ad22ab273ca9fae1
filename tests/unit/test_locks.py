from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from p88backup.errors import LockedError
from p88backup.locks import job_lock


def test_second_holder_is_refused_then_admitted(tmp_path: Path) -> None:
    with job_lock(tmp_path, "dump"):
        with pytest.raises(LockedError, match=f"another dump run is in progress \\(pid {os.getpid()}"):
            with job_lock(tmp_path, "dump"):
                pass
        with job_lock(tmp_path, "expire"):  # other job kinds are independent
            pass
    with job_lock(tmp_path, "dump"):
        pass


def test_wait_uses_the_injected_sleep(tmp_path: Path) -> None:
    slept: list[float] = []
    with job_lock(tmp_path, "dump"), pytest.raises(LockedError):
        with job_lock(tmp_path, "dump", wait=0.3, sleep=slept.append):
            pass
    assert slept and sum(slept) > 0


def test_lock_dies_with_its_process(tmp_path: Path) -> None:
    code = (
        "import os, pathlib\nfrom p88backup.locks import job_lock\n"
        f"with job_lock(pathlib.Path({str(tmp_path)!r}), 'dump'):\n    os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with job_lock(tmp_path, "dump"):  # no stale lock after the holder died
        pass
