from __future__ import annotations

import logging

import pytest

from p88backup.redact import SECRET_PARAMS, SecretFilter, redact_url, url_secrets


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?password=pw&sslmode=require", "postgresql://h/db?password=***&sslmode=require"),
        ("postgresql://h/db?sslmode=require&sslpassword=k%20ey", "postgresql://h/db?sslmode=require&sslpassword=***"),
        ("postgresql://h/db?oauth_client_secret=s&user=u", "postgresql://h/db?oauth_client_secret=***&user=u"),
        ("postgresql://h/db?PassWord=pw", "postgresql://h/db?PassWord=***"),
        ("postgresql://h/db?ss%6Cpassword=pw", "postgresql://h/db?ss%6Cpassword=***"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("http://admin:p%40ss@search:9200", "http://admin:***@search:9200"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


@pytest.mark.parametrize(
    ("url", "secrets"),
    [
        ("postgresql://u:p%40ss@h/db", ["p%40ss", "p@ss"]),
        ("postgresql://u@h/db?password=qp&sslpassword=k%20ey", ["qp", "k%20ey", "k ey"]),
        ("postgresql://u@h/db?sslmode=require", []),
        (None, []),
    ],
)
def test_url_secrets(url: str | None, secrets: list[str]) -> None:
    assert url_secrets(url) == secrets


def test_every_secret_parameter_of_the_installed_libpq_is_known() -> None:
    # libpq marks secret connection parameters with dispchar "*" (PQconndefaults).
    from psycopg import pq

    marked = {o.keyword.decode() for o in pq.Conninfo.get_defaults() if o.dispchar == b"*"}
    assert marked and marked <= SECRET_PARAMS


def test_filter_scrubs_messages_and_args() -> None:
    f = SecretFilter(["s3cret-value"])
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed with %s", ("s3cret-value!",), None)
    f.filter(record)
    assert record.getMessage() == "failed with ***!"


def test_filter_scrubs_structured_fields() -> None:
    # Debug lines carry a tool's argv as a field, not in the message.
    f = SecretFilter(["s3cret-value"])
    record = logging.LogRecord("x", logging.DEBUG, __file__, 1, "running", None, None)
    record.p88 = {"argv": ["pg_dump", "--dbname=sslpassword=s3cret-value"], "n": 3}
    f.filter(record)
    assert record.p88 == {"argv": ["pg_dump", "--dbname=sslpassword=***"], "n": 3}
