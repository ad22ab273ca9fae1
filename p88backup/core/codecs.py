"""Building the stream codec from configuration (shared by every writer and reader)."""

from __future__ import annotations

from pathlib import Path

from p88backup.errors import CryptoError
from p88backup.stream import Codec, parse_recipients


def make_codec(
    *,
    level: int = 3,
    threads: int = 0,
    recipients: list[str] | None = None,
    recipients_file: Path | None = None,
    identity_file: Path | None = None,
) -> Codec:
    """A codec for writing (recipients) and reading (identity file).

    Encryption is on exactly when recipients are configured; we never make
    up a key. Recipients are parsed here so a typo fails before any work.
    """
    keys = [k.strip() for k in recipients or [] if k.strip()]
    if recipients_file is not None:
        try:
            lines = recipients_file.read_text().splitlines()
        except OSError as exc:
            raise CryptoError(f"cannot read age recipients file {recipients_file}: {exc.strerror}") from None
        keys.extend(k.strip() for k in lines if k.strip() and not k.strip().startswith("#"))
    parse_recipients(keys)
    return Codec(level=level, threads=threads, recipient_keys=keys, identity_file=identity_file)
