"""``p88backup schedule``: the sidecar daemon that runs the backup jobs by itself.

Modules: :mod:`~p88backup.schedule.cron` (the ``[schedule]`` cron expressions,
pure and stdlib-only: the settings readers check values with it),
:mod:`~p88backup.schedule.jobs` (what each schedule runs and how one run goes),
:mod:`~p88backup.schedule.children` (the child processes and how they are
stopped), :mod:`~p88backup.schedule.supervisor` (``wal-stream``, restarted with
backoff), :mod:`~p88backup.schedule.health` (the ``/healthz`` verdict),
:mod:`~p88backup.schedule.httpd` (``/healthz`` and ``/metrics``),
:mod:`~p88backup.schedule.catchup` (a dump or base backup missed across a
restart, run at start) and :mod:`~p88backup.schedule.scheduler` (the daemon
that wires them together).

Nothing is imported here: ``rawconfig`` imports :mod:`~p88backup.schedule.cron`
on the archive fast path when a schedule is configured.
"""
