"""Rotating the age key as the runbook says (issue 13): key A, then A and B (new backups readable
with either), then B only; ``p88backup keys`` names what still needs A (dumps, base backups and
WAL, which has no manifest), a restore of an A-only dump fails with B alone (exit 12) and works
with A, and once expire has removed what needed A, A may go."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import pyrage
import pytest

from p88backup.errors import ExitCode
from tests.harness.archiving import Archived, make_archived
from tests.harness.helpers import json_out, ok, run_cli
from tests.harness.postgres import PgCluster


def identity(tmp: Path, name: str) -> tuple[str, Path]:
    key = pyrage.x25519.Identity.generate()
    path = tmp / f"{name}.key"
    path.write_text(f"# {name}\n{key}\n")
    return str(key.to_public()), path


def recipients(arch: Archived, *keys: str) -> None:
    """What every p88backup run, archive_command's wal-push included, encrypts to from now on:
    the config file, read afresh by each run (as a recreated sidecar reads its env)."""
    base = re.sub(r"(?m)^age_recipients = .*\n", "", arch.config.read_text())
    arch.config.write_text(base + "age_recipients = [" + ", ".join(f'"{k}"' for k in keys) + "]\n")


def keys(arch: Archived, *args: str, key: Path | None = None) -> tuple[int, dict]:  # type: ignore[type-arg]
    import json

    env = arch.env | ({"P88_AGE_IDENTITY_FILE": str(key)} if key else {})
    r = run_cli(["keys", "--json", *args], env)
    assert r.stdout, r.stderr
    return r.returncode, json.loads(r.stdout)


def use(report: dict, key: str) -> dict:  # type: ignore[type-arg]
    return next(k for k in report["keys"] if k["key"] == key)


@pytest.mark.timeout(400)
def test_rotate_a_to_b_and_retire_a(pg_factory: Callable[..., PgCluster], tmp_path: Path) -> None:
    a_pub, a_key = identity(tmp_path, "a")
    b_pub, b_key = identity(tmp_path, "b")
    arch = make_archived(pg_factory, tmp_path, f"file://{tmp_path}/store", "push")
    pg = arch.pg
    pg.sql("CREATE TABLE t (id int, era text)")

    # -- era A --------------------------------------------------------------------------------
    recipients(arch, a_pub)
    pg.sql("INSERT INTO t SELECT g, 'A' FROM generate_series(1, 1000) g")
    dump_a = json_out(arch.cli("dump", "--json"))["id"]
    base_a = json_out(arch.cli("basebackup", "--json", "--wal-timeout", "120"))["id"]
    pg.sql("INSERT INTO t SELECT g, 'A' FROM generate_series(1001, 2000) g")
    arch.switch_and_wait()
    a_wal = sorted(p.name for p in (tmp_path / "store" / "wal" / "00000001").glob("*.zst.age"))
    assert a_wal, "nothing archived in era A"

    # -- overlap: A and B ---------------------------------------------------------------------
    recipients(arch, a_pub, b_pub)
    dump_ab = json_out(arch.cli("dump", "--json"))["id"]
    pg.sql("INSERT INTO t SELECT g, 'AB' FROM generate_series(2001, 3000) g")
    arch.switch_and_wait()

    # -- B only -------------------------------------------------------------------------------
    recipients(arch, b_pub)
    dump_b = json_out(arch.cli("dump", "--json"))["id"]
    base_b = json_out(arch.cli("basebackup", "--json", "--wal-timeout", "120"))["id"]
    pg.sql("INSERT INTO t SELECT g, 'B' FROM generate_series(3001, 4000) g")
    arch.switch_and_wait()

    # Which backups still need A? (no private key needed for this answer)
    code, report = keys(arch)
    assert code == 0, report
    assert report["configured"] == [b_pub]
    a = use(report, a_pub)
    assert a["configured"] is False and a["needed"] is True
    assert a["only_retired_keys"] == [f"dump {dump_a}", f"basebackup {base_a}"]
    assert f"dump {dump_ab}" in a["backups"]  # listed, but B opens it too
    assert set(a_wal) <= {f"{n}.zst.age" for n in report["wal"]["maybe_retired_keys_only"]}
    b = use(report, b_pub)
    assert b["configured"] is True and b["needed"] is True

    # The exact check where only B is: everything A-only is named, the overlap dump is not.
    code, report = keys(arch, "--check", key=b_key)
    assert code == ExitCode.CRYPTO
    closed = report["check"]["cannot_open"]
    assert any(k.startswith(f"dumps/{dump_a}/") for k in closed)
    assert any(k.startswith(f"basebackups/{base_a}/") for k in closed)
    assert {f"wal/00000001/{n}" for n in a_wal} <= set(closed)
    assert not any(k.startswith((f"dumps/{dump_ab}/", f"dumps/{dump_b}/", f"basebackups/{base_b}/")) for k in closed)

    # A restore of the era-A dump: B alone cannot, A can.
    only_b = arch.env | {"P88_AGE_IDENTITY_FILE": str(b_key)}
    r = run_cli(["restore", "--dump", dump_a, "--target-db", "with_b"], only_b)
    assert r.returncode == ExitCode.CRYPTO, r.stderr
    assert not pg.sql("SELECT 1 FROM pg_database WHERE datname = 'with_b'")
    with_a = arch.env | {"P88_AGE_IDENTITY_FILE": str(a_key)}
    ok(run_cli(["restore", "--dump", dump_a, "--target-db", "with_a"], with_a))
    assert pg.scalar("SELECT count(*) FROM t", "with_a") == 1000
    ok(run_cli(["restore", "--dump", dump_ab, "--target-db", "overlap_with_b"], only_b))

    # Retention removes what needed A (dumps: the newest only; base backups: the newest only, and
    # the WAL before it); then A is no longer needed, and B opens everything stored.
    retention = {
        "P88_RETENTION__KEEP_DAILY": "1",
        "P88_RETENTION__KEEP_WEEKLY": "0",
        "P88_RETENTION__KEEP_MONTHLY": "0",
        "P88_RETENTION__KEEP_BASE_BACKUPS": "1",
    }
    ok(run_cli(["expire"], arch.env | retention))
    code, report = keys(arch, "--key", a_pub)  # A is in no manifest any more: ask about it by name
    assert code == 0
    a = use(report, a_pub)
    assert a["needed"] is False, a
    assert a["backups"] == [] and report["wal"]["maybe_retired_keys_only"] == []
    code, report = keys(arch, "--check", key=b_key)
    assert code == 0 and report["check"]["cannot_open"] == [] and report["check"]["objects"] > 0, report
    ok(run_cli(["verify", "--full", dump_b], only_b))
