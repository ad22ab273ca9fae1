"""run_tool: the one way a short tool call becomes a result or an error with its stderr."""

from __future__ import annotations

import sys

import pytest

from p88backup.errors import PgToolError, VerifyError
from p88backup.pg.proc import describe_exit, run_tool, stderr_tail


def test_success_returns_output() -> None:
    r = run_tool([sys.executable, "-c", "import sys; sys.stdout.write('hello')"])
    assert r.returncode == 0 and r.stdout == b"hello"


def test_failure_carries_what_why_and_stderr() -> None:
    argv = [sys.executable, "-c", "import sys; sys.stderr.write('bad thing\\n'); sys.exit(3)"]
    with pytest.raises(VerifyError, match=r"^checking things failed: python\S* exited with status 3: bad thing$"):
        run_tool(argv, error=VerifyError, message="checking things")


def test_input_reaches_the_tool() -> None:
    argv = [sys.executable, "-c", "import sys; sys.exit(0 if sys.stdin.read() == 'x' else 1)"]
    assert run_tool(argv, input=b"x").returncode == 0


def test_unchecked_failure_is_returned() -> None:
    assert run_tool([sys.executable, "-c", "raise SystemExit(4)"], check=False).returncode == 4


def test_missing_program_and_timeout_are_errors() -> None:
    with pytest.raises(PgToolError, match="cannot run no-such-tool"):
        run_tool(["/nonexistent/no-such-tool"])
    with pytest.raises(PgToolError, match="did not finish within 1s"):
        run_tool([sys.executable, "-c", "import time; time.sleep(10)"], timeout=1)


@pytest.mark.parametrize(("rc", "text"), [(3, "exited with status 3"), (-9, "was killed by signal SIGKILL")])
def test_describe_exit(rc: int, text: str) -> None:
    assert describe_exit(rc) == text


def test_stderr_tail_keeps_the_end() -> None:
    assert stderr_tail(b"a" * 600 + b"END", limit=10) == "...aaaaaaaEND"
    assert stderr_tail(None) == ""
