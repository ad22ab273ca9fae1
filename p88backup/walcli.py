"""``wal-push`` and ``wal-fetch``: the archive commands, without Click or pydantic.

PostgreSQL starts these once per WAL file, so start-up time is archive
throughput: this module reads its settings with :mod:`p88backup.rawconfig`
(the same contract and checks as every other command, without pydantic),
parses its few arguments by hand, and imports a storage backend only when it
is used (boto3 only for ``s3://``). ``tests/unit/test_wal_commands.py``
checks that a push never imports click, pydantic, boto3 or psycopg.

Exit statuses (:class:`p88backup.errors.ExitCode`): ``wal-push`` exits with
the failure's own code (3 for a bad config, 2 for a bad command line, never
0 or 1 for either); ``wal-fetch`` exits 1 only for "not in the archive" and
126 for everything else, bad command lines and bad configs included, since
PostgreSQL reads any status below 126 as "not found" and ends recovery.
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


_VALUE_OPTIONS = {"--config": "config", "--log-format": "log_format"}
LOG_FORMATS = ("json", "console")


def _take_option(argv: list[str], i: int, opts: dict[str, str | int | None]) -> int | None:
    """Consume the global option at ``argv[i]`` into ``opts``; the next index, or None if it is none."""
    a = argv[i]
    if a in _VALUE_OPTIONS and i + 1 < len(argv):
        opts[_VALUE_OPTIONS[a]] = argv[i + 1]
        return i + 2
    key, eq, value = a.partition("=")
    if eq and key in _VALUE_OPTIONS:
        opts[_VALUE_OPTIONS[key]] = value
        return i + 1
    if a == "--verbose" or (a.startswith("-v") and set(a[1:]) == {"v"}):
        opts["verbose"] = int(opts["verbose"] or 0) + (1 if a == "--verbose" else len(a) - 1)
        return i + 1
    return None


def split_argv(argv: list[str]) -> tuple[dict[str, str | int | None], str | None, list[str]] | None:
    """(global options, command, its arguments), or None if Click should parse this."""
    opts: dict[str, str | int | None] = {"config": None, "log_format": None, "verbose": 0}
    i = 0
    while i < len(argv):
        nxt = _take_option(argv, i, opts)
        if nxt is not None:
            i = nxt
        elif argv[i].startswith("-"):
            return None
        else:
            return opts, argv[i], argv[i + 1 :]
    return opts, None, []


def main(argv: list[str]) -> int:
    """Run a fast command; returns its exit status.

    ``wal-fetch`` never exits 1 unless the file is not in the archive: for
    PostgreSQL any other status below 126 also means "not found" and ends
    recovery early, so usage errors and unexpected failures exit 126.
    """
    split = split_argv(argv)
    assert split is not None and split[1] in FAST_COMMANDS
    opts, command, rest = split
    fetch = command == "wal-fetch"
    usage = FETCH_HELP if fetch else PUSH_HELP
    # Global options are accepted after the command too (`wal-fetch --config F NAME DEST`).
    args: list[str] = []
    i = 0
    while i < len(rest):
        if rest[i] in ("-h", "--help"):
            sys.stdout.write(usage)
            return 0
        nxt = _take_option(rest, i, opts)
        if nxt is not None:
            i = nxt
            continue
        args.append(rest[i])
        i += 1
    want = 2 if fetch else 1
    problem = None
    if len(args) != want or any(a.startswith("-") for a in args):
        problem = f"{command} takes {want} argument(s)"
    elif opts["log_format"] is not None and opts["log_format"] not in LOG_FORMATS:
        problem = f"--log-format must be one of {', '.join(LOG_FORMATS)}"
    if problem:
        sys.stderr.write(usage.split("\n\n")[0] + f"\n\nError: {problem}\n")
        return _status(fetch, "USAGE")

    try:
        import logging

        from p88backup import log
        from p88backup.errors import ExitCode, P88Error, restore_command_status

        log.configure(opts["log_format"] if isinstance(opts["log_format"], str) else None, int(opts["verbose"] or 0))
    except Exception as exc:  # a broken install must not look like "not in the archive"
        sys.stderr.write(f"p88backup {command}: cannot start: {exc!r}\n")
        return 126 if fetch else 1  # the exit-code table may be what failed to import
    wal_log = logging.getLogger("p88backup.wal")
    config = opts["config"] or os.environ.get("P88_CONFIG")
    try:
        archive = _open_archive(Path(str(config)) if config else None)
        if fetch:
            size = archive.fetch(args[0], Path(args[1]))
            wal_log.info("restored", extra=log.fields(file=args[0], bytes=size))
        else:
            result = archive.push(Path(args[0]))
            wal_log.info(
                "archived" if not result.already_archived else "already archived (identical)",
                extra=log.fields(file=result.name, raw_bytes=result.raw_size, stored_bytes=result.stored_size),
            )
        return 0
    except P88Error as exc:
        if fetch and restore_command_status(exc) == 1:
            wal_log.info("not in the archive", extra=log.fields(file=args[0]))
            return 1
        log.report_error(exc)
        return restore_command_status(exc) if fetch else int(exc.exit_code)
    except Exception as exc:  # unexpected: never let it look like "not found"
        wal_log.exception("unexpected failure in %s: %s", command, exc)
        return int(ExitCode.RESTORE_COMMAND_FAILED if fetch else ExitCode.ERROR)


def _status(fetch: bool, name: str) -> int:
    """The exit status for failure ``name`` (an ExitCode member): wal-fetch's is always 126."""
    from p88backup.errors import ExitCode

    return int(ExitCode.RESTORE_COMMAND_FAILED if fetch else ExitCode[name])


def _open_archive(config_file: Path | None):  # type: ignore[no-untyped-def]
    from p88backup.core.wal.archive import WalArchive
    from p88backup.rawconfig import load_archive_config
    from p88backup.storage import open_storage
    from p88backup.stream import make_codec

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
