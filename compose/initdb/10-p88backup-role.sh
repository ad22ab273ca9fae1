#!/bin/bash
# Runs once, when the db volume is first initialised (docker-entrypoint-initdb.d); on an existing
# volume run the same statements by hand (compose/README.md).
#
# backup:       the role of the backup sidecar: it may read all data (pg_dump), stream WAL and
#               take base backups (REPLICATION), mark restore points, and nothing else.
# p88_monitor:  grafana-agent's postgres_exporter: the statistics views (pg_monitor), no data.
# Their passwords come from the environment, never from this file.
set -euo pipefail
: "${P88_BACKUP_PASSWORD:?set P88_BACKUP_PASSWORD for the db service}"
: "${P88_MONITOR_PASSWORD:?set P88_MONITOR_PASSWORD for the db service}"
# psql reads the passwords from its environment (\getenv, psql 15+): never on a command line,
# where any process of the container could read them.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
\getenv pw P88_BACKUP_PASSWORD
\getenv monitor_pw P88_MONITOR_PASSWORD
CREATE ROLE backup WITH LOGIN REPLICATION PASSWORD :'pw';
GRANT pg_read_all_data TO backup;
GRANT pg_monitor TO backup;
GRANT EXECUTE ON FUNCTION pg_create_restore_point(text) TO backup;
GRANT EXECUTE ON FUNCTION pg_switch_wal() TO backup;
CREATE ROLE p88_monitor WITH LOGIN PASSWORD :'monitor_pw';
GRANT pg_monitor TO p88_monitor;
SQL
# Replication connections from the sidecar: the image's own rule (host all all all) covers
# databases only, never the replication pseudo-database. Read at the server's next start, which
# follows these scripts.
echo "host replication backup all scram-sha-256" >> "$PGDATA/pg_hba.conf"
