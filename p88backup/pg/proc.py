"""Running PostgreSQL tools as child processes, streaming their stdout/stdin.

stderr is drained by a thread (so a chatty tool never blocks) and kept in a
bounded buffer for the error message. A failure is judged on the exit status
*and* a killed-by-signal status; callers add format checks of their own.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import IO, Any

from p88backup.errors import PgToolError

log = logging.getLogger(__name__)


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
        if rc < 0:
            reason = f"was killed by signal {signal.Signals(-rc).name}"
        else:
            reason = f"exited with status {rc}"
        detail = self.stderr_text()
        raise PgToolError(f"{self.what} {reason}" + (f": {detail}" if detail else ""))

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
