"""Keep secrets out of output: URL redaction, the libpq secret parameters, and a log filter.

Standard library only, so the fast archive path can use it too.

libpq marks some connection parameters as secret (``PQconndefaults``
``dispchar`` ``"*"``): :data:`SECRET_PARAMS`. A URL may carry them in its
user-info (the password) or in its query (``?password=...&sslpassword=...``);
both places are redacted and registered with the log filter, and
``tests/unit/test_redact.py`` checks the list against the installed libpq.
"""

from __future__ import annotations

import logging

MASK = "***"

SECRET_PARAMS = frozenset({"password", "sslpassword", "oauth_client_secret"})
"""libpq connection parameters whose value is a secret (dispchar ``*``)."""


def url_secrets(url: str | None) -> list[str]:
    """Every secret value in ``url``: the user-info password and secret query
    parameters, each as written (percent-encoded) and decoded, so a log line
    that echoes either form is scrubbed."""
    if not url:
        return []
    from urllib.parse import unquote, urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return []
    found: list[str] = []
    userinfo = parts.netloc.rpartition("@")[0]
    if ":" in userinfo:
        found.append(userinfo.split(":", 1)[1])
    for item in parts.query.split("&"):
        key, eq, value = item.partition("=")
        if eq and unquote(key).lower() in SECRET_PARAMS:
            found.append(value)
    out: list[str] = []
    for raw in found:
        for form in (raw, unquote(raw)):
            if form and form not in out:
                out.append(form)
    return out


def redact_url(url: str) -> str:
    """``postgresql://u:secret@h/db?sslpassword=x`` -> ``postgresql://u:***@h/db?sslpassword=***``.

    The user-info password and every libpq secret parameter in the query are
    masked (libpq accepts them there too).
    """
    from urllib.parse import unquote, urlsplit, urlunsplit  # here: the archive fast path never needs it

    try:
        parts = urlsplit(url)
    except ValueError:
        return MASK
    netloc = parts.netloc
    userinfo, at, hostinfo = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.split(':', 1)[0]}:{MASK}@{hostinfo}"
    query = parts.query
    if query:
        items = []
        for item in query.split("&"):
            key, eq, value = item.partition("=")
            items.append(f"{key}={MASK}" if eq and unquote(key).lower() in SECRET_PARAMS else item)
        query = "&".join(items)
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


class SecretFilter(logging.Filter):
    """Replaces known secret strings in every log record's message and structured fields.

    A second line of defence: code should never log a secret in the first
    place, but a libpq or botocore error message might echo one back, and a
    debug line may carry a tool's argv in its fields.
    """

    def __init__(self, secrets: list[str] | None = None) -> None:
        super().__init__()
        self._secrets: list[str] = []
        for s in secrets or []:
            self.add(s)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 3 and secret not in self._secrets:
            self._secrets.append(secret)
            # Longest first: a secret that contains another is masked whole.
            self._secrets.sort(key=len, reverse=True)

    def scrub(self, text: str) -> str:
        for s in self._secrets:
            text = text.replace(s, MASK)
        return text

    def _scrub_value(self, value: object) -> object:
        if isinstance(value, str):
            return self.scrub(value)
        if isinstance(value, list | tuple):
            return [self._scrub_value(v) for v in value]
        if isinstance(value, dict):
            return {k: self._scrub_value(v) for k, v in value.items()}
        return value

    def filter(self, record: logging.LogRecord) -> bool:
        if self._secrets:
            message = self.scrub(record.getMessage())
            record.msg, record.args = message, None
            fields = getattr(record, "p88", None)
            if isinstance(fields, dict):
                record.p88 = self._scrub_value(fields)
        return True


SECRETS = SecretFilter()
"""Process-wide filter; the CLI root registers the secrets it learns."""
