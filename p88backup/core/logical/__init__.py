"""Logical backups: pg_dump into storage, restore into a database, verify what is stored."""
