"""Base backups and point-in-time recovery: pg_basebackup into storage, planning, laying out, starting."""
