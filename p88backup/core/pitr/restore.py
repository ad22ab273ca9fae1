"""``restore --pitr``: lay out a base backup, configure recovery, optionally start
the server and wait until the target is reached and the server promoted.

Before touching the target directory it proves the plan can work: a base
backup that precedes the target on the right timeline, and every WAL segment
from it onwards in the archive. Afterwards it checks the laid-out files
against the backup's own manifest (``pg_verifybackup``) before any recovery
setting is written.

Keys and programs are checked before the directory is touched, so a
``--force`` restore never empties a directory it then cannot fill.

The restore owns every recovery setting of the directory it writes
(:mod:`p88backup.core.pitr.recoveryconf`, DESIGN §3.10): inherited ones are
removed, its own go in one marked block, and once the server has promoted
the recovery settings are removed again (with ``--stop``: the whole block,
so the directory is an ordinary cluster for the real server's configuration).

The restored server runs with ``archive_mode = off`` unless asked otherwise:
a trial restore that promoted and archived its new timeline into the
production archive would change what ``latest`` means for the next restore.
Its new timeline's history file is marked ready for archiving, so that
whoever archives this cluster once it becomes production archives that file
first (DESIGN §3.11). After a ``latest`` restore the promotion point is
checked against the newest archived WAL on the followed timeline: a recovery
that stopped early fails loudly.
"""

from __future__ import annotations

import logging
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from p88backup.catalog.backups import Catalog
from p88backup.catalog.models import BaseBackupManifest
from p88backup.catalog.objects import check_stat, open_decoded
from p88backup.core.pitr import recoveryconf
from p88backup.core.pitr.plan import RECOVERY_PARAMETERS, RecoveryPlan, Target, plan_recovery, recovery_settings
from p88backup.core.pitr.server import Promotion, RestoredServer
from p88backup.core.wal import names as walnames
from p88backup.core.wal.archive import WalArchive
from p88backup.core.wal.restorepoints import restore_point_lsn
from p88backup.errors import PgToolError, PitrTargetError, RefusedError, VerifyError
from p88backup.pg.conn import ConnInfo
from p88backup.pg.proc import ToolProcess, run_tool
from p88backup.pg.tools import client_for, server_for
from p88backup.storage import Storage
from p88backup.stream import Codec, copy_stream, widen_pipe

log = logging.getLogger(__name__)


@dataclass
class PitrOptions:
    target: Target
    target_dir: Path
    restore_command: str
    start: bool = False
    stop: bool = False
    port_chosen: bool = False  # the port was picked for a trial start, not asked for
    port: int | None = None
    force: bool = False
    timeline: int | None = None
    base_backup: str | None = None
    owner: str | None = None
    archive_mode: bool = False
    verify: bool = True
    settings: dict[str, str] = field(default_factory=dict)
    timeout: float = 3600.0
    pg_bin_dir: Path | None = None
    server_env: dict[str, str] | None = None


@dataclass
class PitrResult:
    backup_id: str
    target: str
    target_dir: str
    timeline_followed: int
    wal_segments_available: int
    layout_seconds: float
    started: bool = False
    port: int | None = None
    promoted: bool = False
    last_replayed_transaction: str | None = None
    lsn: str | None = None
    timeline: int | None = None
    stop_reason: str | None = None
    stopped: bool = False
    total_seconds: float = 0.0
    log_file: str | None = None
    replayed_to: str | None = None  # newest archived segment the target needed (latest: all of them)
    warnings: list[str] = field(default_factory=list)


class PitrRestorer:
    def __init__(
        self,
        storage: Storage,
        codec: Codec,
        options: PitrOptions,
        *,
        conninfo: ConnInfo | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.storage, self.codec, self.opt = storage, codec, options
        self.conninfo, self.clock, self.sleep = conninfo, clock, sleep
        self.catalog = Catalog(storage)
        self.archive = WalArchive(storage, codec)
        self._wal_encrypted = False  # set by plan()

    # -- planning -------------------------------------------------------------

    def plan(self) -> tuple[BaseBackupManifest, RecoveryPlan]:
        """The base backup and the plan (timeline, WAL check), or PitrTargetError before anything is touched."""
        backups = self.catalog.basebackups()
        listing = list(self.archive.objects())
        self._wal_encrypted = any(obj.key.endswith(".age") for _, obj in listing)
        histories = self.archive.histories(listing)
        target = self.opt.target
        rp_lsn = self._restore_point_lsn(target.name) if target.kind == "name" and target.name else None
        base = self.opt.base_backup
        if base == "latest":
            base = backups[-1].id if backups else None
        segment_size = next(
            (size for b in backups if (size := getattr(b, "wal_segment_size", None))), walnames.DEFAULT_SEGMENT_SIZE
        )
        plan = plan_recovery(
            backups,
            target,
            {name: obj.modified for name, obj in listing},
            histories,
            timeline=self.opt.timeline,
            base_backup=base,
            restore_point_lsn=rp_lsn,
            segment_size=segment_size,
        )
        for warning in plan.warnings:
            log.warning(warning)
        return next(b for b in backups if b.id == plan.backup_id), plan

    def _restore_point_lsn(self, name: str) -> int | None:
        return restore_point_lsn(self.storage, name)

    # -- doing ----------------------------------------------------------------

    def run(self) -> PitrResult:
        t0 = time.monotonic()
        backup, plan = self.plan()
        log.info(
            "restoring base backup",
            extra={
                "p88": {
                    "id": backup.id,
                    "target": self.opt.target.describe(),
                    "timeline": plan.timeline,
                    "dir": str(self.opt.target_dir),
                }
            },
        )
        owner = self._owner()
        self._preflight(backup)
        self._prepare_dir()
        try:
            self._extract(backup)
            if self.opt.verify:
                self._verify(backup)
            self._configure(backup)
            if owner is not None:
                self._chown(owner)
        except BaseException:
            log.error(
                "restore failed; the target directory holds a partial restore",
                extra={"p88": {"dir": str(self.opt.target_dir)}},
            )
            raise
        result = PitrResult(
            backup.id,
            self.opt.target.describe(),
            str(self.opt.target_dir),
            plan.timeline,
            plan.segments,
            round(time.monotonic() - t0, 2),
            warnings=list(plan.warnings),
        )
        if self.opt.start:
            self._start_and_wait(owner, result, plan)
        result.total_seconds = round(time.monotonic() - t0, 2)
        return result

    def _owner(self) -> str | None:
        """PostgreSQL will not run as root: as root, restore for (and run as) a service user."""
        if os.geteuid() != 0:
            return None
        if self.opt.owner:
            name = self.opt.owner
        else:
            parent = self.opt.target_dir.parent
            uid = parent.stat().st_uid if parent.exists() else 0
            name = pwd.getpwuid(uid).pw_name if uid else "postgres"
        try:
            pwd.getpwnam(name)
        except KeyError:
            raise RefusedError(
                f"user {name!r} does not exist", hint="pass --owner USER (PostgreSQL refuses root)"
            ) from None
        return name

    def _preflight(self, backup: BaseBackupManifest) -> None:
        """Everything the restore will need, checked before the target directory is touched."""
        for obj in backup.files:
            check_stat(self.storage, obj)  # stored, with the recorded size
        if backup.encoding.encryption == "age" or self._wal_encrypted:
            self.codec.identities()  # CryptoError: no identity file, or it cannot be read
        if shutil.which("tar") is None:
            raise PgToolError("tar is not installed; it lays out the base backup")
        major = backup.server_version_num // 10000
        if self.opt.verify:
            client_for("pg_verifybackup", major, self.opt.pg_bin_dir)
        if self.opt.start:
            server_for("pg_ctl", major, self.opt.pg_bin_dir)
            server_for("postgres", major, self.opt.pg_bin_dir)

    def _prepare_dir(self) -> None:
        d = self.opt.target_dir
        if d.exists() and any(d.iterdir()):
            if not self.opt.force:
                raise RefusedError(
                    f"target directory {d} is not empty",
                    hint="restore into an empty directory, or pass --force to replace its contents",
                )
            if (d / "postmaster.pid").exists():
                raise RefusedError(f"{d} belongs to a running PostgreSQL (postmaster.pid); stop it first")
            log.warning("emptying target directory (--force)", extra={"p88": {"dir": str(d)}})
            for entry in d.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o700)

    def _extract(self, backup: BaseBackupManifest) -> None:
        encrypted = backup.encoding.encryption == "age"
        for obj in backup.files:
            check_stat(self.storage, obj)
            decoded, raw = open_decoded(self.storage, obj, self.codec, encrypted=encrypted)
            # 1 MiB records and pipe (tar's default is 10 KiB): ~40% less time to lay out
            # the files (bench/pitr_bench.py). -B: reassemble short reads from the pipe.
            argv = ["tar", "-x", "-b", "2048", "-B", "-f", "-", "-C", str(self.opt.target_dir), "--no-same-owner"]
            try:
                with ToolProcess(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, what="tar") as tar:
                    widen_pipe(tar.stdin.fileno())
                    copy_stream(decoded, tar.stdin)
                    tar.stdin.close()
                    tar.finish()
            finally:
                raw.close()

    def _verify(self, backup: BaseBackupManifest) -> None:
        tool = client_for("pg_verifybackup", backup.server_version_num // 10000, self.opt.pg_bin_dir)
        run_tool(
            [str(tool.path), "--no-parse-wal", "--quiet", str(self.opt.target_dir)],
            error=VerifyError,
            message="checking the restored files against the backup's manifest",
        )
        log.info("restored files match the backup manifest (pg_verifybackup)")

    def _configure(self, backup: BaseBackupManifest) -> None:
        d = self.opt.target_dir
        for stale in ("postmaster.pid", "postmaster.opts", "standby.signal", "recovery.signal"):
            (d / stale).unlink(missing_ok=True)
        # Server logs of earlier restores travel inside base backups; this run writes its own.
        for old in (d / "log").glob("p88backup-restore*.log"):
            old.unlink()
        conf = d / "postgresql.conf"
        if conf.exists():
            text, disabled = recoveryconf.disable_settings(conf.read_text(), RECOVERY_PARAMETERS)
            if disabled:
                conf.write_text(text)
                log.warning(
                    "inherited recovery settings disabled in postgresql.conf", extra={"p88": {"names": disabled}}
                )
        else:  # Debian keeps it in /etc; the server needs one here
            conf.write_text("# written by p88backup restore --pitr (the backup had none)\n")
        (d / "pg_wal").mkdir(exist_ok=True)
        settings = {
            "restore_command": self.opt.restore_command,
            **recovery_settings(self.opt.target, self.opt.timeline),
            "archive_mode": "on" if self.opt.archive_mode else "off",
        }
        if self.opt.port:
            settings["port"] = str(self.opt.port)
        if self.opt.start:
            # Reachable for our checks whatever the source's network settings were.
            settings.update(listen_addresses="localhost", unix_socket_directories="")
        settings.update(self.opt.settings)
        auto = d / "postgresql.auto.conf"
        text, removed = recoveryconf.remove_settings(auto.read_text() if auto.exists() else "", RECOVERY_PARAMETERS)
        if removed:
            log.info("inherited settings replaced", extra={"p88": {"names": removed}})
        title = f"--pitr {self.opt.target.describe()} from base backup {backup.id}, {self.clock().isoformat()}"
        auto.write_text(text + recoveryconf.block(settings, title))
        (d / "recovery.signal").touch()

    def _chown(self, owner: str) -> None:
        pw = pwd.getpwnam(owner)
        for root, dirs, files in os.walk(self.opt.target_dir):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)
        os.chown(self.opt.target_dir, pw.pw_uid, pw.pw_gid)

    # -- starting -------------------------------------------------------------

    def _start_and_wait(self, owner: str | None, result: PitrResult, plan: RecoveryPlan) -> None:
        env = dict(self.opt.server_env if self.opt.server_env is not None else os.environ)
        server = RestoredServer(
            self.opt.target_dir,
            owner=owner,
            env=env,
            port=self.opt.port,
            pg_bin_dir=self.opt.pg_bin_dir,
            timeout=self.opt.timeout,
            sleep=self.sleep,
        )
        result.started, result.port, result.log_file = True, self.opt.port, str(server.logfile)
        server.start()
        promotion = server.wait_promoted(self.conninfo)
        result.promoted = True
        result.last_replayed_transaction = promotion.last_replayed_transaction
        result.lsn, result.timeline, result.stop_reason = promotion.lsn, promotion.timeline, promotion.stop_reason
        self._after_promotion(owner, promotion)
        if self.opt.stop:
            server.stop()
            conf = self.opt.target_dir / "postgresql.auto.conf"
            conf.write_text(recoveryconf.keep_only(conf.read_text(), ()))
            log.info("restored server stopped; p88backup's settings removed: the real server's configuration decides")
            result.stopped = True
        if self.opt.target.kind == "latest":
            self._check_replayed_all(plan, promotion, result)

    def _after_promotion(self, owner: str | None, promotion: Promotion) -> None:
        """Leave no recovery setting behind, and have the new timeline's history archived first."""
        d = self.opt.target_dir
        conf = d / "postgresql.auto.conf"
        trial = ("archive_mode", "port", "listen_addresses", "unix_socket_directories", *self.opt.settings)
        conf.write_text(recoveryconf.keep_only(conf.read_text(), trial))
        history = f"{promotion.timeline:08X}.history"
        status = d / "pg_wal" / "archive_status"
        if (d / "pg_wal" / history).exists() and not any(
            (status / f"{history}{s}").exists() for s in (".ready", ".done")
        ):
            # Promoted with archive_mode off: PostgreSQL did not mark it. Whoever archives this
            # cluster later (archive_command; wal-stream fetches history files itself) must
            # archive it, or 'latest' cannot follow the new timeline.
            status.mkdir(exist_ok=True)
            ready = status / f"{history}.ready"
            ready.touch()
            if owner:
                pw = pwd.getpwnam(owner)
                os.chown(ready, pw.pw_uid, pw.pw_gid)

    def _check_replayed_all(self, plan: RecoveryPlan, promotion: Promotion, result: PitrResult) -> None:
        """'latest' must have replayed every archived segment on its path: fail loudly if not."""
        if plan.replay_to is None or promotion.switchpoint is None:
            return
        segment_size = walnames.DEFAULT_SEGMENT_SIZE if promotion.segment_size is None else promotion.segment_size
        _, segno = walnames.parse_segment_name(plan.replay_to, segment_size)
        if promotion.switchpoint < walnames.segment_start_lsn(segno, segment_size):
            raise PitrTargetError(
                f"recovery ended at {walnames.format_lsn(promotion.switchpoint)}, before the newest archived WAL "
                f"({plan.replay_to}): the restored cluster lacks the newest changes"
                + (f" ({promotion.stop_reason})" if promotion.stop_reason else ""),
                hint=f"see {result.log_file}; run p88backup wal-verify",
            )
        result.replayed_to = plan.replay_to
