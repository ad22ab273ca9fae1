"""Console-script entry point.

Kept free of heavy imports: the archive commands that PostgreSQL runs once
per WAL segment are dispatched to a fast path before Click is loaded.
"""

from __future__ import annotations


def main() -> None:
    from p88backup.cli.main import main as cli_main

    cli_main()


if __name__ == "__main__":  # pragma: no cover
    main()
