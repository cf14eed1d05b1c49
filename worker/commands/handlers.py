"""``eventworker handlers``: list event handler runs and re-drive the failed ones.

``handlers list`` shows runs newest first (``--status failed`` for those out of tries, with
their error); ``handlers retry ID...`` or ``--all-failed`` makes failed runs pending again
with a fresh set of tries and enqueues ``run_handlers``. If that enqueue fails, the runs are
pending all the same and the ``sweep_handlers`` cron job runs them within a minute.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncSession

from worker.commands.base import examples, print_rows, run_or_exit, settings_or_exit, with_session
from worker.config import Settings
from worker.db.sql import handler_sql

#: In the plain listing an error is cut to this many characters, on one line; --json has it whole.
ERROR_PREVIEW = 200


@click.group(
    "handlers",
    epilog=examples("eventworker handlers list --status failed", "eventworker handlers retry --all-failed"),
)
def handlers_command() -> None:
    """Event handler runs: list them, re-drive failed ones."""


def _preview(row: dict[str, Any]) -> dict[str, Any]:
    error = row["last_error"]
    if error is not None:
        error = " ".join(error.split())
        row = {
            **row,
            "last_error": error if len(error) <= ERROR_PREVIEW else error[: ERROR_PREVIEW - 1] + "…",
        }
    return row


@handlers_command.command(
    "list",
    epilog=examples("eventworker handlers list --status failed", "eventworker handlers list --json"),
)
@click.option("--status", type=click.Choice(handler_sql.STATUSES), help="Only runs with this status.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the runs as JSON, errors whole.")
def list_runs(status: str | None, limit: int, as_json: bool) -> None:
    """List handler runs, newest first: handler, status, tries, event, last error."""
    settings = settings_or_exit()
    rows = run_or_exit(with_session(settings, lambda s: handler_sql.list_runs(s, status, limit)), settings)
    print_rows(rows if as_json else [_preview(row) for row in rows], as_json)


async def _enqueue(settings: Settings) -> str | None:
    # Imported here: the jobs and the Redis client load arq, which --help does not need.
    from jobs.handlers import enqueue_run_handlers
    from worker.protocol.redis import connect

    try:
        redis = await connect(settings.redis_url)
    except Exception:
        return None
    try:
        return await enqueue_run_handlers(redis, settings.queue_name)
    finally:
        await redis.aclose(close_connection_pool=True)


@handlers_command.command(
    "retry", epilog=examples("eventworker handlers retry 17 18", "eventworker handlers retry --all-failed")
)
@click.argument("ids", type=int, nargs=-1)
@click.option("--all-failed", is_flag=True, help="Retry every failed run.")
def retry_runs(ids: tuple[int, ...], all_failed: bool) -> None:
    """Make failed runs IDS (or --all-failed) pending again with fresh tries, and enqueue run_handlers."""
    if bool(ids) == all_failed:
        raise click.UsageError("give the run IDS to retry, or --all-failed")
    settings = settings_or_exit()

    async def reset(session: AsyncSession) -> list[int]:
        if ids:
            statuses = await handler_sql.run_statuses(session, ids)
            problems = [f"no handler run {i}" for i in ids if i not in statuses]
            problems += [
                f"handler run {i} is {statuses[i]}, not failed"
                for i in ids
                if statuses.get(i, handler_sql.FAILED) != handler_sql.FAILED
            ]
            if problems:
                raise click.ClickException("; ".join(problems))
        return await handler_sql.reset_failed_runs(session, list(ids) or None, datetime.now(UTC))

    async def retry() -> tuple[list[int], str | None]:
        done = await with_session(settings, reset)
        return done, (await _enqueue(settings) if done else None)

    done, job_id = run_or_exit(retry(), settings)
    if not done:
        click.echo("no failed handler runs")
        return
    click.echo(f"{len(done)} handler run(s) pending again: {', '.join(map(str, done))}")
    if job_id is None:
        click.echo(
            "could not enqueue run_handlers; the sweep_handlers cron job runs them within a minute", err=True
        )
    else:
        click.echo(f"run_handlers enqueued as {job_id}")
