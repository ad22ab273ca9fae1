"""``drill``: run the dump drill and the PITR drill, store the report, record the metrics.

Order of a run, each step refusing early what would fail later:

1. choose what to drill (the latest dump, and the base backup that
   ``restore --pitr latest`` would restore, i.e. the newest on the live
   timeline's history: each when asked for, by default when the storage has one);
2. refuse at once (exit 12) when one of them is encrypted and no age identity
   is configured: a drill runs where the key is, the drill host; and (exit 7)
   when the server programs of a backup's major are not installed here;
3. remove what an earlier drill could not (a killed run's scratch folder);
4. refuse (exit 9) when a restore would not fit in ``work_dir``;
5. each drill, one after the other, in its own scratch cluster that is
   removed before the next starts (so space is needed for one at a time);
6. the report, written once to ``drills/<id>/report.json``.

Production is only read (:mod:`p88backup.core.drill.source`). A failed
restore or check is the drill's finding: it goes into the report, and the
caller exits 11 (:func:`p88backup.core.drill.report.failure_message`). SIGTERM
or SIGINT stops the drill, removes its scratch clusters and raises
InterruptedRunError (exit 16); no report is stored for it.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from p88backup.catalog import layout
from p88backup.catalog.backups import Catalog
from p88backup.catalog.models import BaseBackupManifest, DrillReport, DrillRun, DumpManifest
from p88backup.core.drill import dump as dump_drill
from p88backup.core.drill import pitr as pitr_drill
from p88backup.core.drill.checks import CheckSpec
from p88backup.core.drill.context import DrillContext
from p88backup.core.drill.interrupts import Interrupts
from p88backup.core.drill.scratch import (
    SCRATCH_PREFIX,
    free_bytes,
    make_private_dir,
    port_in_use,
    reap_leftovers,
    remove_tree,
    server_owner,
    space_problem,
    unreachable_parent,
)
from p88backup.core.drill.source import Source
from p88backup.core.pitr.plan import Target
from p88backup.core.pitr.restore import PitrOptions, PitrRestorer
from p88backup.errors import CryptoError, InterruptedRunError, NotFoundError, P88Error, RefusedError
from p88backup.pg.conn import ConnInfo
from p88backup.storage import Storage
from p88backup.stream import Codec

log = logging.getLogger(__name__)


@dataclass
class DrillOptions:
    work_dir: Path
    restore_command: str  # for the PITR copy: this p88backup's wal-fetch, this storage
    dump: bool | None = None  # None: when the storage has a dump
    pitr: bool | None = None  # None: when the storage has a base backup
    checks: list[CheckSpec] = field(default_factory=list)
    port_range: tuple[int, int] = (55432, 55532)
    owner: str | None = None
    pg_bin_dir: Path | None = None
    verify: bool = True  # pg_verifybackup of the laid-out base backup
    timeout: float = 3600.0  # for the PITR copy's recovery
    dump_jobs: int = 1  # pg_restore --jobs for directory-format dumps


class DrillRunner:
    def __init__(
        self,
        storage: Storage,
        codec: Codec,
        options: DrillOptions,
        *,
        source: ConnInfo | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        in_use: Callable[[int], bool] = port_in_use,
    ) -> None:
        self.storage, self.codec, self.opt, self.clock = storage, codec, options, clock
        self.source_ci = source
        self.catalog = Catalog(storage)
        self.in_use = in_use

    # -- choosing -------------------------------------------------------------

    def choose(self) -> tuple[DumpManifest | None, BaseBackupManifest | None]:
        """The latest dump and the latest base backup to drill, as asked; NotFoundError if nothing."""
        dump: DumpManifest | None = None
        base: BaseBackupManifest | None = None
        if self.opt.dump is not False:
            if self.catalog.ids("dump"):
                found = self.catalog.resolve("dump", "latest")  # as `restore --dump latest` would
                assert isinstance(found, DumpManifest)
                dump = found
            elif self.opt.dump:
                raise NotFoundError(f"no dump to drill in {self.storage.url}", hint="run p88backup dump first")
        if self.opt.pitr is not False:
            bases = self.catalog.basebackups()
            if bases:
                base = self._pitr_base(bases)
            elif self.opt.pitr:
                raise NotFoundError(
                    f"no base backup to drill in {self.storage.url}", hint="run p88backup basebackup first"
                )
        if dump is None and base is None:
            raise NotFoundError(
                f"nothing to drill: no dump and no base backup in {self.storage.url}",
                hint="run p88backup dump (and basebackup) first",
            )
        return dump, base

    def _pitr_base(self, bases: list[BaseBackupManifest]) -> BaseBackupManifest:
        """The base backup ``restore --pitr latest`` will restore: the newest on the live timeline's
        history, as its planner decides, which is not always the newest of all (one taken on a branch
        a restore abandoned). The checks before the drill (key, programs, space) are about that one.

        When the planner refuses (a WAL gap, a timeline it cannot follow), the drill will record that
        as its finding; the newest backup stands in for the checks meanwhile, as before.
        """
        options = PitrOptions(target=Target("latest"), target_dir=self.opt.work_dir, restore_command="")
        try:
            chosen, _ = PitrRestorer(self.storage, self.codec, options).plan()
        except P88Error as exc:
            log.warning(
                "drill: cannot plan the point-in-time restore; the drill will say why",
                extra={"p88": {"error": str(exc)}},
            )
            return bases[-1]
        if chosen.id != bases[-1].id:
            log.info(
                "drill: the newest base backup is not on the live timeline's history; drilling the one "
                "restore --pitr latest would use",
                extra={"p88": {"newest": bases[-1].id, "drilled": chosen.id}},
            )
        return chosen

    def _need_key(self, dump: DumpManifest | None, base: BaseBackupManifest | None) -> None:
        encrypted = [
            f"{what} {m.id}"
            for what, m in (("dump", dump), ("base backup", base))
            if m is not None and m.encoding.encryption is not None
        ]
        if not encrypted:
            return
        try:
            self.codec.identities()
        except CryptoError as exc:
            if self.codec.identity_file is not None:
                raise  # configured but unusable: its own message says why
            raise CryptoError(
                f"{' and '.join(encrypted)} {'is' if len(encrypted) == 1 else 'are'} encrypted and no age identity "
                "is configured: a drill restores them, so it runs on the drill host, where the key is",
                hint=exc.hint,
            ) from None

    def _need_programs(self, dump: DumpManifest | None, base: BaseBackupManifest | None) -> None:
        """PgToolError (exit 7) now, when the server programs a drill needs are not installed here."""
        from p88backup.pg.tools import client_for, server_for

        bins = self.opt.pg_bin_dir
        if dump is not None:
            for name in ("initdb", "pg_ctl", "postgres"):
                server_for(name, dump.server_version_num // 10000, bins)
        if base is not None:
            for name in ("pg_ctl", "postgres"):
                server_for(name, base.server_version_num // 10000, bins)
            if self.opt.verify:
                client_for("pg_verifybackup", base.server_version_num // 10000, bins)

    def _check_space(self, dump: DumpManifest | None, base: BaseBackupManifest | None) -> None:
        work = self.opt.work_dir
        free = free_bytes(work)
        wants = []
        if dump is not None:
            wants.append((f"dump drill of {dump.id}", dump_drill.restored_size(dump)))
        if base is not None:
            wants.append((f"PITR drill of base backup {base.id}", pitr_drill.restored_size(base)))
        # One drill at a time, each removed before the next: each must fit on its own.
        problems = [p for what, size in wants if (p := space_problem(what, size, free, work))]
        if problems:
            raise RefusedError(
                "; ".join(problems), hint="free space there, or point work_dir (P88_WORK_DIR) at a bigger volume"
            )

    # -- running --------------------------------------------------------------

    def run(self) -> DrillReport:
        started = self.clock()
        t_start = time.monotonic()
        dump, base = self.choose()
        self._need_key(dump, base)
        self._need_programs(dump, base)
        owner = server_owner(self.opt.owner)
        work = self.opt.work_dir
        work.mkdir(parents=True, exist_ok=True)
        blocked = unreachable_parent(work, owner)  # checked after mkdir: a umask may have made it 0700
        if blocked is not None:
            raise RefusedError(
                f"{owner} cannot enter {blocked}, on the way to work_dir {work}: the scratch servers run as {owner}",
                hint=f"let {owner} traverse it (chmod o+x), or point work_dir (P88_WORK_DIR) elsewhere",
            )
        source = Source(self.source_ci)
        taken = {o.key.split("/")[1] for o in self.storage.list(layout.DRILLS_PREFIX) if o.key.count("/") >= 2}
        drill_id = layout.backup_id(started, taken)
        scratch = work / f"{SCRATCH_PREFIX}{drill_id}"
        runs: list[DrillRun] = []
        with Interrupts() as interrupts:
            try:
                reap_leftovers(work, self.opt.pg_bin_dir)
                self._check_space(dump, base)
                source.record_before()
                ctx = DrillContext(
                    storage=self.storage,
                    codec=self.codec,
                    scratch=scratch,
                    owner=owner,
                    pg_bin_dir=self.opt.pg_bin_dir,
                    port_range=self.opt.port_range,
                    checks=list(self.opt.checks),
                    source=source,
                    interrupts=interrupts,
                    source_ci=self.source_ci,
                    in_use=self.in_use,
                )
                make_private_dir(scratch, owner)
                try:
                    if dump is not None:
                        runs.append(dump_drill.drill_dump(ctx, dump, jobs=self.opt.dump_jobs))
                    if base is not None:
                        runs.append(
                            pitr_drill.drill_pitr(
                                ctx,
                                base,
                                restore_command=self.opt.restore_command,
                                verify=self.opt.verify,
                                timeout=self.opt.timeout,
                            )
                        )
                finally:
                    with interrupts.shield():
                        remove_tree(scratch, self.opt.pg_bin_dir)
                source.record_after()
            except KeyboardInterrupt as exc:  # DrillInterrupt (SIGTERM/SIGINT), or a plain Ctrl-C
                raise InterruptedRunError(
                    f"drill stopped by {exc or 'SIGINT'}; its scratch clusters are removed", hint="run it again"
                ) from None
        report = DrillReport(
            id=drill_id,
            started_at=started,
            finished_at=self.clock(),
            ok=all(r.ok for r in runs),
            host=socket.gethostname(),
            p88backup_version=_version(),
            source=source.describe(),
            drills=runs,
        )
        self.catalog.write_drill(report)
        self._record(report, time.monotonic() - t_start)
        return report

    def _record(self, report: DrillReport, seconds: float) -> None:
        from p88backup import metrics

        for run in report.drills:
            metrics.drill_result(run.kind, ok=run.ok, rto_seconds=run.rto_seconds, rpo_seconds=run.rpo_seconds)
        log.info(
            "drill finished",
            extra={
                "p88": {
                    "id": report.id,
                    "ok": report.ok,
                    "seconds": round(seconds, 2),
                    "drills": [
                        {"kind": r.kind, "backup": r.backup_id, "ok": r.ok, "rto": r.rto_seconds, "rpo": r.rpo_seconds}
                        for r in report.drills
                    ],
                }
            },
        )


def _version() -> str:
    from p88backup import __version__

    return __version__
