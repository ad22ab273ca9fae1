#!/bin/bash
# Runs once, when the db volume is first initialised (docker-entrypoint-initdb.d).
# Creates the role the backup sidecar uses: it may read all data (pg_dump), stream WAL and take
# base backups (REPLICATION), and nothing else. Its password comes from the environment.
set -euo pipefail
: "${P88_BACKUP_PASSWORD:?set P88_BACKUP_PASSWORD for the db service}"
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
     -v pw="$P88_BACKUP_PASSWORD" <<'SQL'
CREATE ROLE backup WITH LOGIN REPLICATION PASSWORD :'pw';
GRANT pg_read_all_data TO backup;
GRANT pg_monitor TO backup;
GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO backup;
GRANT EXECUTE ON FUNCTION pg_switch_wal() TO backup;
SQL
# Replication connections from the sidecar (the image's default rules cover databases only).
echo "host replication backup all scram-sha-256" >> "$PGDATA/pg_hba.conf"
