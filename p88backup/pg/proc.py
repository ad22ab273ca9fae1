"""Running PostgreSQL tools as child processes.

:func:`run_tool` runs one to completion and turns a failure into an error
carrying the tail of its stderr (one place for what every short tool call
needs: as the data directory's owner when we are root, a timeout, the
message). :class:`ToolProcess` streams a long-running tool's stdout/stdin;
its stderr is drained by a thread (so a chatty tool never blocks) and kept in
a bounded buffer for the error message. A failure is judged on the exit
status *and* a killed-by-signal status; callers add format checks of their own.
"""

from __future__ import annotations

import logging
import os
import pwd
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, Any

from p88backup.errors import P88Error, PgToolError

log = logging.getLogger(__name__)


def describe_exit(rc: int) -> str:
    """``exited with status 3`` / ``was killed by signal SIGKILL``."""
    if rc < 0:
        try:
            return f"was killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"was killed by signal {-rc}"
    return f"exited with status {rc}"


def stderr_tail(stderr: bytes | str | None, limit: int = 500) -> str:
    text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else (stderr or "")
    text = text.strip()
    return text if len(text) <= limit else "..." + text[-limit:]


def run_tool(
    argv: Sequence[str],
    *,
    what: str | None = None,
    env: dict[str, str] | None = None,
    input: bytes | None = None,
    user: str | None = None,
    timeout: float | None = None,
    check: bool = True,
    error: type[P88Error] = PgToolError,
    message: str | None = None,
    hint: str | None = None,
) -> subprocess.CompletedProcess[bytes]:
    """Run a tool to completion and return its result (stdout and stderr captured).

    ``user``: run as this user (PostgreSQL's server programs refuse root), with
    the user's primary group and no supplementary groups (ours are root's), as
    ``su``/``runuser`` would. With ``check``, a non-zero exit raises ``error``
    saying ``"<message or what> failed: <why>: <stderr tail>"``; a tool that
    cannot be started (an unknown ``user`` too), or outlives ``timeout``,
    raises it too. Without ``input`` the tool's stdin is /dev/null: a tool that
    asks a question fails instead of waiting for an answer nobody types.
    """
    name = what or os.path.basename(argv[0])
    uid = gid = None
    if user is not None:
        try:
            pw = pwd.getpwnam(user)
        except KeyError:
            raise error(f"cannot run {name} as {user}: no such user", hint=hint) from None
        uid, gid = pw.pw_uid, pw.pw_gid
    log.debug("running", extra={"p88": {"argv": list(argv), "user": user}})
    try:
        r = subprocess.run(
            list(argv),
            input=input,
            stdin=subprocess.DEVNULL if input is None else None,
            capture_output=True,
            env=env,
            timeout=timeout,
            user=uid,
            group=gid,
            extra_groups=[] if user is not None else None,
            cwd="/" if user is not None else None,
        )
    except OSError as exc:
        raise error(f"cannot run {name}: {exc.strerror or exc}", hint=hint) from None
    except subprocess.TimeoutExpired:
        raise error(f"{name} did not finish within {timeout:.0f}s", hint=hint) from None
    if check and r.returncode != 0:
        detail = stderr_tail(r.stderr)
        raise error(
            f"{message or name} failed: {name} {describe_exit(r.returncode)}" + (f": {detail}" if detail else ""),
            hint=hint,
        )
    return r


class ToolProcess:
    def __init__(
        self,
        argv: Sequence[str],
        *,
        env: dict[str, str] | None = None,
        stdin: int | IO[bytes] | None = subprocess.DEVNULL,
        stdout: int | IO[bytes] | None = subprocess.PIPE,
        cwd: str | None = None,
        what: str | None = None,
    ) -> None:
        self.argv = list(argv)
        self.what = what or os.path.basename(self.argv[0])
        self._stderr: deque[str] = deque(maxlen=200)
        log.debug("running", extra={"p88": {"argv": self.argv}})
        try:
            self.proc: subprocess.Popen[bytes] = subprocess.Popen(
                self.argv,
                stdin=stdin,
                stdout=stdout,
                stderr=subprocess.PIPE,
                env=env,
                cwd=cwd,
                start_new_session=True,  # our Ctrl-C handling decides when it dies
            )
        except OSError as exc:
            raise PgToolError(f"cannot run {self.what}: {exc.strerror}") from None
        self._drain = threading.Thread(target=self._read_stderr, daemon=True, name=f"{self.what}-stderr")
        self._drain.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            if line:
                self._stderr.append(line)
                log.debug(line, extra={"p88": {"tool": self.what}})

    @property
    def stdout(self) -> IO[bytes]:
        assert self.proc.stdout is not None
        return self.proc.stdout

    @property
    def stdin(self) -> IO[bytes]:
        assert self.proc.stdin is not None
        return self.proc.stdin

    def stderr_text(self, last: int = 8) -> str:
        lines = list(self._stderr)
        return " | ".join(lines[-last:])

    def wait(self, timeout: float | None = None) -> int:
        rc = self.proc.wait(timeout)
        self._drain.join(timeout=5)
        return rc

    def finish(self, timeout: float | None = None) -> None:
        """Wait, then raise PgToolError unless the tool exited 0."""
        rc = self.wait(timeout)
        if rc == 0:
            return
        detail = self.stderr_text()
        raise PgToolError(f"{self.what} {describe_exit(rc)}" + (f": {detail}" if detail else ""))

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.proc.wait()

    def __enter__(self) -> ToolProcess:
        return self

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is not None:
            self.kill()
        for f in (self.proc.stdout, self.proc.stdin):
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass


class ToolOutput:
    """A tool's stdout that, at end of stream, insists the tool succeeded.

    Raising from ``read`` makes storage abort the put, so the output of a
    tool that failed (or was killed) never becomes a stored object. Also
    rejects empty output, output that does not start with ``magic``, and
    whatever ``on_end`` objects to (e.g. a truncated tar stream). ``tee``
    sees every byte on the way (parsers that must not buffer the stream).
    """

    def __init__(
        self,
        tool: ToolProcess,
        *,
        magic: bytes = b"",
        progress: Callable[[int], None] | None = None,
        tee: Callable[[bytes], None] | None = None,
        on_end: Callable[[], None] | None = None,
    ) -> None:
        self._tool, self._magic, self._progress, self._tee, self._on_end = tool, magic, progress, tee, on_end
        self._head = b""
        self.size = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._tool.stdout.read(size)
        if data:
            if len(self._head) < len(self._magic):
                self._head += data[: len(self._magic) - len(self._head)]
                if not self._magic.startswith(self._head):
                    raise PgToolError(f"{self._tool.what} output is not in the expected format")
            self.size += len(data)
            if self._tee:
                self._tee(data)
            if self._progress:
                self._progress(len(data))
            return data
        self._tool.finish()
        if self.size == 0 or self._head != self._magic:
            what = "no output" if self.size == 0 else "truncated or malformed output"
            raise PgToolError(f"{self._tool.what} produced {what}")
        if self._on_end:
            self._on_end()
        return b""
