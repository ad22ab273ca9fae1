"""``reindex`` on the command line: its help."""

from __future__ import annotations

from pathlib import Path

from tests.harness.helpers import cli_env, run_cli

EXAMPLES = [
    "p88backup reindex                       rebuild every configured index",
    "p88backup reindex --index documents --dry-run",
    "p88backup reindex --index documents --since 2026-11-27T02:00:00Z",
    "p88backup reindex --rollback documents",
]


def test_help_shows_the_examples_one_per_line(tmp_path: Path) -> None:
    r = run_cli(["reindex", "--help"], cli_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "\\b" not in r.stdout and "\b" not in r.stdout
    lines = [line.strip() for line in r.stdout.splitlines()]
    start = lines.index(EXAMPLES[0])
    assert lines[start : start + len(EXAMPLES)] == EXAMPLES
