"""``expire``: retention for dumps (GFS), base backups and WAL (the live timeline), plus cleanup of interrupted runs."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import click

from p88backup.cli import render
from p88backup.cli.app import App, pass_app
from p88backup.cli.backup import wait_option

log = logging.getLogger("p88backup")


@click.command("expire")
@click.option("--dry-run", is_flag=True, help="Show exactly what would be deleted, delete nothing.")
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@wait_option
@pass_app
def expire_cmd(app: App, dry_run: bool, as_json: bool, wait: float) -> None:
    """Delete backups that retention no longer keeps.

    Dumps follow GFS (retention.keep_daily / keep_weekly / keep_monthly, and
    never fewer than keep_min). Base backups follow the live timeline (the
    one recovery_target_timeline = 'latest' follows, read from the archived
    history files): of the backups on its history, the newest
    retention.keep_base_backups plus any younger than
    retention.base_backup_window_days. A backup on a branch abandoned by a
    point-in-time restore is never counted; it is kept while younger than
    the window or newer than every backup on the live history. WAL is
    deleted only when no retained base backup needs it. The newest good
    backup of each kind is never deleted. Manifests that do not describe
    their own folder are skipped and reported, and hold WAL expiry back.
    Incomplete runs older than retention.orphan_grace_hours go too, and drill
    reports beyond the newest 10.
    """
    from p88backup.core.retention.expire import Expirer
    from p88backup.core.retention.policy import BaseBackupPolicy, GfsPolicy
    from p88backup.core.wal.archive import WalArchive
    from p88backup.locks import job_lock

    s = app.settings
    r = s.retention
    policy = GfsPolicy(r.keep_daily, r.keep_weekly, r.keep_monthly, r.keep_min)
    expirer = Expirer(
        app.storage,
        policy,
        orphan_grace=timedelta(hours=r.orphan_grace_hours),
        lock_dir=s.lock_dir,
        base_policy=BaseBackupPolicy(r.keep_base_backups, s.base_backup_window),
        archive=WalArchive(app.storage, app.codec),
    )
    with job_lock(s.lock_dir, "expire", wait=wait):
        plan = expirer.plan(datetime.now(UTC))
        if not dry_run:
            expirer.apply(plan)
    data = plan.as_dict()
    data["dry_run"] = dry_run
    if as_json:
        render.emit_json(data)
        return
    verb = "would delete" if dry_run else "deleted"
    for title, decision in (("dumps", plan.dumps), ("base backups", plan.basebackups)):
        rows = [(i, "keep", "; ".join(reasons)) for i, reasons in sorted(decision.keep.items())]
        rows += [(i, verb, decision.expire_reasons.get(i, "")) for i in decision.expire]
        if rows:
            render.table(title, ["id", "action", "why"], sorted(rows))
    base = plan.basebackups
    if base.live_timeline is not None and (base.keep or base.expire):
        click.echo(f"live timeline: {base.live_timeline}")
    for bid, note in sorted(base.notes.items()):
        click.echo(f"  {bid}: {base.branch[bid]} ({note})")
    if base.held:
        click.echo(f"base backups all kept: {base.held}")
    if plan.wal:
        click.echo(f"{verb} {len(plan.wal)} WAL objects needed by no retained base backup:")
        for run in plan.wal_ranges():
            click.echo(f"  timeline {run['timeline']}: {run['first']} .. {run['last']} ({run['count']} files)")
    elif plan.wal_held:
        click.echo(f"no WAL expired: {plan.wal_held}")
    if plan.drill_reports.expire:
        click.echo(f"{verb} {len(plan.drill_reports.expire)} drill reports: {', '.join(plan.drill_reports.expire)}")
    for m in plan.bad_manifests:
        click.echo(f"skipped bad manifest {m.key}: {m.error}")
    for o in plan.orphans:
        click.echo(f"{verb} incomplete {o.kind} {o.id} ({len(o.keys)} objects)")
    log.info(
        "expire finished",
        extra={
            "p88": {
                "dry_run": dry_run,
                "expired": len(plan.dumps.expire),
                "kept": len(plan.dumps.keep),
                "basebackups_expired": len(plan.basebackups.expire),
                "basebackups_kept": len(plan.basebackups.keep),
                "wal_expired": len(plan.wal),
                "bad_manifests": len(plan.bad_manifests),
                "orphans": len(plan.orphans),
            }
        },
    )
