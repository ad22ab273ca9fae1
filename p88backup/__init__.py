"""p88backup: backup and recovery for the Project 88 stack."""

__version__ = "0.1.0"
