"""Console-script entry point.

Kept free of heavy imports: the archive commands that PostgreSQL runs once
per WAL file are dispatched to :mod:`p88backup.walcli` before Click loads.
"""

from __future__ import annotations

import sys


def main() -> None:
    from p88backup.walcli import FAST_COMMANDS, split_argv

    split = split_argv(sys.argv[1:])
    if split is not None and split[1] in FAST_COMMANDS:
        from p88backup.walcli import main as fast_main

        sys.exit(fast_main(sys.argv[1:]))
    from p88backup.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":  # pragma: no cover
    main()
