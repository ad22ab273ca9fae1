"""``python -m p88backup``."""

from p88backup.entry import main

main()
