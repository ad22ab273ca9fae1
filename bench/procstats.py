"""Measured runs of a command: wall time, CPU and peak RSS, per process.

Shared by the benchmarks in ``bench/``. :func:`run_measured` starts a
command, waits for it with ``wait4`` and returns:

* ``seconds`` - wall time from spawn to exit (``time.monotonic``);
* ``cpu_total`` - user + system CPU of the command and every descendant it
  reaped (``wait4``'s rusage: exact);
* ``procs`` - per process (the command's tree, plus "server" processes
  such as PostgreSQL backends or MinIO that the caller names): CPU seconds
  spent during the run and the process's own peak RSS (``VmHWM`` from
  ``/proc/PID/status``). These are *sampled* every 0.1 s from ``/proc``
  (tree found through ``/proc/PID/task/*/children``, no scan of all of
  ``/proc``), so a value can miss up to the last 100 ms of a process.
  ``VmHWM`` is the kernel's high-water mark, so peaks between samples are
  not missed, only what happens after the last sample.

Note that ``/usr/bin/time -v``'s "Maximum resident set size" is the largest
RSS of the command *or any of its reaped children*, which is why the
per-process ``VmHWM`` is used instead.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

SAMPLE_INTERVAL = 0.1
CLK_TCK = os.sysconf("SC_CLK_TCK")

PidSource = Callable[[], list[int]]
"""Returns the pids of a group of long-lived server processes (evaluated at every sample)."""


@dataclass
class ProcSample:
    pid: int
    name: str
    group: str  # "client" (the command's tree) or the name of a server group
    cpu_start: float  # CPU seconds when first seen before the run (0 for processes born during it)
    cpu_last: float
    hwm_kb: int = 0

    @property
    def cpu(self) -> float:
        return max(0.0, self.cpu_last - self.cpu_start)


@dataclass
class RunStats:
    seconds: float
    cpu_total: float
    procs: list[ProcSample] = field(default_factory=list)
    root_pid: int = 0

    def cpu_by_name(self, group: str) -> dict[str, float]:
        """CPU seconds per process name within a group (summed over pids)."""
        out: dict[str, float] = {}
        for p in self.procs:
            if p.group == group:
                out[p.name] = out.get(p.name, 0.0) + p.cpu
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def cpu_of_group(self, group: str) -> float:
        return sum(p.cpu for p in self.procs if p.group == group)

    @property
    def root_hwm_mb(self) -> float:
        """Peak RSS of the spawned process itself (not its children), MiB."""
        return next((p.hwm_kb / 1024 for p in self.procs if p.pid == self.root_pid), 0.0)


# -- /proc readers (cheap: a few small files per process, no scan of all of /proc) --


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads'), from /proc/PID/task/*/children."""
    out: list[int] = []
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except (FileNotFoundError, ProcessLookupError):  # the process ended mid-sample
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(x) for x in fh.read().split())
        except (FileNotFoundError, ProcessLookupError):  # the process ended mid-sample
            continue
    return out


def descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found.extend(kids)
        todo.extend(kids)
    return found


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of the process itself (all threads, not children)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except (FileNotFoundError, ProcessLookupError):  # the process ended mid-sample
        return None
    fields = stat[stat.rindex(b")") + 2 :].split()  # after "pid (comm) "
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def comm(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/comm") as fh:
            return fh.read().strip()
    except (FileNotFoundError, ProcessLookupError):  # the process ended mid-sample
        return "?"


def hwm_kb(pid: int) -> int | None:
    """VmHWM: the kernel's peak-RSS mark for the process (absent once it is a zombie)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):  # the process ended mid-sample
        return None
    return None


class TreeSampler:
    """Samples CPU and VmHWM of a process tree and of named server groups."""

    def __init__(self, servers: Mapping[str, PidSource]) -> None:
        self._servers = dict(servers)
        self._seen: dict[int, ProcSample] = {}
        self._root: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="tree-sampler", daemon=True)

    def prime(self) -> None:
        """Record the CPU that long-lived server processes have spent *before* the run."""
        self._sample(baseline=True)

    def start(self, root_pid: int) -> None:
        self._root = root_pid
        self._sample(baseline=False)
        self._thread.start()

    def stop(self) -> list[ProcSample]:
        self._stop.set()
        self._thread.join()
        return list(self._seen.values())

    def _loop(self) -> None:
        while not self._stop.wait(SAMPLE_INTERVAL):
            self._sample(baseline=False)

    def _pids(self) -> list[tuple[str, int]]:
        found: list[tuple[str, int]] = []
        if self._root is not None:
            found += [("client", p) for p in (self._root, *descendants(self._root))]
        for group, source in self._servers.items():
            found += [(group, p) for p in source()]
        return found

    def _sample(self, *, baseline: bool) -> None:
        for group, pid in self._pids():
            cpu = cpu_seconds(pid)
            if cpu is None:
                continue
            sample = self._seen.get(pid)
            if sample is None:
                sample = self._seen[pid] = ProcSample(pid, comm(pid), group, cpu if baseline else 0.0, cpu)
            sample.cpu_last = cpu
            if group == "client":
                sample.name = comm(pid)  # a fork first shows its parent's name, until exec
            hwm = hwm_kb(pid)
            if hwm is not None:
                sample.hwm_kb = max(sample.hwm_kb, hwm)


class CommandFailed(RuntimeError):
    """The command exited non-zero; ``last_line`` is the last line of its output (often the error)."""

    def __init__(self, message: str, last_line: str = "") -> None:
        super().__init__(message)
        self.last_line = last_line


def run_measured(
    argv: Sequence[str],
    *,
    env: Mapping[str, str],
    log_path: Path,
    servers: Mapping[str, PidSource] | None = None,
) -> RunStats:
    """Run ``argv`` to completion, output to ``log_path``; raise CommandFailed unless it exits 0."""
    sampler = TreeSampler(servers or {})
    sampler.prime()
    with log_path.open("wb") as log:
        t0 = time.monotonic()
        proc = subprocess.Popen(list(argv), env=dict(env), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        sampler.start(proc.pid)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            seconds = time.monotonic() - t0
            samples = sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:] or [""]
        raise CommandFailed(f"{argv[0]} exited {proc.returncode}; log {log_path}:\n" + "\n".join(tail), tail[-1])
    return RunStats(seconds, usage.ru_utime + usage.ru_stime, samples, proc.pid)


def refresh_bytecode() -> None:
    """Recompile p88backup's stale ``.pyc`` files (what installing a package does).

    This checkout is installed editable and PYTHONDONTWRITEBYTECODE may be set, so
    after a source edit every measured run would compile the changed modules again
    (tens of ms per start), and a service user cannot write a root-owned cache.
    """
    import compileall

    import p88backup

    compileall.compile_dir(Path(p88backup.__file__).parent, quiet=2)
