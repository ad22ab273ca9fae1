"""Which globals statements restore --dump applies: only those about roles and tablespaces it
creates (issue 10 item 14). The lines are pg_dumpall --globals-only output of PostgreSQL 15, 16
and 18."""

from __future__ import annotations

import pytest

from p88backup.core.logical.globals_filter import filter_globals, split_statements

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
    plan = filter_globals(GLOBALS, roles={"postgres", "app"}, tablespaces={"fast"}, superusers={"postgres"})
    assert plan.roles_created == ['Mixed "Case"']
    assert plan.roles_kept == ["app", "postgres"]
    sql = plan.sql
    assert "PASSWORD" not in sql  # an existing role's password is never reset
    assert "ALTER ROLE app" not in sql and "CREATE ROLE postgres" not in sql
    assert 'CREATE ROLE "Mixed ""Case""";' in sql and 'GRANT app TO "Mixed ""Case""" GRANTED BY postgres;' in sql
    assert "CREATE TABLESPACE fast" not in sql and "CREATE TABLESPACE slow" in sql
    assert plan.skipped == []


def test_fresh_cluster_gets_everything_but_the_bootstrap_superuser() -> None:
    plan = filter_globals(GLOBALS, roles={"postgres"}, tablespaces=set(), superusers={"postgres"})
    assert plan.roles_created == ["app", 'Mixed "Case"'] and plan.roles_kept == ["postgres"]
    assert "PASSWORD 'SCRAM-SHA-256$4096:abc'" in plan.sql
    assert plan.sql == GLOBALS.replace("CREATE ROLE postgres;\n", "").replace(
        "ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS;\n", ""
    )


# The server already has p88_reader, p88_admin (CREATEROLE), the built-in pg_read_all_data, the
# superuser postgres and the tablespace slow. The dump creates p88_new, p88_team, "Mixed ""Case"""
# and the tablespace fast.
EXISTING_ROLES = {"postgres", "p88_reader", "p88_admin", "pg_read_all_data"}
EXISTING_SPACES = {"pg_default", "pg_global", "slow"}
PRELUDE = '''CREATE ROLE p88_new;
CREATE ROLE p88_team;
CREATE ROLE "Mixed ""Case""";
CREATE ROLE p88_reader;
CREATE TABLESPACE fast OWNER postgres LOCATION '/srv/fast';
'''
SCRAM = "SCRAM-SHA-256$4096:2TFQo7hVyl+uPWfBCG1J9w==$db5cyezP7+CsTC3tMjf8KUJYzMeqEFkii5Y2TbXjcIQ=:/LA2"

# statement -> apply (it is about what this restore creates), leave (only about what exists:
# dropped quietly) or skip (not applied, reported for the operator). "old" marks the statements the
# old line filter applied although they change an existing role or tablespace.
CASES = [
    # roles (15, 16, 18 alike)
    (
        "ALTER ROLE p88_reader WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS"
        f" CONNECTION LIMIT 7 PASSWORD '{SCRAM}' VALID UNTIL '2030-01-01 00:00:00+00';",
        "leave",
    ),
    ("ALTER ROLE p88_new WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB NOLOGIN NOREPLICATION NOBYPASSRLS;", "apply"),
    ("ALTER ROLE p88_reader SET statement_timeout TO '5min';", "leave"),
    ("ALTER ROLE p88_new SET statement_timeout TO '5min';", "apply"),
    ("COMMENT ON ROLE p88_new IS 'a new role';", "apply"),
    ("COMMENT ON ROLE p88_reader IS 'reads';", "leave"),  # old
    ("COMMENT ON ROLE p88_reader IS 'reads;\nand more';", "leave"),  # old: both lines
    ("SECURITY LABEL FOR selinux ON ROLE p88_new IS 'system_u:object_r:sepgsql_table_t:s0';", "apply"),
    ("SECURITY LABEL FOR selinux ON ROLE p88_reader IS 'system_u:object_r:sepgsql_table_t:s0';", "leave"),  # old
    # memberships, 15
    ("GRANT p88_reader TO p88_new GRANTED BY postgres;", "apply"),
    ("GRANT pg_read_all_data TO p88_new GRANTED BY postgres;", "apply"),
    ("GRANT p88_team TO p88_reader WITH ADMIN OPTION GRANTED BY postgres;", "skip"),  # old
    ("GRANT p88_new TO p88_admin GRANTED BY postgres;", "skip"),  # old
    ("GRANT p88_reader TO p88_admin GRANTED BY postgres;", "leave"),  # old
    # memberships, 16 and 18
    ("GRANT p88_reader TO p88_new WITH INHERIT TRUE GRANTED BY postgres;", "apply"),
    ('GRANT p88_new TO "Mixed ""Case""" WITH INHERIT TRUE GRANTED BY postgres;', "apply"),
    ("GRANT p88_team TO p88_reader WITH ADMIN OPTION, INHERIT TRUE GRANTED BY postgres;", "skip"),  # old
    ("GRANT p88_new TO p88_admin WITH INHERIT FALSE, SET FALSE GRANTED BY postgres;", "skip"),  # old
    ("GRANT p88_reader TO p88_admin WITH ADMIN OPTION, INHERIT TRUE GRANTED BY postgres;", "leave"),  # old
    # privileges on configuration parameters (15+)
    ("GRANT SET ON PARAMETER work_mem TO p88_new;", "apply"),
    ("GRANT SET ON PARAMETER work_mem TO p88_reader;", "leave"),  # old
    ("GRANT ALL ON PARAMETER work_mem TO p88_new WITH GRANT OPTION;", "apply"),
    # tablespaces
    ("CREATE TABLESPACE fast OWNER postgres LOCATION '/srv/fast';", "apply"),
    ("CREATE TABLESPACE slow OWNER postgres LOCATION '/srv/slow';", "leave"),
    ("ALTER TABLESPACE fast SET (random_page_cost=1.1);", "apply"),
    ("ALTER TABLESPACE slow SET (random_page_cost=1.1);", "leave"),  # old
    ("GRANT ALL ON TABLESPACE fast TO p88_reader;", "apply"),  # a new tablespace's own privileges
    ("GRANT ALL ON TABLESPACE slow TO p88_new;", "skip"),  # old
    ("GRANT ALL ON TABLESPACE slow TO p88_reader;", "leave"),  # old
    ("REVOKE ALL ON TABLESPACE slow FROM PUBLIC;", "leave"),  # old
    ("COMMENT ON TABLESPACE fast IS 'fast disk';", "apply"),
    ("COMMENT ON TABLESPACE slow IS 'slow disk';", "leave"),  # old
    ("SECURITY LABEL FOR selinux ON TABLESPACE slow IS 'system_u:object_r:sepgsql_table_t:s0';", "leave"),  # old
    # the session
    ("SET default_transaction_read_only = off;", "apply"),
    ("SET standard_conforming_strings = on;", "apply"),
    ("\\restrict sSErznFURofraYi9m1M8D1HenmNPf9JxtYjtMHbdenUNaCArmvqRFChnobJlGjn", "apply"),
    ('-- User Config "p88_reader"', "apply"),
    # what a globals dump of ours never holds: not run, but reported
    ("DROP ROLE p88_reader;", "skip"),  # old
    ("ALTER ROLE ALL SET work_mem TO '1GB';", "skip"),  # old
    ("\\connect other", "skip"),  # old
]


def outcome(statement: str) -> str:
    plan = filter_globals(PRELUDE + statement + "\n", EXISTING_ROLES, EXISTING_SPACES, superusers={"postgres"})
    applied = list(split_statements(plan.sql))
    if statement + "\n" in applied:
        return "apply"
    assert statement not in plan.sql
    if any(s.statement.split()[:3] == statement.split()[:3] for s in plan.skipped):
        return "skip"
    return "leave"


@pytest.mark.parametrize("statement, expected", CASES, ids=[c[0][:60] for c in CASES])
def test_statement(statement: str, expected: str) -> None:
    assert outcome(statement) == expected


def test_a_new_role_granted_to_an_existing_one_is_reported() -> None:
    sql = PRELUDE + "GRANT p88_team TO p88_reader WITH ADMIN OPTION, INHERIT TRUE GRANTED BY postgres;\n"
    plan = filter_globals(sql, EXISTING_ROLES, EXISTING_SPACES, superusers={"postgres"})
    assert plan.roles_created == ["p88_new", "p88_team", 'Mixed "Case"'] and plan.roles_kept == ["p88_reader"]
    [skipped] = plan.skipped
    assert skipped.statement == "GRANT p88_team TO p88_reader WITH ADMIN OPTION, INHERIT TRUE GRANTED BY postgres;"
    assert skipped.reason == "it would change the existing role p88_reader"


def test_a_reported_statement_never_shows_a_string() -> None:
    plan = filter_globals("CREATE USER mallory PASSWORD 'hunter2'\n  VALID UNTIL 'infinity';\n", set(), set())
    assert plan.sql == ""
    assert [s.statement for s in plan.skipped] == ["CREATE USER mallory PASSWORD '…' VALID UNTIL '…';"]


@pytest.mark.parametrize(
    "grant, applied",
    [
        # the grantor is a superuser, or a role this restore created with its ADMIN grants: kept
        (
            'GRANT p88_new TO "Mixed ""Case""" GRANTED BY postgres;',
            'GRANT p88_new TO "Mixed ""Case""" GRANTED BY postgres;',
        ),
        (
            'GRANT p88_new TO "Mixed ""Case""" GRANTED BY p88_team;',
            'GRANT p88_new TO "Mixed ""Case""" GRANTED BY p88_team;',
        ),
        # an existing role whose ADMIN on p88_new came from a grant not applied: 16+ would refuse it
        ('GRANT p88_new TO "Mixed ""Case""" GRANTED BY p88_admin;', 'GRANT p88_new TO "Mixed ""Case""";'),
        (
            "GRANT p88_reader TO p88_new WITH INHERIT TRUE GRANTED BY p88_admin;",
            "GRANT p88_reader TO p88_new WITH INHERIT TRUE;",
        ),
    ],
)
def test_grantor_kept_only_where_it_can_grant(grant: str, applied: str) -> None:
    plan = filter_globals(PRELUDE + grant + "\n", EXISTING_ROLES, EXISTING_SPACES, superusers={"postgres"})
    assert plan.sql.endswith("\n" + applied + "\n")


def test_statements_split_at_semicolons_outside_quotes() -> None:
    sql = "COMMENT ON ROLE \"a;b\" IS 'x;\ny';\nSET a = 1;  \n\\restrict k\n-- c;\nCOMMENT ON ROLE r IS E'it\\'s;';\n"
    assert list(split_statements(sql)) == [
        "COMMENT ON ROLE \"a;b\" IS 'x;\ny';\n",
        "SET a = 1;  \n",
        "\\restrict k\n",
        "-- c;\n",
        "COMMENT ON ROLE r IS E'it\\'s;';\n",
    ]
