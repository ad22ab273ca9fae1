"""``keys``: which stored backups still need which age key (rotating and retiring keys)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from p88backup.cli import render
from p88backup.cli.app import App, pass_app

if TYPE_CHECKING:
    from p88backup.core.retention.keys import KeyReport


@click.command("keys")
@click.option(
    "--check",
    is_flag=True,
    help="Also try this host's age identity on every encrypted object stored (headers only) and list"
    " those it cannot open; exit 12 if there are any. Run it where only the keys that stay are.",
)
@click.option(
    "--key",
    "asked",
    multiple=True,
    metavar="AGE1...",
    help="Report on this recipient even if no manifest lists it (repeatable): is it still needed?",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@pass_app
def keys_cmd(app: App, check: bool, asked: tuple[str, ...], as_json: bool) -> None:
    """Which stored backups need which age key: may an old key be retired?

    Lists every recipient that a backup manifest names or the configuration
    sets, the dumps and base backups encrypted to it, and whether it is
    still needed: a key no longer configured is needed while a backup is
    readable only with retired keys, or while encrypted WAL stored before
    the configured keys took over remains (WAL has no manifest; timeline
    history files are kept for good). Needs no private key.

    With --check, the identity of age_identity_file is tried on the header of
    every encrypted object (dumps, base backups and WAL): the exact answer,
    whatever the WAL's age. On the drill host with only the new key, an
    empty list means the old key can go.

    \b
    Examples:
      p88backup keys
      p88backup keys --key age1...old... --check
    """
    from p88backup.core.retention.keys import key_report, stored_backups, stored_wal, unopenable
    from p88backup.errors import CryptoError

    codec = app.codec
    backups, bad = stored_backups(app.storage)
    report = key_report(backups, stored_wal(app.storage), list(codec.recipient_keys), bad, list(asked))
    closed: list[str] | None = None
    tried = 0
    if check:
        tried, closed = unopenable(app.storage, codec.identities())  # CryptoError without an identity
    data = {
        "configured": report.configured,
        "keys": [
            {
                "key": k.key,
                "configured": k.configured,
                "needed": k.needed,
                "why": k.why,
                "backups": k.backups,
                "only_retired_keys": k.only_retired,
            }
            for k in report.keys
        ],
        "wal": {
            "configured_keys_since": report.wal.since.isoformat() if report.wal.since else None,
            "maybe_retired_keys_only": report.wal.suspect,
            "history_files": report.wal.history,
        },
        "bad_manifests": report.bad_manifests,
    }
    if check:
        data["check"] = {"identity_file": str(codec.identity_file), "objects": tried, "cannot_open": closed}
    if as_json:
        render.emit_json(data)
    else:
        _show(report, tried, closed)
    if closed:
        raise CryptoError(
            f"the identity here cannot open {len(closed)} of {tried} encrypted objects (first: {closed[0]})",
            hint="keep the key that opens them until expire has removed them; history files: store them unencrypted "
            "(runbook §10)"
            " (docs/BU_recovery.md, key rotation)",
        )


def _show(report: KeyReport, tried: int, closed: list[str] | None) -> None:
    click.echo("configured recipients: " + (", ".join(report.configured) or "none (encryption off)"))
    for k in report.keys:
        state = "configured" if k.configured else "retired"
        click.echo(f"{k.key}  {state}, {len(k.backups)} backup(s)  NEEDED: {'yes' if k.needed else 'no'} ({k.why})")
        for label in k.only_retired:
            click.echo(f"    needs it: {label}")
    if report.wal.suspect:
        since = report.wal.since.isoformat() if report.wal.since else "never (no backup lists a configured key)"
        click.echo(
            f"WAL: {len(report.wal.suspect)} encrypted file(s) stored before the configured keys took over"
            f" ({since}) may need a retired key"
            + (f"; history files: {', '.join(report.wal.history)}" if report.wal.history else "")
        )
    for key in report.bad_manifests:
        click.echo(f"unreadable manifest (recipients unknown): {key}")
    if closed is not None:
        click.echo(f"check: this host's identity opens {tried - len(closed)} of {tried} encrypted objects")
        for key in closed:
            click.echo(f"    cannot open: {key}")
