"""The daemon's job runs when a child dies and leaves a process behind, and its exit when a run hangs.

Real processes throughout: a stand-in p88backup command that starts a tool in a session of its own
(as p88backup starts pg_dump) which inherits its stdout, and the daemon as a process of its own.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from p88backup.schedule.children import Children
from p88backup.schedule.jobs import JobRunner
from tests.harness.helpers import REPO
from tests.harness.procs import free_port

# A p88backup command that starts a long-lived tool in its own session, with the command's stdout
# (the tool's pid goes to $GRANDCHILD_PID), then works until it is killed.
LEAVES_A_TOOL_BEHIND = r"""
import os, subprocess, sys, time
tool = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
with open(os.environ["GRANDCHILD_PID"], "w") as f:
    f.write(str(tool.pid))
sys.stdout.write('{"id": "20261130T021500Z"}')
sys.stdout.flush()
time.sleep(60)
"""


def wait_for_file(path: Path, timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and (text := path.read_text()):
            return text
        time.sleep(0.05)
    raise AssertionError(f"{path} was not written within {timeout}s")


def child_of(parent: int, running: Path) -> int | None:
    """The child of ``parent`` that runs ``running`` (the session's other children, e.g. an S3 server a
    fixture started, are none of this test's business)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                status = (entry / "status").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"\nPPid:\t{parent}\n" in status and str(running).encode() in cmdline:
                return int(entry.name)
    return None


@pytest.mark.timeout(60)
def test_a_killed_job_ends_its_run_although_a_tool_it_started_still_holds_its_stdout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: the run read the child's stdout pipe to its end, which came only when the tool that
    inherited it exited: the job stayed "running" (and the daemon's stop waited) for the tool's life."""
    program = tmp_path / "command.py"
    program.write_text(LEAVES_A_TOOL_BEHIND)
    pid_file = tmp_path / "grandchild.pid"
    monkeypatch.setenv("GRANDCHILD_PID", str(pid_file))
    runner = JobRunner(Children(), [sys.executable, str(program)])
    run = threading.Thread(target=runner.run, args=("expire",), daemon=True)
    run.start()
    tool = int(wait_for_file(pid_file, 20))
    try:
        deadline = time.monotonic() + 10
        while (child := child_of(os.getpid(), program)) is None or child == tool:
            assert time.monotonic() < deadline, "the job's child did not appear"
            time.sleep(0.05)
        os.kill(child, signal.SIGKILL)  # the OOM killer, say
        killed = time.monotonic()
        run.join(10)
        assert not run.is_alive(), "the run still waits on a pipe the leftover tool holds"
        assert time.monotonic() - killed < 5
        os.kill(tool, 0)  # the tool is indeed still there, holding the stdout it inherited
        assert runner.running() == []
    finally:
        os.kill(tool, signal.SIGKILL)


# The daemon with one job whose run never returns (stuck in a wait no signal reaches), as a process of
# its own that exits the way `p88backup schedule` does (p88backup.entry.leave).
STUCK_DAEMON = """
import sys, threading, time
from p88backup.entry import leave
from p88backup.schedule.health import StatusResult
from p88backup.schedule.scheduler import Daemon, DaemonConfig

config = DaemonConfig(
    schedules={"expire": "* * * * * *"}, listen="127.0.0.1:%(port)d", stop_grace=%(grace)f,
    base_argv=[sys.executable, "-c", "pass"], wal_stream_spool=None,
)
daemon = Daemon(config, lambda: StatusResult(time.time(), True))
started = threading.Event()

def stuck(key):
    started.set()
    threading.Event().wait()

daemon.runner.run = stuck
stop = threading.Event()

def stop_once_stuck():
    started.wait(30)
    print("stuck", flush=True)
    stop.set()

threading.Thread(target=stop_once_stuck, daemon=True).start()
daemon.run(stop)
print("stopped", flush=True)
leave(0)
"""


@pytest.mark.timeout(60)
def test_the_daemon_exits_within_its_grace_period_even_when_a_job_s_thread_hangs() -> None:
    """A guard, not a fix: this passed before too. p88backup.entry.leave joins every non-daemon thread
    with no limit, but APScheduler's pool threads are daemon threads: a thread inherits that from the
    thread that starts it, here BackgroundScheduler's own (daemon=True by default). Should that change
    (a pool started elsewhere, daemon=False), a stuck run would keep the daemon alive past
    stop_grace_seconds, until Docker's SIGKILL: this test says so."""
    grace = 3.0
    script = textwrap.dedent(STUCK_DAEMON) % {"port": free_port(), "grace": grace}
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "stuck"
        stopping = time.monotonic()
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"the daemon did not exit 20 s after its stop (grace {grace} s)\n{err[-2000:]}") from None
    took = time.monotonic() - stopping
    assert proc.returncode == 0, err[-2000:]
    assert out.strip() == "stopped"
    assert took < grace + 2, took  # the grace period, plus the interpreter's own exit


def test_no_room_for_a_job_s_output_is_a_run_that_could_not_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The output now goes to a temporary file: a $TMPDIR that cannot take one fails that run, said so,
    and nothing is started (the daemon, and its next runs, go on)."""
    import tempfile

    from p88backup import metrics

    metrics.reset()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "missing"))
    marker = tmp_path / "ran"
    runner = JobRunner(Children(), [sys.executable, "-c", f"open({str(marker)!r}, 'w').close()"])
    with caplog.at_level("ERROR", logger="p88backup.schedule"):
        runner.run("expire")
    assert [r.getMessage() for r in caplog.records] == ["job could not start"]
    assert metrics.registry().get_sample_value("p88backup_job_failures_total", {"job": "expire"}) == 1
    assert not marker.exists() and runner.running() == []
    metrics.reset()
