"""``p88backup config``: show the effective settings, secrets redacted."""

from __future__ import annotations

import click

from p88backup.cli import render
from p88backup.cli.app import App, pass_app


@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of key = value lines.")
@pass_app
def config_cmd(app: App, as_json: bool) -> None:
    """Show the effective settings (environment over config file over defaults).

    Passwords are redacted. Use it to check what a cron line or a container
    will actually run with:

        P88_CONFIG=/etc/p88backup.toml p88backup config
    """
    data = app.settings.redacted()
    data["config_file"] = str(app.config_file) if app.config_file else None
    if as_json:
        render.emit_json(data)
    else:
        render.kv(render.flatten(data))
