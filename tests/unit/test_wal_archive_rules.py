"""WalArchive on the memory backend: encrypted archives decide identical/different without the
private key (digest records, written before the file), and WAL segment sizes other than 16 MB
are learned, never assumed (issue 10 items 6 and 8)."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pyrage
import pytest

from p88backup.catalog.backups import Catalog
from p88backup.catalog.layout import wal_digest_key, wal_key
from p88backup.core.wal import names as walnames
from p88backup.core.wal.archive import DigestRecord, WalArchive
from p88backup.core.wal.verify import verify_wal
from p88backup.errors import ConflictError, CryptoError, ObjectNotFoundError
from p88backup.storage.memory import MemoryStorage
from p88backup.stream import encode, make_codec
from tests.harness.helpers import fake_basebackup_manifest, initialised
from tests.harness.helpers import wal_header as header

MB = 1024 * 1024
NAME = "000000010000000000000003"


def segment(path: Path, segno: int, size: int = 16 * MB, fill: bytes = b"\0") -> Path:
    head = header(segno, size=size)
    path.write_bytes(head + fill * (size - len(head)))
    return path


@pytest.fixture
def storage() -> MemoryStorage:
    return initialised(MemoryStorage(uuid.uuid4().hex))


@pytest.fixture
def identity(tmp_path: Path) -> tuple[str, Path]:
    """(public key, identity file)"""
    key = pyrage.x25519.Identity.generate()
    path = tmp_path / "backup.key"
    path.write_text(str(key) + "\n")
    return str(key.to_public()), path


# -- item 6: encrypted, with the private key off the server --------------------------


def test_an_identical_encrypted_repush_succeeds_without_the_private_key(
    storage: MemoryStorage, identity: tuple[str, Path], tmp_path: Path
) -> None:
    recipient, _ = identity
    server = WalArchive(storage, make_codec(threads=1, recipients=[recipient]))  # no identity, as recommended
    seg = segment(tmp_path / NAME, 3)
    first = server.push(seg)
    assert not first.already_archived and first.key.endswith(".zst.age")
    assert server.digest_record(NAME) is not None
    again = server.push(seg)  # PostgreSQL retrying after a crash or a lost PUT response
    assert again.already_archived
    stored = storage.open(first.key).read()

    seg.write_bytes(seg.read_bytes()[:-1] + b"\1")  # different content, same name
    with pytest.raises(ConflictError, match="already archived with different content"):
        server.push(seg)
    assert storage.open(first.key).read() == stored


def test_a_push_that_died_after_its_claim_completes_when_retried(
    storage: MemoryStorage, identity: tuple[str, Path], tmp_path: Path
) -> None:
    recipient, key_file = identity
    seg = segment(tmp_path / NAME, 3)
    died = WalArchive(storage, make_codec(threads=1, recipients=[recipient]))
    # Step 2 done, killed before step 3: a record, no file.
    died._claim(DigestRecord(NAME, walnames_sha(seg), seg.stat().st_size))
    result = WalArchive(storage, make_codec(threads=1, recipients=[recipient])).push(seg)
    assert not result.already_archived
    restored = tmp_path / "restored"
    WalArchive(storage, make_codec(identity_file=key_file)).fetch(NAME, restored)
    assert restored.read_bytes() == seg.read_bytes()


def test_other_content_never_gets_past_a_claim(
    storage: MemoryStorage, identity: tuple[str, Path], tmp_path: Path
) -> None:
    recipient, _ = identity
    archive = WalArchive(storage, make_codec(threads=1, recipients=[recipient]))
    other = DigestRecord(NAME, "ab" * 32, 16 * MB)  # another cluster's push died after its claim
    storage.put(wal_digest_key(NAME), io.BytesIO(other.to_bytes()), overwrite=False)
    with pytest.raises(ConflictError, match="other content has claimed this name"):
        archive.push(segment(tmp_path / NAME, 3))
    assert archive.find(NAME) is None


def test_an_encrypted_file_archived_before_digest_records(
    storage: MemoryStorage, identity: tuple[str, Path], tmp_path: Path
) -> None:
    recipient, key_file = identity
    seg = segment(tmp_path / NAME, 3)
    # As the previous version stored it: the encrypted file alone.
    storage.put(wal_key(NAME, ".zst.age"), encode(io.BytesIO(seg.read_bytes()), make_codec(recipients=[recipient])))
    without_key = WalArchive(storage, make_codec(threads=1, recipients=[recipient]))
    with pytest.raises(CryptoError, match="without a digest record") as err:
        without_key.push(seg)
    assert err.value.hint and "age_identity_file" in err.value.hint
    with_key = WalArchive(storage, make_codec(threads=1, recipients=[recipient], identity_file=key_file))
    assert with_key.push(seg).already_archived
    assert without_key.digest_record(NAME) == DigestRecord(NAME, walnames_sha(seg), seg.stat().st_size)
    assert without_key.push(seg).already_archived  # from now on the key is not needed


def test_unencrypted_archives_have_no_digest_records(storage: MemoryStorage, tmp_path: Path) -> None:
    archive = WalArchive(storage, make_codec(threads=1))
    seg = segment(tmp_path / NAME, 3)
    archive.push(seg)
    assert archive.push(seg).already_archived
    assert [o.key for o in storage.list("wal/")] == [wal_key(NAME, ".zst")]


def walnames_sha(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- item 8: the segment size is learned ---------------------------------------------

ONE_MB_NAME = "000000010000000000000100"  # segment 256: exists with 1 MB segments, not with 16 MB ones


def test_push_and_fetch_with_1mb_segments(storage: MemoryStorage, tmp_path: Path) -> None:
    archive = WalArchive(storage, make_codec(threads=1))
    seg = segment(tmp_path / ONE_MB_NAME, 0x100, MB, b"\7")
    assert archive.push(seg).key == wal_key(ONE_MB_NAME, ".zst")
    assert archive.fetch(ONE_MB_NAME, tmp_path / "back") == MB
    assert (tmp_path / "back").read_bytes() == seg.read_bytes()
    with pytest.raises(ObjectNotFoundError):  # simply absent: "not found", exit 1 for restore_command
        archive.fetch("000000010000000000000101", tmp_path / "x")
    assert [n for n, _ in archive.objects()] == [ONE_MB_NAME]


def test_wal_verify_without_base_backups_reads_the_size_from_the_archive(
    storage: MemoryStorage, tmp_path: Path
) -> None:
    archive = WalArchive(storage, make_codec(threads=1))
    for segno in (0xFE, 0xFF, 0x100, 0x101):
        name = walnames.segment_name(1, segno, MB)
        archive.push(segment(tmp_path / name, segno, MB))
    report = verify_wal(Catalog(storage), archive)
    assert report.ok and report.segment_size == MB and report.newest_segment == "000000010000000000000101"
    assert archive.segment_size() == MB


def test_wal_verify_without_base_backups_and_without_the_private_key(
    storage: MemoryStorage, identity: tuple[str, Path], tmp_path: Path
) -> None:
    recipient, _ = identity
    archive = WalArchive(storage, make_codec(threads=1, recipients=[recipient]))
    archive.push(segment(tmp_path / ONE_MB_NAME, 0x100, MB))
    assert archive.segment_size() == MB  # from the digest record


def test_wal_verify_uses_the_segment_size_of_each_base_backup(storage: MemoryStorage) -> None:
    """64 MB segments: ...003F is followed by ...000100000000; with 16 MB names that is a gap."""
    size = 64 * MB
    names = [walnames.segment_name(1, segno, size) for segno in range(0x3E, 0x43)]
    assert names[1:3] == ["00000001000000000000003F", "000000010000000100000000"]
    for name in names:
        storage.put(wal_key(name, ".zst"), io.BytesIO(b"not read"))
    when = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    start = walnames.segment_start_lsn(0x3E, size)
    manifest = fake_basebackup_manifest(
        "20261127T020000Z",
        when,
        names[0],
        start_lsn=walnames.format_lsn(start + 0x28),
        stop_lsn=walnames.format_lsn(start + 0x1000),
        segment_size=size,
    )
    storage.put(manifest.files[0].key, io.BytesIO(b"x"))
    Catalog(storage).write(manifest)
    report = verify_wal(Catalog(storage), WalArchive(storage, make_codec()))
    assert report.chains[0].ok and report.gaps == [] and report.segment_size == size, report.as_dict()


class CommitsChecked(MemoryStorage):
    """Records, at the moment each put commits, whether the file's digest record was there."""

    def __init__(self) -> None:
        super().__init__(uuid.uuid4().hex)
        initialised(self)
        self.record_there_at_commit: list[bool] = []

    def put(self, key: str, data: object, *, overwrite: bool = True) -> object:
        if key.endswith(".zst.age"):
            body = io.BytesIO(b"".join(iter(lambda: data.read(1 << 20), b"")))  # type: ignore[attr-defined]
            self.record_there_at_commit.append(self.digest_there(key))
            data = body
        return super().put(key, data, overwrite=overwrite)  # type: ignore[arg-type]

    def digest_there(self, key: str) -> bool:
        name = key.rsplit("/", 1)[1].removesuffix(".zst.age")
        return any(o.key == wal_digest_key(name) for o in self.list("wal/"))


def test_the_file_is_never_stored_before_its_digest_record(identity: tuple[str, Path], tmp_path: Path) -> None:
    recipient, _ = identity
    storage = CommitsChecked()
    archive = WalArchive(storage, make_codec(threads=1, recipients=[recipient]))
    for segno in (3, 4, 5):
        name = walnames.segment_name(1, segno)
        archive.push(segment(tmp_path / name, segno))
    assert storage.record_there_at_commit == [True, True, True]


# -- issue 10 item 11: a valid history file whose switchpoints go backwards ---------------


def test_a_history_file_whose_switchpoints_go_backwards_is_archived_and_restored(
    storage: MemoryStorage, tmp_path: Path
) -> None:
    # As PostgreSQL wrote it when a recovery following timeline 2 stopped at a restore point
    # before timeline 2 began; the next recovery from the archive must be able to fetch it.
    text = '1\t0/3018CB0\tno recovery target specified\n\n2\t0/3018C48\tat restore point "rp"\n'
    history = tmp_path / "00000003.history"
    history.write_text(text)
    archive = WalArchive(storage, make_codec(threads=1))
    archive.push(history)
    dest = tmp_path / "fetched"
    archive.fetch("00000003.history", dest)
    assert dest.read_text() == text
    assert archive.histories()[3][-1].parent_timeline == 2


def test_history_files_are_stored_unencrypted_so_hosts_without_the_key_can_follow_timelines(
    storage: MemoryStorage, identity: tuple[str, Path], tmp_path: Path
) -> None:
    # The sidecar has only the public key: after a PITR became production, wal-verify and expire
    # there must still read 00000002.history (before: exit 12, and expire deleted nothing).
    recipient, key_file = identity
    server = WalArchive(storage, make_codec(threads=1, recipients=[recipient]))
    history = tmp_path / "00000002.history"
    history.write_text("1\t0/3000090\tno recovery target specified\n")
    pushed = server.push(history)
    assert pushed.key == wal_key("00000002.history", ".zst")
    assert server.push(history).already_archived  # identical re-push, no key needed
    assert WalArchive(storage, make_codec(threads=1)).histories()[2][0].parent_timeline == 1
    segment(tmp_path / NAME, 3)
    assert server.push(tmp_path / NAME).key.endswith(".zst.age")  # WAL itself stays encrypted
    # The restore side (with the identity) fetches it like any file.
    dest = tmp_path / "fetched.history"
    WalArchive(storage, make_codec(threads=1, identity_file=key_file)).fetch("00000002.history", dest)
    assert dest.read_text() == history.read_text()


def test_wal_verify_sees_a_base_backup_whose_own_wal_is_missing(storage: MemoryStorage) -> None:
    # The archive ends inside the backup's own range: past the newest file the gap check sees nothing,
    # but this backup cannot be restored at all.
    when = datetime(2026, 11, 27, 2, 0, tzinfo=UTC)
    manifest = fake_basebackup_manifest("20261127T020000Z", when, NAME, stop_lsn="0/5000100")
    Catalog(storage).write(manifest)
    storage.put(wal_key(NAME, ".zst"), io.BytesIO(b"x"))  # ...03 only; 04 and 05 are missing
    report = verify_wal(Catalog(storage), WalArchive(storage, make_codec(threads=1)))
    assert not report.ok
    assert report.chains[0].gaps == [("000000010000000000000004", "000000010000000000000005")]


def test_an_object_gone_between_head_and_get_is_not_not_found(tmp_path: Path) -> None:
    # S3 opens with HEAD and GETs on the first read: a NoSuchKey there must not make wal-fetch say
    # "not in the archive" (exit 1: PostgreSQL would end recovery), but fail (126).
    import botocore.exceptions as bce

    from p88backup.errors import restore_command_status
    from p88backup.storage.s3 import S3Storage

    class Gone:
        def head_object(self, Bucket: str, Key: str) -> dict[str, object]:
            if Key.endswith(".age"):
                raise bce.ClientError({"Error": {"Code": "404"}, "ResponseMetadata": {"HTTPStatusCode": 404}}, "Head")
            return {"ContentLength": 100, "ETag": '"e"', "LastModified": None}

        def get_object(self, Bucket: str, Key: str, **kw: object) -> dict[str, object]:
            error = {"Error": {"Code": "NoSuchKey"}, "ResponseMetadata": {"HTTPStatusCode": 404}}
            raise bce.ClientError(error, "GetObject")  # type: ignore[arg-type]

    s3 = S3Storage("b", "p", client=Gone())  # type: ignore[arg-type]
    s3._initialised = True  # type: ignore[attr-defined]  # the marker check is not what this test is about
    with pytest.raises(Exception) as err:
        WalArchive(s3, make_codec(threads=1)).fetch(NAME, tmp_path / "x")
    assert restore_command_status(err.value) == 126 and "vanished while being fetched" in str(err.value)
