"""``eventworker rollups``: bring the rollups up to date, rebuild them, or check them, from a shell.

The commands run the code the worker's jobs run (:mod:`jobs.rollup`), without the job
time limit: ``update`` goes on until it has caught up, and ``rebuild`` suits histories
too large to recount within one job.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from worker.commands.base import examples, run_or_exit, settings_or_exit, with_database
from worker.config import Settings
from worker.db.engine import Database
from worker.db.sql import status_sql
from worker.domain.text import plural

if TYPE_CHECKING:
    from jobs.rollup import RollupResult


async def _then_progress(
    settings: Settings, run: Callable[[Database], Awaitable[RollupResult]]
) -> tuple[RollupResult, status_sql.RollupLag]:
    async def both(db: Database) -> tuple[RollupResult, status_sql.RollupLag]:
        result = await run(db)
        async with db.transaction() as session:
            return result, await status_sql.rollup_progress(session)

    return await with_database(settings, both)


def _summary(result: RollupResult, lag: status_sql.RollupLag) -> str:
    from worker.ops.status_text import rollup_progress  # imported here: the views load arq

    return (
        f"counted {plural(result['rows'], 'event')} into {plural(result['buckets'], 'bucket row')}"
        f" in {plural(result['transactions'], 'transaction')}; {rollup_progress(lag, datetime.now(UTC))}"
    )


@click.group(
    "rollups",
    epilog=examples("eventworker rollups update", "eventworker rollups verify"),
)
def rollups_command() -> None:
    """Event counts per (type, source) and minute or hour: the rollups table."""


@rollups_command.command("update", epilog=examples("eventworker rollups update"))
def update_command() -> None:
    """Count the events stored since the last run (the worker does this every minute)."""
    from jobs.rollup import update  # imported here: the jobs load arq, which --help does not need

    settings = settings_or_exit()
    result, lag = run_or_exit(_then_progress(settings, lambda db: update(db, settings)), settings)
    click.echo(_summary(result, lag))
    if result["gave_way"]:
        click.echo("another run was updating the rollups at the same time; it carries on from here")


@rollups_command.command("rebuild", epilog=examples("eventworker rollups rebuild"))
def rebuild_command() -> None:
    """Empty the rollups and count the whole history again, in one transaction."""
    from jobs.rollup import rebuild  # imported here: the jobs load arq, which --help does not need

    settings = settings_or_exit()
    result, lag = run_or_exit(_then_progress(settings, lambda db: rebuild(db, settings)), settings)
    click.echo(_summary(result, lag))


@rollups_command.command(
    "verify", epilog=examples("eventworker rollups verify || eventworker rollups rebuild")
)
def verify_command() -> None:
    """Compare the rollups with the events they cover, counted again; exit 1 on any difference."""
    from jobs.rollup import verify  # imported here: the jobs load arq, which --help does not need

    settings = settings_or_exit()
    checked = run_or_exit(with_database(settings, verify), settings)
    for difference in checked.differences:
        click.echo(str(difference))
    if checked.differences:
        differ = "differs" if len(checked.differences) == 1 else "differ"
        click.echo(
            f"{plural(len(checked.differences), 'bucket')} {differ} from the events they cover;"
            " `eventworker rollups rebuild` recounts them",
            err=True,
        )
        raise SystemExit(1)
    click.echo(f"rollups match the events they cover: {plural(checked.buckets, 'bucket')}")
