# The p88backup sidecar image.
#
# Built on the same PostgreSQL image as the database, so every PostgreSQL program p88backup runs
# (pg_dump, pg_basebackup, pg_receivewal, pg_verifybackup, and initdb/postgres for restore drills)
# is exactly the server's version, and the postgres user (uid 999) matches the db container's.
# The build context is the repository root; /.dockerignore keeps it to what is copied below.
ARG PG_MAJOR=16
FROM postgres:${PG_MAJOR}-bookworm

RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv age zstd tar \
 && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md constraints.txt /src/
COPY p88backup /src/p88backup
RUN python3 -m venv /opt/p88backup \
 && /opt/p88backup/bin/pip install --no-cache-dir -c /src/constraints.txt "/src[binary]" \
 && /opt/p88backup/bin/python -m compileall -q /opt/p88backup \
 && ln -s /opt/p88backup/bin/p88backup /usr/local/bin/p88backup \
 && rm -rf /src

# Spool for wal-stream and scratch space for directory dumps and drills: a volume, not the image.
RUN install -d -o postgres -g postgres -m 0700 /var/lib/p88backup /var/backups/p88
USER postgres
WORKDIR /var/lib/p88backup
ENV P88_WORK_DIR=/var/lib/p88backup/work \
    P88_LOCK_DIR=/var/lib/p88backup/locks \
    P88_PG_BIN_DIR=/usr/lib/postgresql/${PG_MAJOR}/bin

# The sidecar: wal-stream supervised, the scheduled jobs, /healthz and /metrics on :9188.
# One-off commands replace it: docker compose run --rm backup dump
ENTRYPOINT ["p88backup"]
CMD ["schedule"]
