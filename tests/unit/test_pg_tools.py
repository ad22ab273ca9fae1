"""Choosing PostgreSQL programs from one or several bin directories (``pg_bin_dir``).

Fake programs answer ``--version`` like the real ones, so these tables need no PostgreSQL.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p88backup.errors import PgToolError
from p88backup.pg import tools
from p88backup.settings import Settings, load_settings

VERSIONS = {"old": "15.14", "prod": "16.14", "new": "18.4"}


def fake_install(root: Path, name: str, version: str, programs: tuple[str, ...]) -> Path:
    bin_dir = root / name / "bin"
    bin_dir.mkdir(parents=True)
    for prog in programs:
        p = bin_dir / prog
        p.write_text(f'#!/bin/sh\necho "{prog} (PostgreSQL) {version}"\n')
        p.chmod(0o755)
    return bin_dir


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {
        "old": fake_install(tmp_path, "old", VERSIONS["old"], ("pg_dump", "pg_ctl")),
        "prod": fake_install(tmp_path, "prod", VERSIONS["prod"], ("pg_dump", "pg_ctl")),
        # a client-only install: pg_dump 18, no server programs
        "new": fake_install(tmp_path, "new", VERSIONS["new"], ("pg_dump",)),
    }


def search_path(dirs: dict[str, Path], *names: str) -> Path:
    return Path(":".join(str(dirs[n]) for n in names))


# (search path, program, server major) -> major of the program chosen
CLIENT_TABLE = [
    (("prod",), "pg_dump", 16, 16),
    (("new",), "pg_dump", 16, 18),  # newer client for an older server
    (("old", "prod", "new"), "pg_dump", 16, 16),  # the exact major wins over newer ones
    (("old", "prod", "new"), "pg_dump", 15, 15),
    (("old", "new"), "pg_dump", 16, 18),  # the oldest newer one when the exact major is missing
    (("new", "old"), "pg_dump", 17, 18),
]


@pytest.mark.parametrize(("names", "program", "server", "expected"), CLIENT_TABLE)
def test_client_for_searches_every_directory(
    dirs: dict[str, Path], names: tuple[str, ...], program: str, server: int, expected: int
) -> None:
    tool = tools.client_for(program, server, search_path(dirs, *names))
    assert tool.major == expected
    assert tool.path.parent in [dirs[n] for n in names]


SERVER_TABLE = [
    (("prod",), 16, 16),
    (("new", "prod"), 16, 16),  # pg_dump 18 first on the path, pg_ctl 16 found after it
    (("old", "prod"), 15, 15),
]


@pytest.mark.parametrize(("names", "major", "expected"), SERVER_TABLE)
def test_server_for_finds_the_exact_major_on_the_path(
    dirs: dict[str, Path], names: tuple[str, ...], major: int, expected: int
) -> None:
    assert tools.server_for("pg_ctl", major, search_path(dirs, *names)).major == expected


def test_pg_dump_18_and_pg_ctl_16_from_one_setting(dirs: dict[str, Path]) -> None:
    """The case one directory cannot express: the newest pg_dump, and server programs of the data's major."""
    setting = Path(f"{dirs['new']}:{dirs['prod']}")
    assert tools.client_for("pg_dump", 18, setting).path.parent == dirs["new"]
    assert tools.server_for("pg_ctl", 16, setting).path.parent == dirs["prod"]


def test_wrong_major_only_says_what_was_found(dirs: dict[str, Path]) -> None:
    with pytest.raises(PgToolError) as err:
        tools.server_for("pg_ctl", 16, dirs["old"])
    message = str(err.value)
    assert "pg_ctl of PostgreSQL 16 is needed" in message
    assert f"found in {dirs['old']}: 15 ({dirs['old'] / 'pg_ctl'})" in message
    with pytest.raises(PgToolError) as err:
        tools.client_for("pg_dump", 18, search_path(dirs, "old", "prod"))
    assert "pg_dump 18 or newer is needed" in str(err.value) and "16 (" in str(err.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, []),
        (Path("/opt/pg/bin"), [Path("/opt/pg/bin")]),
        (Path("/a/bin:/b/bin"), [Path("/a/bin"), Path("/b/bin")]),
        (Path("/a/bin::/b/bin:"), [Path("/a/bin"), Path("/b/bin")]),
    ],
)
def test_search_dirs_splits_like_path(value: Path | None, expected: list[Path]) -> None:
    assert tools.search_dirs(value) == expected


def test_settings_take_a_list_in_toml_and_a_path_list_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for k in [k for k in os.environ if k.startswith("P88_")]:
        monkeypatch.delenv(k)
    config = tmp_path / "p88backup.toml"
    config.write_text('pg_bin_dir = ["/opt/pg18/bin", "/opt/pg16/bin"]\n')
    from_file = load_settings(config)
    assert tools.search_dirs(from_file.pg_bin_dir) == [Path("/opt/pg18/bin"), Path("/opt/pg16/bin")]

    monkeypatch.setenv("P88_PG_BIN_DIR", "/x/bin:/y/bin")
    assert tools.search_dirs(Settings().pg_bin_dir) == [Path("/x/bin"), Path("/y/bin")]
