from __future__ import annotations

import logging

import pytest

from p88backup.redact import SecretFilter, redact_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("postgresql://u:pw@h:5432/db", "postgresql://u:***@h:5432/db"),
        ("postgresql://u@h/db", "postgresql://u@h/db"),
        ("postgresql://h/db?password=pw&sslmode=require", "postgresql://h/db?password=***&sslmode=require"),
        ("s3://bucket/prefix", "s3://bucket/prefix"),
        ("http://admin:p%40ss@search:9200", "http://admin:***@search:9200"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


def test_filter_scrubs_messages_and_args() -> None:
    f = SecretFilter(["s3cret-value"])
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed with %s", ("s3cret-value!",), None)
    f.filter(record)
    assert record.getMessage() == "failed with ***!"
