"""libpq secret parameters (password, sslpassword, ...) never reach a conninfo string: tools
get them from PGPASSWORD and an in-memory service file that a real libpq reads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from p88backup.errors import ConfigError
from p88backup.pg.conn import ConnInfo

URL = "postgresql://backup:user-pw@db:5432/p88?sslpassword=key%20secret&sslmode=require"


def test_secrets_are_taken_out_of_the_parameters() -> None:
    ci = ConnInfo.from_url(URL)
    assert ci.password == "user-pw" and ci.secrets == {"sslpassword": "key secret"}
    assert ci.params["sslmode"] == "require"
    for text in (ci.dsn(), ci.with_db("other").dsn(), repr(ci), ci.describe()):
        assert "user-pw" not in text and "key secret" not in text and "key%20secret" not in text
    assert ConnInfo.from_url("postgresql://u@h/db?password=q-pw").password == "q-pw"


def test_tools_read_the_secrets_through_libpq_itself() -> None:
    env = ConnInfo.from_url(URL).env({"PATH": os.environ.get("PATH", "")})
    assert env["PGPASSWORD"] == "user-pw"
    assert "key secret" not in "".join(env.values())  # not in the environment either: a file only we can open
    # What libpq (the one psycopg carries) sees in a child process: service file values applied.
    probe = (
        "from psycopg import pq\n"
        "print({o.keyword.decode(): (o.val or b'').decode() for o in pq.Conninfo.get_defaults()"
        " if o.keyword in (b'sslpassword', b'password')})"
    )
    r = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "{'password': 'user-pw', 'sslpassword': 'key secret'}"


def test_no_service_file_without_such_secrets() -> None:
    env = ConnInfo.from_url("postgresql://u:pw@h/db").env({})
    assert env == {"PGPASSWORD": "pw"}


@pytest.mark.parametrize(
    ("url", "env", "message"),
    [
        ("postgresql://h/db?sslpassword=x&service=prod", {}, "cannot be combined with service="),
        ("postgresql://h/db?sslpassword=ends-in-space%20", {}, "cannot end with a space"),
        ("postgresql://h/db?sslpassword=two%0Alines", {}, "line break"),
        ("postgresql://h/db?sslpassword=x", {"PGSERVICE": "prod"}, "PGSERVICE is set"),
    ],
)
def test_what_a_service_file_cannot_carry_is_refused(url: str, env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        ConnInfo.from_url(url).env(env)
