"""``eventworker status``, ``health`` (alias ``check``) and ``dashboard``: how the workers are doing.

``status`` and the dashboard show the same :class:`~worker.ops.status.Status`; ``health`` is the
narrow yes/no a container orchestrator asks. Exit codes of ``health``: 0 healthy,
1 unhealthy (each problem on stderr), 2 configuration error (as every command).
"""

from __future__ import annotations

import socket

import click

from worker.commands.base import examples, run_or_exit, settings_or_exit


@click.command(
    "status",
    epilog=examples(
        "eventworker status", "eventworker status --json | jq .problems", "watch -n 5 eventworker status"
    ),
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@click.option("--recent", type=click.IntRange(min=0), default=10, show_default=True, help="Failures shown.")
def status_command(as_json: bool, recent: int) -> None:
    """Queue depth, workers and their jobs, cron runs, rollup lag, failed jobs and dead letters.

    Exits 1 when a part could not be read (the rest is still printed).
    """
    # Imported here: the operator views load arq and the worker's bookkeeping, which --help does not need.
    from worker.ops import status_text as statusfmt
    from worker.ops.status import gather_status

    settings = settings_or_exit()
    status = run_or_exit(gather_status(settings, recent=recent), settings)
    if as_json:
        click.echo(statusfmt.dumps(status).decode())
    else:
        for line in statusfmt.to_text(status):
            click.echo(line)
    if status.errors:
        raise SystemExit(1)


@click.command(
    "health",
    epilog=examples(
        "eventworker health",
        "eventworker health --local        # a container's HEALTHCHECK",
        "eventworker health --worker-id web-1:7",
    ),
)
@click.option("--worker-id", help="Check this worker's heartbeat only (<host>:<pid>, as `status` lists).")
@click.option(
    "--local",
    is_flag=True,
    help="Check the heartbeat of the worker on this host that started last (a container's own worker).",
)
def health_command(worker_id: str | None, local: bool) -> None:
    """Exit 0 when healthy, 1 when not (each problem on stderr), 2 on a configuration error.

    Unhealthy: a heartbeat is missing or stale, Redis or the database is unreachable, or the
    database schema is behind this version.
    """
    from worker.ops.health import health  # imported here: alembic (about 100 ms), which --help does not need

    if worker_id is not None and local:
        raise click.UsageError("give --worker-id or --local, not both")
    settings = settings_or_exit()
    host = socket.gethostname() if local else None
    problems = run_or_exit(health(settings, worker_id=worker_id, host=host), settings)
    for problem in problems:
        click.echo(f"unhealthy: {problem}", err=True)
    if problems:
        raise SystemExit(1)
    click.echo("healthy")


#: The older name of ``health``, kept for scripts and the Docker HEALTHCHECK.
check_command = click.Command(
    "check",
    callback=health_command.callback,
    params=health_command.params,
    help="Same as `eventworker health`.",
    epilog=examples("eventworker check --local"),
)


@click.command(
    "dashboard",
    epilog=examples("eventworker dashboard", "eventworker dashboard --host 0.0.0.0 --port 8080 --refresh 30"),
)
@click.option("--host", help="Address to listen on [default: EVENTWORKER_DASHBOARD_HOST, 127.0.0.1].")
@click.option(
    "--port", type=click.IntRange(0, 65535), help="Port [default: EVENTWORKER_DASHBOARD_PORT, 8080]."
)
@click.option(
    "--refresh",
    type=click.IntRange(min=1),
    help="Seconds between reloads [default: EVENTWORKER_DASHBOARD_REFRESH].",
)
def dashboard_command(host: str | None, port: int | None, refresh: int | None) -> None:
    """Serve the status page, a chart of events per minute and the dead letters; with operator tokens
    configured, a sign-in, and for an admin the actions: requeue, retry, re-drive.

    It is the application `eventworker serve` runs (docs/http.md), on the dashboard's address and port.
    """
    from worker.commands.serve import start_http

    settings = settings_or_exit()
    start_http(
        host or settings.dashboard_host,
        settings.dashboard_port if port is None else port,
        "dashboard",
        settings,
        **({} if refresh is None else {"dashboard_refresh": refresh}),
    )
