"""``verify`` where the age private key is not (issue 13: the nightly verify runs on the database
server, and the encryption policy keeps the key off it): the stored bytes are checked (size,
SHA-256, age structure) and the report says the decode + pg_restore check was not done; with the
key, or with ``--full``, the full check as before."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p88backup.agefile import CHUNK_SIZE, NONCE_SIZE
from p88backup.errors import ExitCode
from tests.harness.helpers import cli_env, init_storage, json_out, ok, run_cli
from tests.harness.postgres import PgCluster
from tests.integration.test_dump_fidelity import age_key


@dataclass
class Stored:
    env: dict[str, str]  # without the identity, as on the database server
    key: Path
    store: Path
    id: str

    @property
    def with_key(self) -> dict[str, str]:
        return self.env | {"P88_AGE_IDENTITY_FILE": str(self.key)}

    def object_path(self, suffix: str) -> Path:
        manifest = json.loads((self.store / "dumps" / self.id / "manifest.json").read_text())
        key = next(o["key"] for db in manifest["databases"] for o in db["objects"] if o["key"].endswith(suffix))
        return self.store / key


@pytest.fixture
def database(pg: PgCluster) -> Iterator[str]:
    name = f"verify_{uuid.uuid4().hex[:8]}"
    pg.sql(f"CREATE DATABASE {name}")
    # random text: stored larger than a few age chunks (64 KiB each), so cuts can land on a boundary
    pg.sql(
        "CREATE TABLE t AS SELECT g AS id, md5(random()::text) || md5(random()::text) AS v"
        " FROM generate_series(1, 20000) g",
        name,
    )
    yield name
    pg.sql(f"DROP DATABASE {name} WITH (FORCE)")


@pytest.fixture
def encrypted_dump(pg: PgCluster, database: str, tmp_path: Path) -> Stored:
    public, key = age_key(tmp_path)
    store = tmp_path / "store"
    env = cli_env(
        tmp_path, P88_DATABASE_URL=pg.url(database), P88_STORAGE_URL=f"file://{store}", P88_AGE_RECIPIENTS=public
    )
    init_storage(env)
    summary = json_out(run_cli(["dump", "--json"], env))
    assert summary["encrypted"] is True
    return Stored(env, key, store, summary["id"])


def verify(env: dict[str, str], *args: str) -> tuple[int, dict[str, object]]:
    r = run_cli(["verify", "latest", "--json", *args], env)
    return r.returncode, json.loads(r.stdout) if r.stdout else {"stderr": r.stderr}


def test_an_encrypted_dump_verifies_without_the_key_and_says_what_was_not_checked(encrypted_dump: Stored) -> None:
    """The old verify decoded everything: without the identity every object failed (exit 6,
    'no age identity is configured')."""
    code, report = verify(encrypted_dump.env)
    assert code == 0, report
    assert report["check"] == "stored"
    assert report["ok"] is True and len(report["objects"]) == 2  # type: ignore[arg-type]
    assert "pg_restore" in str(report["not_checked"]) and "drill host" in str(report["not_checked"])
    human = ok(run_cli(["verify", "latest"], encrypted_dump.env)).stdout
    assert "note: size, SHA-256 and age structure checked; decryption, zstd decoding and pg_restore" in human

    # where the key is: the full check, as before
    code, report = verify(encrypted_dump.with_key)
    assert code == 0 and report["check"] == "full" and report["not_checked"] is None, report


def test_full_without_the_key_exits_12_and_with_it_passes(encrypted_dump: Stored) -> None:
    r = run_cli(["verify", "--full", "latest"], encrypted_dump.env)
    assert r.returncode == ExitCode.CRYPTO, r.stderr
    assert "no age identity" in r.stderr and "drill host" in r.stderr
    assert r.stdout == ""  # nothing was read, nothing reported as checked
    code, report = verify(encrypted_dump.with_key, "--full")
    assert code == 0 and report["check"] == "full"


def test_a_flipped_byte_is_caught_without_the_key(encrypted_dump: Stored) -> None:
    path = encrypted_dump.object_path(".pgdump.zst.age")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the payload: the age structure is unchanged
    path.write_bytes(bytes(data))
    code, report = verify(encrypted_dump.env)
    assert code == ExitCode.VERIFY_FAILED
    bad = [o for o in report["objects"] if not o["ok"]]  # type: ignore[union-attr, index]
    assert len(bad) == 1 and "SHA-256 mismatch" in bad[0]["problem"], report


def test_a_truncated_object_is_caught_without_the_key(encrypted_dump: Stored) -> None:
    path = encrypted_dump.object_path(".pgdump.zst.age")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])
    code, report = verify(encrypted_dump.env)
    assert code == ExitCode.VERIFY_FAILED
    assert "recorded" in json.dumps(report)  # 'N bytes stored, M recorded'


def test_a_truncated_object_with_a_manifest_to_match_is_caught_by_its_structure(encrypted_dump: Stored) -> None:
    """A writer that recorded what it stored, but what it stored was cut: size and SHA-256 agree
    with the manifest, only the age structure shows the cut (here: 7 bytes into a chunk's tag)."""
    import hashlib

    path = encrypted_dump.object_path(".pgdump.zst.age")
    data = path.read_bytes()
    header = data.index(b"\n", data.index(b"\n--- ") + 1) + 1
    assert len(data) - header - NONCE_SIZE > 2 * CHUNK_SIZE, "the dump must span several age chunks"
    cut = data[: header + NONCE_SIZE + 2 * CHUNK_SIZE + 7]
    path.write_bytes(cut)
    manifest_path = encrypted_dump.store / "dumps" / encrypted_dump.id / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for db in manifest["databases"]:
        for obj in db["objects"]:
            if obj["key"].endswith(".pgdump.zst.age"):
                obj.update(size=len(cut), sha256=hashlib.sha256(cut).hexdigest())
    manifest_path.write_text(json.dumps(manifest))
    code, report = verify(encrypted_dump.env)
    assert code == ExitCode.VERIFY_FAILED, report
    bad = [o for o in report["objects"] if not o["ok"]]  # type: ignore[union-attr, index]
    assert len(bad) == 1 and "inside its tag" in bad[0]["problem"], bad
    # with the key the same cut fails in decryption (age reports the missing last chunk)
    code, _ = verify(encrypted_dump.with_key)
    assert code == ExitCode.VERIFY_FAILED


def test_an_unencrypted_dump_keeps_the_full_check_without_any_key(pg: PgCluster, database: str, tmp_path: Path) -> None:
    env = cli_env(tmp_path, P88_DATABASE_URL=pg.url(database), P88_STORAGE_URL=f"file://{tmp_path}/store")
    init_storage(env)
    ok(run_cli(["dump"], env))
    code, report = verify(env, "--full")
    assert code == 0 and report["check"] == "full" and report["not_checked"] is None, report
