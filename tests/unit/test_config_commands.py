"""Acceptance of issue 11 §1: a bad config file fails every command alike, the archive
commands included (exit 3; wal-fetch 126), with the same message and nothing archived."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.harness.helpers import SEG, cli_env, init_storage, log_lines, run_cli
from tests.harness.helpers import wal_header as header

NAME = "000000010000000000000003"
RECIPIENT = "age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"

BAD = {
    "misspelt key": ('storag_url = "file://{store}"\n', "unknown setting storag_url"),
    "misspelt age_recipients": (
        f'storage_url = "file://{{store}}"\nage_recipient = ["{RECIPIENT}"]\n',
        "unknown setting age_recipient",
    ),
    "misspelt key in a table": (
        'storage_url = "file://{store}"\n[retention]\nkeep_daly = 3\n',
        "unknown setting retention.keep_daly",
    ),
    "compression level out of range": (
        'storage_url = "file://{store}"\ncompression_level = 99\n',
        "invalid setting compression_level",
    ),
    "negative retry deadline": (
        'storage_url = "file://{store}"\nretry_deadline_seconds = -5\n',
        "invalid setting retry_deadline_seconds",
    ),
    "relative file URL": ('storage_url = "file://relative"\n', "file:// URL needs an absolute path"),
}

COMMANDS = {
    "config": (["config"], 3),
    "dump": (["dump"], 3),
    "wal-push": (["wal-push", "{seg}"], 3),
    "wal-fetch": (["wal-fetch", NAME, "{dest}"], 126),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_config_fails_every_command_alike(tmp_path: Path, case: str) -> None:
    store = tmp_path / "store"
    init_storage(cli_env(tmp_path, P88_STORAGE_URL=f"file://{store}"))
    seg = tmp_path / NAME
    seg.write_bytes(header(3) + b"\0" * (SEG - len(header(3))))
    text, expected = BAD[case]
    cfg = tmp_path / "p88backup.toml"
    cfg.write_text(text.format(store=store))
    env = cli_env(tmp_path, P88_CONFIG=str(cfg), P88_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")

    messages = {}
    for command, (args, status) in COMMANDS.items():
        argv = [a.format(seg=seg, dest=tmp_path / "dest") for a in args]
        r = run_cli(argv, env, timeout=120)
        assert r.returncode == status, (command, r.returncode, r.stderr)
        errors = [line for line in log_lines(r.stderr) if line["level"] == "error"]
        assert len(errors) == 1 and errors[0]["exit_code"] == 3, (command, r.stderr)
        messages[command] = (errors[0]["msg"], errors[0].get("hint"))
    assert len(set(messages.values())) == 1, messages
    assert expected in messages["config"][0]
    assert list(store.glob("wal/**/*")) == []  # nothing archived
    assert not (tmp_path / "dest").exists()
