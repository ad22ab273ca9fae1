"""``reindex``: rebuild OpenSearch indices from PostgreSQL (zero downtime)."""

from __future__ import annotations

import logging
from dataclasses import asdict

import click

from p88backup.cli import render
from p88backup.cli.app import App, pass_app
from p88backup.cli.backup import wait_option

log = logging.getLogger("p88backup")


@click.command("reindex")
@click.option("--index", "names", multiple=True, metavar="NAME", help="Alias to rebuild (repeatable; default: all).")
@click.option("--since", metavar="TS", help="Upsert rows changed since TS (ISO-8601 with zone) into the live index.")
@click.option("--dry-run", is_flag=True, help="Show the plan (new index, rows, what would be deleted); change nothing.")
@click.option("--rollback", "rollback", metavar="NAME", help="Point alias NAME back at its previous index.")
@click.option("--keep-failed", is_flag=True, help="Keep a half-built index after a failure, for inspection.")
@click.option(
    "--concurrency", type=click.IntRange(1, 16), default=2, show_default=True, help="Bulk requests in flight."
)
@click.option("--chunk-mb", type=click.FloatRange(0.1, 100), default=8, show_default=True, help="Bulk request size.")
@click.option("--json", "as_json", is_flag=True, help="Print results as JSON.")
@wait_option
@pass_app
def reindex_cmd(
    app: App,
    names: tuple[str, ...],
    since: str | None,
    dry_run: bool,
    rollback: str | None,
    keep_failed: bool,
    concurrency: int,
    chunk_mb: float,
    as_json: bool,
    wait: float,
) -> None:
    """Rebuild OpenSearch indices from PostgreSQL, without a moment of empty search.

    Each [[reindex]] table of the config defines an alias clients query and
    the SQL that produces its documents. A full rebuild loads a new
    versioned index from one database snapshot, checks its document count,
    then moves the alias in one atomic step; the previous index is kept for
    --rollback. A failure leaves the alias where it was.

    \b
      p88backup reindex                       rebuild every configured index
      p88backup reindex --index documents --dry-run
      p88backup reindex --index documents --since 2026-11-27T02:00:00Z
      p88backup reindex --rollback documents

    --since upserts changed rows only; rows deleted from PostgreSQL stay in
    the index until the next full rebuild (or use a soft-delete column).
    """
    from p88backup.errors import ConfigError
    from p88backup.locks import job_lock
    from p88backup.search.client import Search
    from p88backup.search.definition import IndexDefinition
    from p88backup.search.reindex import Reindexer, ReindexOptions
    from p88backup.search.source import PgSource
    from p88backup.times import TimeFormatError, parse_time

    s = app.settings
    try:
        when = parse_time(since) if since is not None else None
    except TimeFormatError as exc:
        raise ConfigError(f"--since: {exc}") from None
    if not s.opensearch_url:
        raise ConfigError("no OpenSearch configured", hint="set P88_OPENSEARCH_URL=http://search:9200")
    defs = {d.index: d for d in s.reindex}
    wanted = [rollback] if rollback else (list(names) or list(defs))
    unknown = [n for n in wanted if n not in defs]
    if unknown or not wanted:
        known = ", ".join(defs) or "none"
        raise ConfigError(f"no [[reindex]] definition for {', '.join(unknown) or 'any index'} (configured: {known})")
    search = Search(s.opensearch_url, retry_deadline=s.retry_deadline_seconds)
    options = ReindexOptions(
        chunk_bytes=int(chunk_mb * 1024 * 1024),
        concurrency=concurrency,
        keep_failed=keep_failed,
        rejected_deadline=s.retry_deadline_seconds,
    )
    results = []
    try:
        for name in wanted:
            d = defs[name]
            definition = IndexDefinition.load(
                d.index, d.query, d.id_column, d.updated_at_column, d.mappings, d.settings
            )
            source = PgSource(app.conninfo, definition, fetch_rows=options.fetch_rows)
            with job_lock(s.lock_dir, f"reindex-{name}", wait=wait):
                from p88backup.cli.progress import item_progress

                with item_progress(f"reindex {name}") as progress:
                    r = Reindexer(search, source, definition, options, progress=progress)
                    if rollback:
                        result = r.rollback()
                    elif when is not None:
                        result = r.since(when)
                    else:
                        result = r.full(dry_run=dry_run)
            data = asdict(result) | {"docs_per_second": result.docs_per_second}
            log.info("reindex finished" if not dry_run else "reindex plan", extra={"p88": data})
            results.append(data)
            if not as_json:
                click.echo(_describe(result))
    finally:
        search.close()
    if as_json:
        render.emit_json(results if len(results) > 1 else results[0])


def _describe(r: object) -> str:
    from p88backup.search.reindex import ReindexResult

    assert isinstance(r, ReindexResult)
    if r.mode == "rollback":
        return f"{r.alias}: alias moved back to {r.index} (was {r.previous})"
    if r.mode == "since":
        return f"{r.alias}: {r.actions} changed rows upserted into {r.index} in {render.human_duration(r.seconds)}"
    deleted = ", ".join(r.deleted)
    if r.dry_run:
        if r.migrated:
            then = f"replace the plain index {r.alias} by the alias (its data kept as {r.previous})"
        else:
            then = f"move the alias from {r.previous or '-'}"
        return f"{r.alias}: would build {r.index} from {r.rows} rows, then {then}" + (
            f"; would delete {deleted}" if deleted else ""
        )
    if r.migrated:
        moved = f"the plain index {r.alias} replaced by the alias (its data kept as {r.previous})"
    else:
        moved = f"alias moved from {r.previous or '-'}"
    return f"{r.alias}: {r.actions} documents into {r.index} ({r.docs_per_second:.0f} docs/s), {moved}" + (
        f"; deleted {deleted}" if deleted else ""
    )
