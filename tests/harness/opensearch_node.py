"""A real OpenSearch 2.19 node for tests, started from Maven Central jars as a plain java process.

There is no Docker here and the distribution tarball cannot be downloaded, but Maven Central serves
the server jar and its plugins. ``opensearch/TestNode.java`` starts a node from them in-process: the
real server and REST API, without the bootstrap checks, security manager or plugin directories of a
packaged install (see ``/work/shared/notes/opensearch-test-node.md``).

``build()`` resolves the jars with Maven and compiles the launcher once; both are cached under
``cache_dir()`` (never inside the git clone), keyed by the contents of ``pom.xml`` and
``TestNode.java``. ``start()`` runs a node on 127.0.0.1 and returns once the cluster is yellow::

    with start(tmp_path, settings={"thread_pool.write.queue_size": "1"}) as node:
        OpenSearch(node.url).info()

``python tests/harness/opensearch_node.py [--port N] [-E key=value]`` keeps a node up in a terminal.
Standard library only, so that it works before anything else is installed.
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

if not __package__:
    # Run as a file (python tests/harness/opensearch_node.py): make the ``tests`` package importable.
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.harness.procs import cache_dir, stop_process  # noqa: E402

__all__ = [
    "OpenSearchNode",
    "OpenSearchNodeError",
    "build",
    "cache_dir",
    "main",
    "start",
]

HARNESS_DIR = Path(__file__).resolve().parent / "opensearch"
POM = HARNESS_DIR / "pom.xml"
LAUNCHER_SOURCE = HARNESS_DIR / "TestNode.java"
LAUNCHER_CLASS = "p88.testnode.TestNode"

LOG_TAIL_LINES = 50

# The flags of OpenSearch's own launcher (SystemJvmOptions, 2.19) that matter without Bootstrap.
_JVM_FLAGS = (
    "-Dlog4j.shutdownHookEnabled=false",
    "-Dlog4j2.disable.jmx=true",
    # OpenSearch 2.x parses dates with the COMPAT locale data plus its own SPI calendar provider;
    # the JDK's default (CLDR) changes how some date patterns parse.
    "-Djava.locale.providers=SPI,COMPAT",
    "-Dfile.encoding=UTF-8",
    "-Djava.awt.headless=true",
    "-Djna.nosys=true",
    "-Dio.netty.noUnsafe=true",
    "-Dio.netty.noKeySetOptimization=true",
    "-Dio.netty.recycler.maxCapacityPerThread=0",
    "-Dio.netty.allocator.numDirectArenas=0",
    "-XX:-OmitStackTraceInFastThrow",
    # Bootstrap's uncaught-exception handler, which halts the JVM on an OutOfMemoryError, is
    # bypassed: without this a node out of heap would hang a test instead of failing it.
    "-XX:+ExitOnOutOfMemoryError",
)


class OpenSearchNodeError(RuntimeError):
    """The launcher could not be built, or the node did not come up."""


def _build_dir() -> Path:
    return cache_dir() / "opensearch"


def _source_key() -> str:
    digest = hashlib.sha256()
    for source in (POM, LAUNCHER_SOURCE):
        digest.update(source.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def _executable(name: str) -> str:
    java_home = os.environ.get("JAVA_HOME")
    if name != "mvn" and java_home and (Path(java_home) / "bin" / name).is_file():
        return str(Path(java_home) / "bin" / name)
    found = shutil.which(name)
    if found is None:
        raise OpenSearchNodeError(f"{name} not found: install JDK 17 and Maven 3 (apt install openjdk-17-jdk maven)")
    return found


def _run(command: list[str], what: str) -> None:
    result = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise OpenSearchNodeError(f"{what} failed (exit {result.returncode}): {' '.join(command)}\n{output}")


def _cached_classpath(key: str) -> list[str] | None:
    build_dir = _build_dir()
    try:
        if (build_dir / "key").read_text() != key:
            return None
        jars = (build_dir / "classpath.txt").read_text().split(os.pathsep)
    except FileNotFoundError:
        return None
    # A pruned Maven repository must not turn into a ClassNotFoundException at start.
    if not all(Path(jar).is_file() for jar in jars):
        return None
    return [str(build_dir / "classes"), str(HARNESS_DIR), *jars]


def build(force: bool = False) -> list[str]:
    """Resolve the jars and compile the launcher, unless a build of the same sources is cached.

    Returns the java classpath: the compiled launcher, the directory holding ``log4j2.properties``,
    and the jars. Safe to call from several processes at once (pytest-xdist): they take turns on a
    file lock.
    """
    build_dir = _build_dir()
    build_dir.mkdir(parents=True, exist_ok=True)
    key = _source_key()
    if not force and (classpath := _cached_classpath(key)) is not None:
        return classpath

    with open(build_dir / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not force and (classpath := _cached_classpath(key)) is not None:
            return classpath  # another process built it while we waited

        (build_dir / "key").unlink(missing_ok=True)
        classpath_file = build_dir / "classpath.txt"
        _run(
            [
                _executable("mvn"),
                "-q",
                "-B",
                f"-Dmaven.repo.local={cache_dir() / 'm2'}",
                "-f",
                str(POM),
                "dependency:build-classpath",
                f"-Dmdep.outputFile={classpath_file}",
            ],
            "resolving the OpenSearch jars with Maven",
        )
        classes = build_dir / "classes"
        shutil.rmtree(classes, ignore_errors=True)
        _run(
            [
                _executable("javac"),
                "--release",
                "17",
                "-d",
                str(classes),
                "-cp",
                classpath_file.read_text(),
                str(LAUNCHER_SOURCE),
            ],
            "compiling TestNode.java",
        )
        # Written last: its presence marks a complete build.
        (build_dir / "key").write_text(key)

    classpath = _cached_classpath(key)
    if classpath is None:
        raise OpenSearchNodeError(f"the build in {build_dir} is incomplete")
    return classpath


def _log_tail(log_path: Path, offset: int, lines: int = LOG_TAIL_LINES) -> str:
    with open(log_path, "rb") as log:
        log.seek(offset)
        text = log.read().decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class OpenSearchNode:
    """A running node; ``stop()`` it, or use it as a context manager."""

    url: str
    process: subprocess.Popen[bytes]
    workdir: Path
    log_path: Path
    log_offset: int = field(default=0, repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines this node wrote to its log."""
        return _log_tail(self.log_path, self.log_offset, lines)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (a clean close), SIGKILL after ``timeout`` seconds; returns the exit code.

        The JVM exits with 143 (128 + SIGTERM) after a clean shutdown.
        """
        _terminate(self.process, timeout)
        return self.process.returncode

    def __enter__(self) -> OpenSearchNode:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _terminate(process: subprocess.Popen[bytes], timeout: float) -> None:
    stop_process(process, timeout)
    if process.stdin is not None:
        process.stdin.close()


def _is_healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_cluster/health?wait_for_status=yellow&timeout=1s", timeout=10):
            return True
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        # Refused while starting, 408 until the cluster is yellow, 503 before a manager is elected.
        return False


def _wait_until_healthy(process: subprocess.Popen[bytes], ports_file: Path, timeout: float) -> str:
    """The node's URL once it is healthy; raises if it exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    url: str | None = None
    while True:
        if url is None and ports_file.is_file():
            url = "http://" + ports_file.read_text().split()[0]
        if url is not None and _is_healthy(url):
            return url
        if process.poll() is not None:
            raise OpenSearchNodeError(f"OpenSearch exited with code {process.returncode}")
        if time.monotonic() > deadline:
            where = url or "(no port bound yet)"
            raise OpenSearchNodeError(f"OpenSearch {where} not healthy within {timeout:.0f}s")
        time.sleep(0.25)


def start(
    workdir: Path,
    port: int | None = None,
    settings: Mapping[str, str] | None = None,
    heap: str = "512m",
    timeout: float = 180,
) -> OpenSearchNode:
    """Start a single-node cluster on 127.0.0.1 and wait until it is at least yellow.

    ``workdir`` holds the node's home (a fresh data directory per start) and ``opensearch.log``.
    ``port=None`` lets the node bind a free port itself, so two nodes never race for one.
    ``settings`` are node settings (``opensearch.yml`` keys) that override the launcher's defaults.
    The node also exits when this Python process dies, however it dies.
    """
    classpath = build()
    workdir = Path(workdir).resolve()
    home = workdir / "home"
    tmpdir = workdir / "tmp"
    tmpdir.mkdir(parents=True, exist_ok=True)
    ports_file = home / "logs" / "http.ports"
    ports_file.unlink(missing_ok=True)  # left by an earlier node in this workdir
    log_path = workdir / "opensearch.log"
    command = [
        _executable("java"),
        f"-Xms{heap}",
        f"-Xmx{heap}",
        *_JVM_FLAGS,
        # Keeps OpenSearch's temporary files, and the native library JNA unpacks on every start, in the
        # workdir rather than in /tmp and ~/.cache/JNA.
        f"-Djava.io.tmpdir={tmpdir}",
        f"-Djna.tmpdir={tmpdir}",
        "-cp",
        os.pathsep.join(classpath),
        LAUNCHER_CLASS,
        "--home",
        str(home),
        "--port",
        str(port or 0),
        # Our end of stdin closes when we die, so a killed test run leaves no java process behind.
        "--exit-on-stdin-eof",
        *(f"-E{key}={value}" for key, value in (settings or {}).items()),
    ]
    with open(log_path, "ab") as log:
        # Appending keeps earlier runs' logs; the offset limits error reports to this run.
        offset = log.tell()
        process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = _wait_until_healthy(process, ports_file, timeout)
    except OpenSearchNodeError as error:
        _terminate(process, timeout=30)
        tail = _log_tail(log_path, offset)
        raise OpenSearchNodeError(f"{error}; last lines of {log_path}:\n{tail}") from None
    except BaseException:
        _terminate(process, timeout=30)
        raise
    return OpenSearchNode(url, process, workdir, log_path, offset)


def _setting(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {item!r}")
    return key, value


def main(argv: list[str] | None = None) -> int:
    """Build, start a node, print its URL, and keep it up until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, help="HTTP port (default: a free one)")
    parser.add_argument("--workdir", type=Path, help="node home and log (default: a temporary dir)")
    parser.add_argument("--heap", default="512m", help="JVM heap size (default: %(default)s)")
    parser.add_argument(
        "-E",
        dest="settings",
        type=_setting,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a node setting, e.g. -E thread_pool.write.queue_size=1 (repeatable)",
    )
    args = parser.parse_args(argv)

    def on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_sigterm)
    workdir: Path = args.workdir or Path(tempfile.mkdtemp(prefix="p88-opensearch-"))
    try:
        with start(workdir, port=args.port, settings=dict(args.settings), heap=args.heap) as node:
            print(node.url, flush=True)
            print(f"pid {node.pid}, log {node.log_path}", file=sys.stderr, flush=True)
            return node.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
