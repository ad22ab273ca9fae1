"""``reindex`` on the command line: its help, --since read by the one time parser, results as text."""

from __future__ import annotations

from pathlib import Path

import pytest

from p88backup.cli.reindex import _describe
from p88backup.errors import ExitCode
from p88backup.search.reindex import ReindexResult
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


def env_without_servers(tmp_path: Path) -> dict[str, str]:
    """A configured index, and nothing listening where the settings point."""
    cfg = tmp_path / "p88.toml"
    cfg.write_text(
        'database_url = "postgresql://backup@127.0.0.1:9/p88"\nopensearch_url = "http://127.0.0.1:9"\n'
        "retry_deadline_seconds = 0.2\n"
        '[[reindex]]\nindex = "documents"\nquery = "SELECT id, updated_at FROM documents"\n'
        'updated_at_column = "updated_at"\n'
    )
    return cli_env(tmp_path, P88_CONFIG=str(cfg), P88_RETRY_DEADLINE_SECONDS="0.2")


@pytest.mark.parametrize(
    ("since", "message"),
    [
        ("2026-11-27T02:00:00", "--since: the time '2026-11-27T02:00:00' has no time zone: add one"),
        ("last tuesday", "--since: cannot read 'last tuesday' as a time: use ISO-8601 with a zone"),
        ("", "--since: cannot read '' as a time"),
    ],
)
def test_since_that_is_not_a_time_is_a_config_error(tmp_path: Path, since: str, message: str) -> None:
    r = run_cli(["reindex", "--since", since], env_without_servers(tmp_path))
    assert r.returncode == ExitCode.CONFIG, r.stderr
    assert message in r.stderr


@pytest.mark.parametrize("since", ["2026-11-27T02:00:00z", "2026-11-27 02:00:00+01:00", " 2026-11-27T02:00:00Z "])
def test_since_reads_times_as_restore_pitr_does(tmp_path: Path, since: str) -> None:
    # Accepted as a time (the old parser refused a lower-case z): the run goes on to OpenSearch,
    # which is not there.
    r = run_cli(["reindex", "--since", since], env_without_servers(tmp_path))
    assert r.returncode == ExitCode.SEARCH, r.stderr
    assert "cannot reach OpenSearch" in r.stderr


@pytest.mark.parametrize(
    ("result", "text"),
    [
        (
            ReindexResult("docs", "full", "docs-b", "docs-a", rows=5, deleted=["docs-0"], dry_run=True),
            "docs: would build docs-b from 5 rows, then move the alias from docs-a; would delete docs-0",
        ),
        (
            ReindexResult("docs", "full", "docs-b", "docs-legacy-b", rows=5, dry_run=True, migrated=True),
            "docs: would build docs-b from 5 rows, then replace the plain index docs by the alias"
            " (its data kept as docs-legacy-b)",
        ),
        (
            ReindexResult("docs", "full", "docs-b", "docs-legacy-b", actions=5, seconds=1.0, migrated=True),
            "docs: 5 documents into docs-b (5 docs/s), the plain index docs replaced by the alias"
            " (its data kept as docs-legacy-b)",
        ),
        (
            ReindexResult("docs", "full", "docs-b", None, actions=5, seconds=0.5),
            "docs: 5 documents into docs-b (10 docs/s), alias moved from -",
        ),
        (ReindexResult("docs", "rollback", "docs-a", "docs-b"), "docs: alias moved back to docs-a (was docs-b)"),
    ],
)
def test_results_read_as_sentences(result: ReindexResult, text: str) -> None:
    assert _describe(result) == text
