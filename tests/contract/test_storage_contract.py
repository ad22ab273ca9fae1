"""One storage contract, run unchanged on every backend: memory, local, moto, MinIO."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p88backup.catalog.layout import STORAGE_MARKER
from p88backup.errors import ObjectExistsError, ObjectNotFoundError, StorageError, StorageNotInitialisedError
from p88backup.storage import Storage, open_storage
from p88backup.storage.marker import initialise, read_marker
from tests.harness.helpers import initialised, new_bucket

BACKENDS = ["memory", "local", "moto", "minio"]
PERSISTENT_BACKENDS = BACKENDS[1:]
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Backend:
    name: str
    url: str
    env: dict[str, str]
    storage: Storage


def _open_backend(
    name: str, request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, init: bool = True
) -> Iterator[Backend]:
    env: dict[str, str] = {}
    if name == "memory":
        url = f"memory://{uuid.uuid4().hex}"
    elif name == "local":
        url = f"file://{tmp_path}/store"
    else:
        server = request.getfixturevalue(name)
        env = server.env()
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        url = f"s3://{new_bucket(server)}/some/prefix"
    storage = open_storage(url, retry_deadline=10)
    yield Backend(name, url, env, initialised(storage) if init else storage)
    storage.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    yield from _open_backend(request.param, request, tmp_path, monkeypatch)


@pytest.fixture(params=BACKENDS)
def blank(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Backend]:
    """A storage that is there (local: an existing, empty root) but was never initialised."""
    if request.param == "local":
        (tmp_path / "store").mkdir()
    yield from _open_backend(request.param, request, tmp_path, monkeypatch, init=False)


@pytest.fixture(params=PERSISTENT_BACKENDS)
def persistent_backend(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Backend]:
    """Backends that outlive a process: the memory backend holds objects in its
    own process's RAM by design, so the RSS and kill tests cannot apply to it."""
    yield from _open_backend(request.param, request, tmp_path, monkeypatch)


def put_bytes(s: Storage, key: str, data: bytes, overwrite: bool = True) -> None:
    s.put(key, io.BytesIO(data), overwrite=overwrite)


def get_bytes(s: Storage, key: str) -> bytes:
    with s.open(key) as fh:
        return fh.read()


def probe(backend: Backend, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.harness.storage_probe", args[0], backend.url, *args[1:]],
        cwd=REPO,
        env={**os.environ, **backend.env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_roundtrip_stat_and_overwrite(backend: Backend) -> None:
    s = backend.storage
    put_bytes(s, "a/b/one.bin", b"hello")
    assert get_bytes(s, "a/b/one.bin") == b"hello"
    info = s.stat("a/b/one.bin")
    assert info.key == "a/b/one.bin" and info.size == 5
    put_bytes(s, "a/b/one.bin", b"replaced")
    assert get_bytes(s, "a/b/one.bin") == b"replaced"


def test_empty_object(backend: Backend) -> None:
    put_bytes(backend.storage, "empty", b"")
    assert get_bytes(backend.storage, "empty") == b""
    assert backend.storage.stat("empty").size == 0


def test_missing_object_errors(backend: Backend) -> None:
    s = backend.storage
    with pytest.raises(ObjectNotFoundError):
        s.open("no/such/key")
    with pytest.raises(ObjectNotFoundError):
        s.stat("no/such/key")
    s.delete("no/such/key")  # deleting a missing key is fine


def test_sync_and_check_on_storage_that_is_there(backend: Backend) -> None:
    put_bytes(backend.storage, "s/one", b"1")
    backend.storage.sync("s/one")
    backend.storage.check()


def test_check_fails_when_the_storage_itself_is_missing(persistent_backend: Backend, tmp_path: Path) -> None:
    """A missing root / bucket is a StorageError, never "not found" (wal-fetch relies on it)."""
    if persistent_backend.name == "local":
        url = f"file://{tmp_path}/not-mounted"
    else:
        url = f"s3://p88-missing-{uuid.uuid4().hex[:12]}/prefix"
    gone = open_storage(url, retry_deadline=5)
    try:
        with pytest.raises(StorageError) as err:
            gone.check()
        assert not isinstance(err.value, ObjectNotFoundError)
    finally:
        gone.close()


def test_storage_never_initialised_refuses_every_operation_and_stores_nothing(blank: Backend) -> None:
    """An empty mount point or a wrong prefix looks exactly like this: never an empty archive."""
    s = blank.storage
    ops = {
        "check": lambda: s.check(),
        "put": lambda: put_bytes(s, "wal/00000001/x", b"x"),
        "put create-only": lambda: put_bytes(s, "wal/00000001/x", b"x", overwrite=False),
        "open": lambda: s.open("wal/00000001/x"),
        "stat": lambda: s.stat("wal/00000001/x"),
        "list": lambda: list(s.list("")),
        "list prefix": lambda: list(s.list("dumps/")),
        "sync": lambda: s.sync("wal/00000001/x"),
        "delete": lambda: s.delete("wal/00000001/x"),
        "delete_many": lambda: s.delete_many(["wal/00000001/x"]),
        "reap_interrupted": lambda: s.reap_interrupted(0),
    }
    for name, op in ops.items():
        with pytest.raises(StorageNotInitialisedError, match="not initialised") as err:
            op()
        assert "p88backup init" in (err.value.hint or ""), name
    # Nothing landed: init finds the storage empty.
    assert initialise(open_storage(blank.url, retry_deadline=10)).outcome == "initialised"
    assert [o.key for o in s.list("")] == [STORAGE_MARKER]


def test_init_marks_once_and_is_a_no_op_after(blank: Backend) -> None:
    first = initialise(blank.storage)
    assert first.outcome == "initialised"
    assert first.marker is not None and first.marker["format_version"] == 1
    assert first.marker["created_by"].startswith("p88backup ")
    blank.storage.check()
    put_bytes(blank.storage, "dumps/a", b"a")
    again = initialise(open_storage(blank.url, retry_deadline=10))  # another process, later
    assert again.outcome == "already" and again.marker == first.marker
    assert get_bytes(blank.storage, "dumps/a") == b"a"


def test_init_adopts_a_storage_written_before_markers(backend: Backend) -> None:
    put_bytes(backend.storage, "dumps/20261127T021500Z/manifest.json", b"{}")
    backend.storage.delete(STORAGE_MARKER)  # what a p88backup from before markers left
    older = open_storage(backend.url, retry_deadline=10)
    with pytest.raises(StorageNotInitialisedError):
        older.check()
    assert initialise(older).outcome == "adopted"
    older.check()
    assert get_bytes(older, "dumps/20261127T021500Z/manifest.json") == b"{}"
    assert read_marker(older) is not None


def test_a_missing_root_or_bucket_is_never_created_except_by_init(persistent_backend: Backend, tmp_path: Path) -> None:
    """A put into a volume that is not mounted must fail, not create the root on the wrong filesystem."""
    local = persistent_backend.name == "local"
    url = f"file://{tmp_path}/mnt/not-mounted" if local else f"s3://p88-missing-{uuid.uuid4().hex[:12]}/prefix"
    gone = open_storage(url, retry_deadline=5)
    try:
        for op in (lambda: put_bytes(gone, "wal/00000001/x", b"x"), lambda: gone.stat("wal/00000001/x")):
            with pytest.raises(StorageError, match="does not exist") as err:
                op()
            assert not isinstance(err.value, ObjectNotFoundError | StorageNotInitialisedError)
        if local:
            assert not (tmp_path / "mnt").exists()
            assert initialise(gone).outcome == "initialised"  # the one place a root is made
            assert (tmp_path / "mnt" / "not-mounted" / STORAGE_MARKER).is_file()
            put_bytes(gone, "wal/00000001/x", b"x")
        else:
            with pytest.raises(StorageError, match="bucket does not exist"):
                initialise(gone)  # a bucket is never created: it must exist
    finally:
        gone.close()


def test_list_is_sorted_prefix_filtered_and_empty_for_missing_prefix(backend: Backend) -> None:
    s = backend.storage
    for key in ["x/2", "x/10", "x/1/deep", "xy/1", "y/1"]:
        put_bytes(s, key, key.encode())
    assert [o.key for o in s.list("x/")] == ["x/1/deep", "x/10", "x/2"]
    assert [o.key for o in s.list("x")] == ["x/1/deep", "x/10", "x/2", "xy/1"]
    assert [o.size for o in s.list("y/")] == [3]
    assert list(s.list("missing/")) == []
    assert list(s.list("missing/deeper/")) == []
    assert [o.key for o in s.list("")] == sorted(["x/2", "x/10", "x/1/deep", "xy/1", "y/1", STORAGE_MARKER])


def test_delete_and_delete_many(backend: Backend) -> None:
    s = backend.storage
    for i in range(5):
        put_bytes(s, f"d/{i}", b"x")
    s.delete("d/0")
    s.delete_many(["d/1", "d/2", "d/not-there"])
    assert [o.key for o in s.list("d/")] == ["d/3", "d/4"]


def test_create_only_refuses_to_replace(backend: Backend) -> None:
    s = backend.storage
    put_bytes(s, "wal/000000010000000000000001", b"original", overwrite=False)
    with pytest.raises(ObjectExistsError):
        put_bytes(s, "wal/000000010000000000000001", b"different", overwrite=False)
    assert get_bytes(s, "wal/000000010000000000000001") == b"original"


def test_create_only_refuses_to_replace_large_object(backend: Backend) -> None:
    s = backend.storage
    big = os.urandom(20 << 20)  # several multipart parts on S3
    s.put("big", io.BytesIO(big), overwrite=False)
    with pytest.raises(ObjectExistsError):
        s.put("big", io.BytesIO(b"y" * (20 << 20)), overwrite=False)
    assert get_bytes(s, "big") == big


class FailingSource:
    def __init__(self, fail_after: int) -> None:
        self.sent, self.fail_after = 0, fail_after

    def read(self, n: int = -1) -> bytes:
        if self.sent >= self.fail_after:
            raise RuntimeError("source broke")
        self.sent += 1 << 20
        return b"z" * (1 << 20)


@pytest.mark.parametrize("fail_after_mib", [1, 30])
def test_failed_source_leaves_nothing(backend: Backend, fail_after_mib: int) -> None:
    s = backend.storage
    with pytest.raises(RuntimeError, match="source broke"):
        s.put("partial/obj", FailingSource(fail_after_mib << 20))
    assert list(s.list("partial/")) == []
    with pytest.raises(ObjectNotFoundError):
        s.stat("partial/obj")


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "../up", "a/../b", "a/./b", "sp ace", ".p88tmp/x"])
def test_invalid_keys_rejected(backend: Backend, key: str) -> None:
    with pytest.raises(StorageError):
        put_bytes(backend.storage, key, b"x")


@pytest.mark.slow
def test_300mb_streamed_in_bounded_memory(persistent_backend: Backend) -> None:
    backend = persistent_backend
    p = probe(backend, "put", "big/300m", "300")
    out, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    put = json.loads(out)
    g = probe(backend, "get", "big/300m")
    out, err = g.communicate(timeout=600)
    assert g.returncode == 0, err
    got = json.loads(out)
    assert got["sha256"] == put["sha256"] and got["size"] == put["size"] == 300 << 20
    print(f"\n{backend.name}: put peak RSS {put['peak_rss_mib']} MiB, get peak RSS {got['peak_rss_mib']} MiB")
    assert put["peak_rss_mib"] < 150, put
    assert got["peak_rss_mib"] < 150, got


@pytest.mark.slow
@pytest.mark.parametrize("overwrite", [True, False])
def test_killed_mid_put_leaves_nothing_visible(persistent_backend: Backend, overwrite: bool) -> None:
    backend = persistent_backend
    args = ["put", "killed/obj", "200", "--slow"] + ([] if overwrite else ["--create-only"])
    p = probe(backend, *args)
    assert p.stderr is not None
    assert p.stderr.readline().strip() == "started"
    time.sleep(1.5)  # well into the upload (several S3 parts in flight)
    p.send_signal(signal.SIGKILL)
    p.wait(30)
    assert list(backend.storage.list("killed/")) == []
    with pytest.raises(ObjectNotFoundError):
        backend.storage.stat("killed/obj")
    # the name is still free for a later, complete put
    put_bytes(backend.storage, "killed/obj", b"complete", overwrite=False)
    assert get_bytes(backend.storage, "killed/obj") == b"complete"
