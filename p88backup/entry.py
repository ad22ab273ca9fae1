"""Console-script entry point.

Kept free of heavy imports: the archive commands that PostgreSQL runs once
per WAL file are dispatched to :mod:`p88backup.walcli` before Click loads.

A command line the fast path cannot parse goes to Click. If it mentions
``wal-fetch`` it is most likely a ``restore_command`` (``p88backup --bogus
wal-fetch %f %p``), and Click's usage status 2 would read as "not in the
archive" and end recovery early: any failure there exits 126 instead.
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # not typing's: importing typing costs wal-push ~3 ms per segment
if TYPE_CHECKING:
    from typing import NoReturn


def main() -> NoReturn:
    # No pydantic plugins are used: skip the scan of every installed package's entry points.
    os.environ.setdefault("PYDANTIC_DISABLE_PLUGINS", "__all__")
    try:
        from p88backup.walcli import FAST_COMMANDS, split_argv
        from p88backup.walcli import main as fast_main
    except Exception:
        if "wal-fetch" in sys.argv:
            # restore_command: any status below 126 reads as "not in the archive" and
            # ends recovery early; a broken install must abort recovery instead.
            import traceback

            traceback.print_exc()
            leave(126)
        raise
    split = split_argv(sys.argv[1:])
    if split is not None and split[1] in FAST_COMMANDS:
        leave(fast_main(sys.argv[1:]))
    if "wal-fetch" not in sys.argv[1:]:
        from p88backup.cli.main import run

        leave(run())
    leave(run_for_restore_command())


def run_for_restore_command() -> int:
    """Click on a command line that names ``wal-fetch``: never a status from 1 to 125.

    When Click does reach ``wal-fetch`` it exits through ``SystemExit`` with
    the fast path's own status (1 only for "not in the archive"), which
    passes through untouched.
    """
    failed = 126  # ExitCode.RESTORE_COMMAND_FAILED, should importing the package be what fails
    try:
        from p88backup.cli.main import run
        from p88backup.errors import ExitCode

        failed = int(ExitCode.RESTORE_COMMAND_FAILED)
        code = run()
    except SystemExit:
        raise
    except BaseException:
        import traceback

        traceback.print_exc()
        return failed
    # restore_command: any status below 126 reads as "not in the archive".
    return code if code == 0 or code >= failed else failed


def leave(code: int) -> NoReturn:
    """Exit with ``code`` without tearing the interpreter down.

    Commands store, fsync and close everything they write before they
    return. What a normal exit adds is freeing every module and object one
    by one: ~80 ms after a dump (measured with strace), paid by every cron
    job and every archive_command call. Here the process first does what
    matters of that shutdown (waits for non-daemon threads, flushes log
    handlers and stdio) and then ends.
    """
    # Only what the command loaded: `wal-push --help` must not pay for importing these.
    threading = sys.modules.get("threading")
    if threading is not None:
        current = threading.current_thread()
        for thread in threading.enumerate():
            if thread is not current and not thread.daemon:
                thread.join()
    logging = sys.modules.get("logging")
    if logging is not None:
        logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed early (`| head`) or already closed
            pass
    os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    main()
