from __future__ import annotations

from p88backup.core.logical.restore import filter_globals

GLOBALS = '''--
-- PostgreSQL database cluster dump
--

CREATE ROLE app;
ALTER ROLE app WITH NOSUPERUSER INHERIT LOGIN PASSWORD 'SCRAM-SHA-256$4096:abc';
CREATE ROLE postgres;
ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;
CREATE ROLE "Mixed ""Case""";
ALTER ROLE "Mixed ""Case""" WITH NOLOGIN;
ALTER ROLE app SET statement_timeout TO '5min';
GRANT app TO "Mixed ""Case""" GRANTED BY postgres;
CREATE TABLESPACE fast OWNER postgres LOCATION '/mnt/fast';
CREATE TABLESPACE slow OWNER postgres LOCATION '/mnt/slow';
'''


def test_existing_roles_and_tablespaces_are_left_alone() -> None:
    sql, created, kept = filter_globals(GLOBALS, roles={"postgres", "app"}, tablespaces={"fast"})
    assert created == ['Mixed "Case"']
    assert kept == ["app", "postgres"]
    assert "PASSWORD" not in sql  # an existing role's password is never reset
    assert "ALTER ROLE app" not in sql and "CREATE ROLE postgres" not in sql
    assert 'CREATE ROLE "Mixed ""Case""";' in sql and "GRANT app TO" in sql
    assert "CREATE TABLESPACE fast" not in sql and "CREATE TABLESPACE slow" in sql


def test_fresh_cluster_gets_everything_but_the_bootstrap_superuser() -> None:
    sql, created, kept = filter_globals(GLOBALS, roles={"postgres"}, tablespaces=set())
    assert created == ["app", 'Mixed "Case"'] and kept == ["postgres"]
    assert "PASSWORD 'SCRAM-SHA-256$4096:abc'" in sql
