"""``wal-push`` and ``wal-fetch``: the archive commands, without Click or pydantic.

PostgreSQL starts these once per WAL file, so start-up time is archive
throughput: this module reads its settings with :mod:`p88backup.rawconfig`,
parses its few arguments by hand, and imports a storage backend only when it
is used (boto3 only for ``s3://``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

PUSH_HELP = """Usage: p88backup wal-push [--config FILE] PATH

  Archive one WAL file; for archive_command:

      archive_command = 'p88backup wal-push %p'

  Compresses (zstd) and, when age recipients are configured, encrypts the
  file, and exits 0 only once it is durably stored. Pushing a file that is
  already archived with identical content exits 0; different content under
  the same name exits 10 and the stored object is left untouched.
"""

FETCH_HELP = """Usage: p88backup wal-fetch [--config FILE] NAME DEST

  Restore one WAL file from the archive; for restore_command:

      restore_command = 'p88backup wal-fetch %f %p'

  Exits 1 only when NAME is not in the archive (PostgreSQL then ends
  recovery normally). Any other failure (storage down, checksum mismatch,
  missing key, a file that is not what its name says) exits 126, so that
  PostgreSQL aborts recovery instead of promoting early.
"""

FAST_COMMANDS = ("wal-push", "wal-fetch")


def split_argv(argv: list[str]) -> tuple[dict[str, str | int | None], str | None, list[str]] | None:
    """(global options, command, its arguments), or None if Click should parse this."""
    opts: dict[str, str | int | None] = {"config": None, "log_format": None, "verbose": 0}
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in ("--config", "--log-format") and i + 1 < len(argv):
            opts["config" if a == "--config" else "log_format"] = argv[i + 1]
            i += 2
        elif a.startswith(("--config=", "--log-format=")):
            key, _, value = a.partition("=")
            opts["config" if key == "--config" else "log_format"] = value
            i += 1
        elif a in ("-v", "--verbose") or (a.startswith("-v") and set(a[1:]) == {"v"}):
            opts["verbose"] = int(opts["verbose"] or 0) + max(1, len(a) - 1 if a != "--verbose" else 1)
            i += 1
        elif a.startswith("-"):
            return None
        else:
            return opts, a, argv[i + 1 :]
    return opts, None, []


def main(argv: list[str]) -> int:
    """Run a fast command; returns its exit status."""
    split = split_argv(argv)
    assert split is not None and split[1] in FAST_COMMANDS
    opts, command, args = split
    usage = PUSH_HELP if command == "wal-push" else FETCH_HELP
    if "-h" in args or "--help" in args:
        sys.stdout.write(usage)
        return 0
    want = 1 if command == "wal-push" else 2
    if len(args) != want or any(a.startswith("-") for a in args):
        sys.stderr.write(usage.split("\n\n")[0] + f"\n\nError: {command} takes {want} argument(s)\n")
        return 2

    import logging

    from p88backup import log
    from p88backup.errors import P88Error, restore_command_status

    log.configure(opts["log_format"] if isinstance(opts["log_format"], str) else None, int(opts["verbose"] or 0))
    wal_log = logging.getLogger("p88backup.wal")
    config = opts["config"] or os.environ.get("P88_CONFIG")
    try:
        archive = _open_archive(Path(str(config)) if config else None)
        if command == "wal-push":
            result = archive.push(Path(args[0]))
            wal_log.info(
                "archived" if not result.already_archived else "already archived (identical)",
                extra=log.fields(file=result.name, raw_bytes=result.raw_size, stored_bytes=result.stored_size),
            )
        else:
            size = archive.fetch(args[0], Path(args[1]))
            wal_log.info("restored", extra=log.fields(file=args[0], bytes=size))
        return 0
    except P88Error as exc:
        if command == "wal-fetch" and restore_command_status(exc) == 1:
            wal_log.info("not in the archive", extra=log.fields(file=args[0]))
            return 1
        log.report_error(exc)
        return restore_command_status(exc) if command == "wal-fetch" else int(exc.exit_code)
    except Exception as exc:  # unexpected: never let it look like "not found"
        wal_log.exception("unexpected failure in %s: %s", command, exc)
        return restore_command_status(exc) if command == "wal-fetch" else 1


def _open_archive(config_file: Path | None):  # type: ignore[no-untyped-def]
    from p88backup.core.codecs import make_codec
    from p88backup.core.wal import WalArchive
    from p88backup.rawconfig import load_archive_config
    from p88backup.storage import open_storage

    cfg = load_archive_config(config_file)
    codec = make_codec(
        level=cfg.compression_level,
        # One thread: a 16 MiB segment compresses as fast, with less CPU taken from the
        # server running beside us (bench/pitr_bench.py).
        threads=1,
        recipients=cfg.age_recipients,
        recipients_file=cfg.age_recipients_file,
        identity_file=cfg.age_identity_file,
    )
    return WalArchive(open_storage(cfg.storage_url, retry_deadline=cfg.retry_deadline_seconds), codec)
