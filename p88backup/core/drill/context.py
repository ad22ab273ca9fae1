"""What every drill of one run shares: storage, keys, where and as whom scratch clusters run."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from p88backup.core.drill.checks import CheckSpec
from p88backup.core.drill.interrupts import Interrupts
from p88backup.core.drill.scratch import ScratchCluster, ServerStartError, pick_port, port_in_use, remove_tree
from p88backup.core.drill.source import Source
from p88backup.errors import CryptoError, P88Error, RefusedError
from p88backup.pg.conn import ConnInfo, first_line
from p88backup.storage import Storage
from p88backup.stream import Codec

log = logging.getLogger(__name__)


@dataclass
class DrillContext:
    storage: Storage
    codec: Codec
    scratch: Path  # work_dir/drill-<id>, this run's own folder
    owner: str | None  # as root: who owns and runs the scratch servers
    pg_bin_dir: Path | None
    port_range: tuple[int, int]
    checks: list[CheckSpec]
    source: Source
    interrupts: Interrupts
    source_ci: ConnInfo | None = None  # production's parameters (user, password) for the PITR copy
    in_use: Callable[[int], bool] = field(default=port_in_use)

    def port(self) -> int:
        port = pick_port(self.port_range, self.in_use)
        if port is None:
            low, high = self.port_range
            raise RefusedError(
                f"no free port in drill.port_range {low}-{high} for the scratch cluster",
                hint="widen drill.port_range, or find what listens there",
            )
        return port

    def port_taken(self, port: int, datadir: Path) -> bool:
        """After a server of ``datadir`` failed to start: is ``port`` held by something else now?

        The port was free when :meth:`port` picked it; another program may have
        bound it before the server did. Not a server of ``datadir`` itself
        (one that is running, or a start that timed out, has its postmaster.pid).
        """
        return not (datadir / "postmaster.pid").exists() and self.in_use(port)

    def start_scratch(self, cluster: ScratchCluster) -> None:
        """Start ``cluster``; if its port was taken since it was picked, once more on another port."""
        try:
            cluster.start()
        except ServerStartError as exc:
            if not self.port_taken(exc.port, cluster.datadir):
                raise
            port = self.port()
            log.warning(
                "drill: the scratch port was taken before the server could listen on it: trying another",
                extra={"p88": {"port": exc.port, "next_port": port}},
            )
            cluster.move_to(port)
            cluster.start()

    @contextmanager
    def removed_afterwards(self, path: Path, seconds: list[float]) -> Iterator[None]:
        """Whatever happens inside, stop every server under ``path`` and delete it; time that."""
        try:
            yield
        finally:
            t0 = time.monotonic()
            with self.interrupts.shield():
                remove_tree(path, self.pg_bin_dir)
            seconds.append(time.monotonic() - t0)


def restore_failure(exc: Exception) -> str:
    """The cause to record when a drill's restore or checks fail; re-raises what a report cannot answer.

    Whatever the restore reports (a corrupt object, a WAL gap, pg_restore's
    error, the server's) is the drill's finding, and so is the host refusing a
    file operation on the scratch side (disk full, permissions). A missing key
    is not: that is exit 12 at once, as for every restore. Anything else is a bug.
    """
    if isinstance(exc, CryptoError):
        raise exc
    if isinstance(exc, P88Error):
        return str(exc)
    if isinstance(exc, OSError):
        return str(exc)  # "[Errno 28] No space left on device: '<path>'"
    if type(exc).__module__.startswith("psycopg"):
        return f"PostgreSQL error: {first_line(exc)}"
    raise exc
