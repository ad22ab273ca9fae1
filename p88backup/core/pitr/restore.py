"""``restore --pitr``: lay out a base backup, configure recovery, optionally start
the server and wait until the target is reached and the server promoted.

Before touching the target directory it proves the plan can work: a base
backup that precedes the target on the right timeline, and every WAL segment
from it onwards in the archive. Afterwards it checks the laid-out files
against the backup's own manifest (``pg_verifybackup``) before any recovery
setting is written.

The restored server gets ``archive_mode = off`` unless asked otherwise: a
trial restore that promoted and archived its new timeline into the
production archive would change what ``latest`` means for the next restore.
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
from p88backup.core.pitr.plan import Target, choose_base_backup, recovery_settings
from p88backup.core.pitr.server import RestoredServer
from p88backup.core.wal import names as walnames
from p88backup.core.wal.archive import WalArchive
from p88backup.core.wal.restorepoints import restore_point_lsn
from p88backup.errors import PgToolError, PitrTargetError, RefusedError, VerifyError
from p88backup.pg.conn import ConnInfo
from p88backup.pg.tools import client_for
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


def quote_conf(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


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
        self._start_only: list[str] = []

    # -- planning -------------------------------------------------------------

    def plan(self) -> tuple[BaseBackupManifest, int, int, dict[int, list[walnames.HistoryEntry]]]:
        """(base backup, timeline to follow, WAL segments available, histories) or PitrTargetError."""
        backups = self.catalog.basebackups()
        wal = dict(self.archive.objects())
        histories = self.archive.histories(wal.items())
        if self.opt.timeline:
            tli = self.opt.timeline
        else:  # what recovery_target_timeline = 'latest' will find: consecutive history files
            tli = min((b.timeline for b in backups), default=1)
            while tli + 1 in histories:
                tli += 1
        target = self.opt.target
        rp_lsn = self._restore_point_lsn(target.name) if target.kind == "name" and target.name else None
        if self.opt.base_backup:
            chosen = self.catalog.resolve("basebackup", self.opt.base_backup)
            assert isinstance(chosen, BaseBackupManifest)
        else:
            pick = choose_base_backup(backups, target, histories=histories, target_tli=tli, restore_point_lsn=rp_lsn)
            chosen = next(b for b in backups if b.id == pick.id)
        segments = [n for n in wal if len(n) == 24]
        end = None
        if target.kind == "lsn" and target.lsn is not None:
            end_tli = walnames.timeline_of_lsn(histories[tli], tli, target.lsn) if tli in histories else tli
            end = walnames.segment_for_lsn(end_tli, target.lsn)
        relevant = {t: h for t, h in histories.items() if t <= tli}
        try:
            # Continuity up to the newest archived segment; the target itself is checked after.
            gaps = walnames.find_gaps(segments, chosen.start_wal, None, relevant or None)
            if not gaps and end is not None and end in wal:
                gaps = walnames.find_gaps(segments, chosen.start_wal, end, relevant or None)
        except walnames.WalNameError as exc:
            raise PitrTargetError(f"cannot follow timeline {tli} from base backup {chosen.id}: {exc}") from None
        if gaps:
            first, last = gaps[0]
            raise PitrTargetError(
                f"WAL is missing from the archive: {first}"
                + (f" to {last}" if last != first else "")
                + f" (needed after base backup {chosen.id}); recovery cannot pass this gap",
                hint="run p88backup wal-verify; pick an earlier target, or a later base backup",
            )
        if end is not None and end not in wal:
            raise PitrTargetError(
                f"target {target.describe()} is beyond the newest archived WAL (segment {end} is not archived)",
                hint="the newest restorable point is --pitr latest",
            )
        if target.kind == "time" and target.time is not None and segments:
            newest = max((wal[s] for s in segments), key=lambda o: o.modified or datetime.min.replace(tzinfo=UTC))
            if newest.modified is not None and target.time > newest.modified:
                raise PitrTargetError(
                    f"target {target.time.isoformat()} is after the newest archived WAL "
                    f"(stored {newest.modified.isoformat()}); changes after that are not in the archive",
                    hint="restore to --pitr latest for the newest restorable point",
                )
        return chosen, tli, len(segments), histories

    def _restore_point_lsn(self, name: str) -> int | None:
        lsn = restore_point_lsn(self.storage, name)
        if lsn is None:
            log.warning(
                "restore point not recorded by p88backup restore-point; using the newest base backup",
                extra={"p88": {"name": name}},
            )
        return lsn

    # -- doing ----------------------------------------------------------------

    def run(self) -> PitrResult:
        t0 = time.monotonic()
        backup, tli, nseg, _ = self.plan()
        log.info(
            "restoring base backup",
            extra={
                "p88": {
                    "id": backup.id,
                    "target": self.opt.target.describe(),
                    "timeline": tli,
                    "dir": str(self.opt.target_dir),
                }
            },
        )
        owner = self._owner()
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
            backup.id, self.opt.target.describe(), str(self.opt.target_dir), tli, nseg, round(time.monotonic() - t0, 2)
        )
        if self.opt.start:
            self._start_and_wait(owner, result)
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
            tar = subprocess.Popen(
                ["tar", "-x", "-b", "2048", "-B", "-f", "-", "-C", str(self.opt.target_dir), "--no-same-owner"],
                stdin=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            assert tar.stdin is not None
            widen_pipe(tar.stdin.fileno())
            try:
                copy_stream(decoded, tar.stdin)
                tar.stdin.close()
            except BaseException:
                tar.kill()
                raise
            finally:
                raw.close()
            err = tar.stderr.read().decode(errors="replace") if tar.stderr else ""
            if tar.wait() != 0:
                raise PgToolError(f"tar could not extract {obj.key}: {err.strip()[-300:]}")

    def _verify(self, backup: BaseBackupManifest) -> None:
        tool = client_for("pg_verifybackup", backup.server_version_num // 10000, self.opt.pg_bin_dir)
        r = subprocess.run(
            [str(tool.path), "--no-parse-wal", "--quiet", str(self.opt.target_dir)], capture_output=True, text=True
        )
        if r.returncode != 0:
            raise VerifyError(f"restored files do not match the backup's manifest: {r.stderr.strip()[-500:]}")
        log.info("restored files match the backup manifest (pg_verifybackup)")

    def _configure(self, backup: BaseBackupManifest) -> None:
        d = self.opt.target_dir
        for stale in ("postmaster.pid", "postmaster.opts", "standby.signal", "recovery.signal"):
            (d / stale).unlink(missing_ok=True)
        if not (d / "postgresql.conf").exists():  # Debian keeps it in /etc; the server needs one here
            (d / "postgresql.conf").write_text("# written by p88backup restore --pitr (the backup had none)\n")
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
            self._start_only = ["listen_addresses", "unix_socket_directories"] + (
                ["port"] if self.opt.port_chosen else []
            )
        settings.update(self.opt.settings)
        lines = [
            f"\n# p88backup restore --pitr {self.opt.target.describe()} from base backup {backup.id}, "
            f"{self.clock().isoformat()}\n"
        ]
        lines += [f"{k} = {quote_conf(v)}\n" for k, v in settings.items()]
        with open(d / "postgresql.auto.conf", "a") as fh:
            fh.writelines(lines)
        (d / "recovery.signal").touch()

    def _chown(self, owner: str) -> None:
        pw = pwd.getpwnam(owner)
        for root, dirs, files in os.walk(self.opt.target_dir):
            for name in dirs + files:
                os.lchown(os.path.join(root, name), pw.pw_uid, pw.pw_gid)
        os.chown(self.opt.target_dir, pw.pw_uid, pw.pw_gid)

    # -- starting -------------------------------------------------------------

    def _start_and_wait(self, owner: str | None, result: PitrResult) -> None:
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
        if self.opt.stop:
            server.stop()
            self._drop_start_only_settings()
            result.stopped = True

    def _drop_start_only_settings(self) -> None:
        """After a clean stop: the data directory is ready for the real server (e.g. the db container)."""
        conf = self.opt.target_dir / "postgresql.auto.conf"
        keep = [
            ln
            for ln in conf.read_text().splitlines(keepends=True)
            if ln.split("=", 1)[0].strip() not in self._start_only
        ]
        conf.write_text("".join(keep))
        log.info("restored server stopped; trial settings removed", extra={"p88": {"removed": self._start_only}})
