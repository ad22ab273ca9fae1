"""Timeline history files that an older p88backup stored encrypted, made readable without the key
by the runbook's procedure (docs/BU_recovery.md §10, "History files stored encrypted by an older
p88backup"), run as it is written there: the shell the runbook pipes into the sidecar image, with
this test's storage root and key file.

Before: a key-less host (the sidecar) cannot follow timelines (wal-verify exit 12, expire keeps
everything), and wal-push of the decrypted file cannot repair it (the name is found in its
encrypted form, content identical: "already archived", nothing stored). After: the same bytes under
the unencrypted name, the encrypted object gone, and every reader, with or without the key, reads
the same history.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pyrage

from p88backup.errors import ExitCode
from tests.harness.deploy import RUNBOOK
from tests.harness.helpers import cli_env, init_storage, run_cli

HISTORY_2 = "1\t0/3000090\tno recovery target specified\n"
HISTORY_3 = "1\t0/3000090\tno recovery target specified\n2\t0/5000000\tbefore 2026-11-27 14:04:00+01\n"


def runbook_script() -> str:
    """The body of the runbook's heredoc that converts the history files of a file:// storage."""
    text = RUNBOOK.read_text()
    section = text.split("### History files stored encrypted by an older p88backup", 1)[1]
    m = re.search(r"--entrypoint sh backup -s <<'EOF'\n(.*?)\nEOF\n", section, re.S)
    assert m, "the runbook's conversion script is not where the test looks for it"
    return m.group(1)


def convert(store: Path, key: Path) -> subprocess.CompletedProcess[str]:
    script = runbook_script()
    assert "STORE=/var/backups/p88\n" in script and "KEY=/run/secrets/p88backup.age\n" in script
    script = script.replace("STORE=/var/backups/p88\n", f"STORE={store}\n")
    script = script.replace("KEY=/run/secrets/p88backup.age\n", f"KEY={key}\n")
    return subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True, timeout=60, check=False)


def store_as_older_p88backup(store: Path, name: str, text: str, recipient: str) -> Path:
    """``wal/<tli>/<name>.zst.age`` and its digest record, as wal-push stored history files before
    e5f2281: zstd, then age to the configured recipient."""
    import hashlib

    folder = store / "wal" / name[:8]
    folder.mkdir(parents=True, exist_ok=True)
    raw = text.encode()
    compressed = subprocess.run(["zstd", "-q", "-c"], input=raw, capture_output=True, check=True, timeout=30).stdout
    encrypted = subprocess.run(
        ["age", "-r", recipient], input=compressed, capture_output=True, check=True, timeout=30
    ).stdout
    path = folder / f"{name}.zst.age"
    path.write_bytes(encrypted)
    digest = {"name": name, "sha256": hashlib.sha256(raw).hexdigest(), "size": len(raw)}
    (folder / f"{name}.digest.json").write_text(json.dumps(digest) + "\n")
    return path


def test_encrypted_history_files_are_stored_unencrypted_by_the_runbooks_procedure(tmp_path: Path) -> None:
    identity = pyrage.x25519.Identity.generate()
    key = tmp_path / "p88backup.age"
    key.write_text(f"{identity}\n")
    store = tmp_path / "store"
    # the sidecar: encryption on, no private key
    sidecar = cli_env(tmp_path, P88_STORAGE_URL=f"file://{store}", P88_AGE_RECIPIENTS=str(identity.to_public()))
    with_key = sidecar | {"P88_AGE_IDENTITY_FILE": str(key)}
    init_storage(sidecar)
    old = store_as_older_p88backup(store, "00000002.history", HISTORY_2, str(identity.to_public()))
    # a history file the current p88backup stored (unencrypted): the procedure leaves it alone
    (tmp_path / "00000003.history").write_text(HISTORY_3)
    assert run_cli(["wal-push", str(tmp_path / "00000003.history")], sidecar).returncode == 0
    plain_3 = store / "wal" / "00000003" / "00000003.history.zst"
    before_3 = plain_3.read_bytes()

    # the problem: the key-less sidecar cannot follow timelines
    r = run_cli(["wal-verify", "--json"], sidecar)
    assert r.returncode == ExitCode.CRYPTO, r.stdout + r.stderr
    assert "timeline histories unreadable" in run_cli(["expire", "--dry-run"], sidecar).stderr
    # and wal-push of the decrypted file does not repair it: "already archived", nothing new stored
    fetched = tmp_path / "fetched" / "00000002.history"
    fetched.parent.mkdir()
    assert run_cli(["wal-fetch", "00000002.history", str(fetched)], with_key).returncode == 0
    assert fetched.read_text() == HISTORY_2
    assert run_cli(["wal-push", str(fetched)], with_key).returncode == 0
    assert sorted(p.name for p in old.parent.iterdir()) == ["00000002.history.digest.json", "00000002.history.zst.age"]

    r = convert(store, key)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"stored unencrypted: {old.with_suffix('')}"
    assert sorted(p.name for p in old.parent.iterdir()) == ["00000002.history.digest.json", "00000002.history.zst"]
    assert plain_3.read_bytes() == before_3 and not list(store.rglob("*.tmp"))
    # readable without any key, the same content for every reader
    out = subprocess.run(
        ["zstd", "-q", "-d", "-c", str(old.with_suffix(""))], capture_output=True, check=True, timeout=30
    )
    assert out.stdout.decode() == HISTORY_2

    r = run_cli(["wal-verify", "--json"], sidecar)
    assert r.returncode == 0, r.stdout + r.stderr
    timelines = {t["timeline"]: t["parent"] for t in json.loads(r.stdout)["timelines"]}
    assert timelines == {2: 1, 3: 2}
    expire = run_cli(["expire", "--dry-run"], sidecar)
    assert expire.returncode == 0 and "unreadable" not in expire.stderr, expire.stderr
    for env in (sidecar, with_key):
        dest = tmp_path / "again" / "00000002.history"
        dest.unlink(missing_ok=True)
        dest.parent.mkdir(exist_ok=True)
        assert run_cli(["wal-fetch", "00000002.history", str(dest)], env).returncode == 0
        assert dest.read_text() == HISTORY_2
    # PostgreSQL or wal-stream pushing it again: identical, nothing encrypted comes back
    assert run_cli(["wal-push", str(fetched)], sidecar).returncode == 0
    assert not list(store.rglob("*.history.zst.age"))
    r = run_cli(["keys", "--check", "--json"], with_key)
    assert r.returncode == 0, r.stdout + r.stderr
    keys = json.loads(r.stdout)
    assert keys["check"]["cannot_open"] == [] and keys["wal"]["history_files"] == []

    # run twice, nothing to do
    again = convert(store, key)
    assert again.returncode == 0 and again.stdout == "", again.stderr
