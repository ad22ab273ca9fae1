"""Keep secrets out of output: URL password redaction and a log filter.

Standard library only, so the fast archive path can use it too.
"""

from __future__ import annotations

import logging

MASK = "***"


def url_password(url: str) -> str | None:
    """The password embedded in a URL, if any (``None`` when unparsable)."""
    from urllib.parse import urlsplit

    try:
        return urlsplit(url).password
    except ValueError:
        return None


def redact_url(url: str) -> str:
    """``postgresql://u:secret@h/db`` -> ``postgresql://u:***@h/db``.

    Query parameters named ``password`` are masked too (libpq accepts them).
    """
    from urllib.parse import urlsplit, urlunsplit  # here: the archive fast path never needs it

    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    if parts.password is not None:
        userinfo, _, hostinfo = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:{MASK}@{hostinfo}"
    query = parts.query
    if "password=" in query.lower():
        query = "&".join(
            f"{k}={MASK}" if k.lower() == "password" else f"{k}={v}"
            for k, _, v in (item.partition("=") for item in query.split("&"))
        )
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class SecretFilter(logging.Filter):
    """Replaces known secret strings in every log record's final message.

    A second line of defence: code should never log a secret in the first
    place, but a libpq or botocore error message might echo one back.
    """

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self._secrets: list[str] = []
        for s in secrets or []:
            self.add(s)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 3 and secret not in self._secrets:
            self._secrets.append(secret)

    def scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            message = self.scrub(record.getMessage())
            record.msg, record.args = message, None
        return True


SECRETS = SecretFilter()
"""Process-wide filter; the CLI root registers the secrets it learns."""
