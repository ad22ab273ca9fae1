"""Exit codes and the error tree.

Every failure p88backup expects is a :class:`P88Error` subclass that carries
its exit code. Services raise them; exactly one place (``cli.main`` and the
fast entry for the archive commands) turns them into a process exit status.

Codes 1 and 2 belong to Click (generic error, usage error). Ours start at 3.
``wal-fetch`` is special: PostgreSQL treats exit status 1 from
``restore_command`` as "file does not exist" and ends recovery, so any other
failure there must exit with 126 or more, which makes recovery abort instead.
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    ERROR = 1  # Click: unexpected error (also: wal-fetch "no such file")
    USAGE = 2  # Click: bad command line
    CONFIG = 3  # invalid settings or config file
    LOCKED = 4  # another run of the same job holds the lock
    NOT_FOUND = 5  # backup, object or target not found
    VERIFY_FAILED = 6  # stored data failed a size/checksum/archive check
    PG_TOOL = 7  # a PostgreSQL client tool failed or none fits the server version
    STORAGE = 8  # storage unreachable, or a permanent storage error
    REFUSED = 9  # target exists / not empty and --clean / --force was not given
    CONFLICT = 10  # different content already stored under the same name (WAL)
    DRILL_FAILED = 11  # a restore drill ran and a check failed
    CRYPTO = 12  # encryption/decryption impossible (missing or wrong key)
    DATABASE = 13  # PostgreSQL unreachable or a query failed
    SEARCH = 14  # OpenSearch unreachable, or a bulk/alias operation failed
    PITR_TARGET = 15  # the recovery target cannot be reached with what is stored
    INTERRUPTED = 16  # stopped by a signal (SIGTERM/SIGINT) before finishing
    ARCHIVING = 17  # WAL is not reaching the archive (archive_command failing, wal-stream not shipping)
    UNHEALTHY = 18  # status: a backup, the WAL archive or the last drill is past its threshold, or a drill failed
    RESTORE_COMMAND_FAILED = 126  # wal-fetch: any failure other than "not found"


EXIT_CODE_HELP: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.ERROR: "unexpected error (wal-fetch: the requested file does not exist)",
    ExitCode.USAGE: "bad command line",
    ExitCode.CONFIG: "invalid settings or config file",
    ExitCode.LOCKED: "another run of the same job holds the lock",
    ExitCode.NOT_FOUND: "backup, object or target not found",
    ExitCode.VERIFY_FAILED: "stored data failed a size, checksum or archive check",
    ExitCode.PG_TOOL: "a PostgreSQL tool failed, or none fits the server version",
    ExitCode.STORAGE: "storage unreachable, or a permanent storage error",
    ExitCode.REFUSED: "target exists or is not empty; pass --clean / --force to overwrite",
    ExitCode.CONFLICT: "different content is already stored under the same name",
    ExitCode.DRILL_FAILED: "a restore drill ran and a check failed",
    ExitCode.CRYPTO: "encryption or decryption impossible (missing or wrong key)",
    ExitCode.DATABASE: "PostgreSQL unreachable or a query failed",
    ExitCode.SEARCH: "OpenSearch unreachable, or a bulk or alias operation failed",
    ExitCode.PITR_TARGET: "the recovery target cannot be reached with what is stored",
    ExitCode.INTERRUPTED: "stopped by a signal before finishing",
    ExitCode.ARCHIVING: "WAL is not reaching the archive (archive_command failing, wal-stream not shipping)",
    ExitCode.UNHEALTHY: "status: protection has stopped (a backup, the WAL archive or the last drill is "
    "older than its threshold, or the last drill failed)",
    ExitCode.RESTORE_COMMAND_FAILED: "wal-fetch failed for a reason other than 'not found'",
}


class P88Error(Exception):
    """Base of every expected failure. ``str(err)`` is the one-line message."""

    exit_code: ExitCode = ExitCode.ERROR
    hint: str | None = None

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        if hint is not None:
            self.hint = hint


class ConfigError(P88Error):
    exit_code = ExitCode.CONFIG


class LockedError(P88Error):
    exit_code = ExitCode.LOCKED


class NotFoundError(P88Error):
    exit_code = ExitCode.NOT_FOUND


class VerifyError(P88Error):
    exit_code = ExitCode.VERIFY_FAILED


class PgToolError(P88Error):
    exit_code = ExitCode.PG_TOOL


class StorageError(P88Error):
    """Storage failed in a way a retry did not (or cannot) fix."""

    exit_code = ExitCode.STORAGE


class TransientStorageError(StorageError):
    """Network trouble, 5xx, throttling: worth retrying with backoff."""


class ObjectNotFoundError(StorageError):
    """The key does not exist. Raised by ``open`` and ``stat``."""

    exit_code = ExitCode.NOT_FOUND


class ObjectExistsError(StorageError):
    """``put(..., overwrite=False)`` found the key already taken."""

    exit_code = ExitCode.CONFLICT


class StorageNotInitialisedError(StorageError):
    """The storage is there but carries no marker: never set up with ``p88backup init``,
    or not the storage meant (an empty mount point, a wrong prefix)."""


class RefusedError(P88Error):
    exit_code = ExitCode.REFUSED


class ConflictError(P88Error):
    exit_code = ExitCode.CONFLICT


class DrillFailedError(P88Error):
    exit_code = ExitCode.DRILL_FAILED


class CryptoError(P88Error):
    exit_code = ExitCode.CRYPTO


class DatabaseError(P88Error):
    exit_code = ExitCode.DATABASE


class SearchError(P88Error):
    exit_code = ExitCode.SEARCH


class PitrTargetError(P88Error):
    exit_code = ExitCode.PITR_TARGET


class InterruptedRunError(P88Error):
    exit_code = ExitCode.INTERRUPTED


class ArchivingError(P88Error):
    """WAL does not reach the archive: a base backup cannot become usable."""

    exit_code = ExitCode.ARCHIVING


class UnhealthyError(P88Error):
    """``status`` judged something unhealthy: the message names every failed check."""

    exit_code = ExitCode.UNHEALTHY


def restore_command_status(exc: BaseException) -> int:
    """Exit status of ``wal-fetch`` for a failure (PostgreSQL's restore_command contract).

    1 means "no such file in the archive" and makes PostgreSQL end recovery
    normally; anything else must abort recovery, hence 126.
    """
    if isinstance(exc, ObjectNotFoundError):
        return int(ExitCode.ERROR)
    return int(ExitCode.RESTORE_COMMAND_FAILED)
