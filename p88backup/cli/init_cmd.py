"""``p88backup init``: set a storage up once, before the first backup or archived WAL file."""

from __future__ import annotations

import click

from p88backup.cli import render
from p88backup.cli.app import App, pass_app


@click.command("init")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def init_cmd(app: App, as_json: bool) -> None:
    """Initialise the storage (P88_STORAGE_URL) once, when setting it up.

    Writes the marker p88backup.json at the storage's root: from then on
    every command recognises it as p88backup's storage, and refuses one
    without the marker (an unmounted volume, a wrong prefix) instead of
    writing into it or reporting it empty. For file:// it creates the root
    directory if missing (the only command that does); for s3:// the bucket
    must exist. Running it again changes nothing; on a storage that already
    holds backups from an older p88backup it adds the marker and keeps them.
    """
    from p88backup.storage.marker import initialise

    result = initialise(app.storage)
    if as_json:
        render.emit_json(result.as_dict())
        return
    marker = result.marker or {}
    since = f" (since {marker['created_at']}, {marker.get('created_by', '?')})" if "created_at" in marker else ""
    click.echo(
        {
            "initialised": f"initialised {result.url}",
            "adopted": f"initialised {result.url}: it already held backups, which are kept",
            "already": f"{result.url} is already initialised{since}; nothing to do",
        }[result.outcome]
    )
