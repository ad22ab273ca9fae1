"""run_tool: the one way a short tool call becomes a result or an error with its stderr."""

from __future__ import annotations

import grp
import os
import pwd
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


def test_a_user_runs_with_its_own_primary_group_and_no_other() -> None:
    """Before: run_tool passed group=USER, so a user without a group of its own name crashed:
    run_tool(['/bin/true'], user='nobody') raised KeyError from getgrnam ('nobody' is in 'nogroup'),
    and `restore --pitr --start --owner nobody` ended in a traceback."""
    pw = pwd.getpwnam("nobody")
    with pytest.raises(KeyError):
        grp.getgrnam("nobody")  # the case: no group of that name here
    r = run_tool(["/bin/sh", "-c", "id -u; id -g; id -G"], user="nobody")
    assert r.stdout.decode().split("\n")[:3] == [str(pw.pw_uid), str(pw.pw_gid), str(pw.pw_gid)]


def test_an_unknown_user_is_a_clear_error() -> None:
    with pytest.raises(VerifyError, match=r"^cannot run true as no-such-user-p88: no such user$"):
        run_tool(["/bin/true"], user="no-such-user-p88", error=VerifyError)
    with pytest.raises(PgToolError, match="no such user"):
        run_tool(["/bin/true"], user="no-such-user-p88")


def test_a_tool_s_stdin_is_dev_null_unless_given_input() -> None:
    """Before: the tool read our stdin (a terminal, a pipe): a tool that asked something waited for
    an answer nobody would type."""
    read_end, write_end = os.pipe()
    saved = os.dup(0)
    os.dup2(read_end, 0)  # our stdin is a pipe nobody writes to
    try:
        r = run_tool(["/bin/sh", "-c", "readlink /proc/self/fd/0"], timeout=10)
    finally:
        os.dup2(saved, 0)
        for fd in (saved, read_end, write_end):
            os.close(fd)
    assert r.stdout.decode().strip() == "/dev/null"
