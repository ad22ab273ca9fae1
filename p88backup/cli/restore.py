"""``restore``: a dump into a database (``--dump``)."""

from __future__ import annotations

import logging

import click

from p88backup.cli import render
from p88backup.cli.app import App, pass_app

log = logging.getLogger("p88backup")


@click.command("restore")
@click.option("--dump", "dump_ref", metavar="ID|latest", help="Restore this logical backup.")
@click.option("--target-db", metavar="NAME", help="Database to create from the dump (on P88_DATABASE_URL's server).")
@click.option("--database", "source_db", metavar="NAME", help="Which database of a multi-database dump.")
@click.option(
    "--jobs",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="pg_restore --jobs (stages the decoded archive in work_dir first).",
)
@click.option("--clean", is_flag=True, help="Drop and recreate --target-db if it exists (default: refuse).")
@click.option("--no-globals", is_flag=True, help="Do not create missing roles/tablespaces from the backup.")
@click.option("--no-check", is_flag=True, help="Skip comparing row counts with those recorded at backup time.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@pass_app
def restore_cmd(
    app: App,
    dump_ref: str | None,
    target_db: str | None,
    source_db: str | None,
    jobs: int,
    clean: bool,
    no_globals: bool,
    no_check: bool,
    as_json: bool,
) -> None:
    """Restore a backup.

    \b
    From a nightly dump into a new database:
      p88backup restore --dump latest --target-db p88_restored
      p88backup restore --dump 20261127T021500Z --target-db p88 --clean

    Missing roles are created from the dump's globals; existing roles are
    left unchanged. With one job the restore runs in a single transaction:
    it either completes or leaves nothing. Afterwards the row count of every
    table is compared with the count recorded at backup time.
    """
    from p88backup.catalog import Catalog
    from p88backup.catalog.models import DumpManifest
    from p88backup.core.restore_dump import DumpRestorer, RestoreOptions

    if not dump_ref:
        raise click.UsageError("say what to restore: --dump ID|latest")
    if not target_db:
        raise click.UsageError("--dump needs --target-db NAME")
    s = app.settings
    manifest = Catalog(app.storage).resolve("dump", dump_ref)
    assert isinstance(manifest, DumpManifest)
    options = RestoreOptions(
        target_db=target_db,
        source_db=source_db,
        jobs=jobs,
        clean=clean,
        globals=not no_globals,
        check_counts=not no_check,
        work_dir=s.work_dir,
        pg_bin_dir=s.pg_bin_dir,
    )
    result = DumpRestorer(app.conninfo, app.storage, app.codec, options).run(manifest)
    data = {
        "kind": "dump",
        "id": result.backup_id,
        "source_db": result.source_db,
        "target_db": result.target_db,
        "seconds": result.seconds,
        "roles_created": result.roles_created,
        "roles_left_unchanged": result.roles_kept,
        "tables_checked": result.tables_checked,
    }
    log.info("restore finished", extra={"p88": data})
    if as_json:
        render.emit_json(data)
    else:
        click.echo(
            f"restored dump {result.backup_id} ({result.source_db}) into {result.target_db} "
            f"in {render.human_duration(result.seconds)}; row counts checked on {result.tables_checked} tables"
        )
