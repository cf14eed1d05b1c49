"""``eventworker run``, ``migrate`` and ``partition``: start a worker, bring the database schema up to date,
partition the events table of PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime

import click

from worker.commands.base import examples, run_or_exit, settings_or_exit, with_database
from worker.config import redact_url
from worker.db.engine import Database
from worker.domain.partitions import Interval


@click.command(
    "run",
    epilog=examples(
        "eventworker run",
        "EVENTWORKER_MAX_JOBS=20 EVENTWORKER_METRICS_PORT=9100 eventworker run",
        "eventworker run --burst",
    ),
)
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
def run_command(burst: bool) -> None:
    """Start a worker (same as `arq worker.main.WorkerSettings`)."""
    # Imported here: the worker's entry loads every job, arq, prometheus and alembic; --help needs none.
    from arq.worker import run_worker

    from worker.main import settings_from_environment

    run_worker(settings_from_environment(), burst=burst)


@click.command(
    "migrate", epilog=examples("DATABASE_URL=postgresql://user:pass@db/events eventworker migrate")
)
def migrate_command() -> None:
    """Apply database migrations up to this version."""
    from worker.db import schema  # imported here: alembic (about 100 ms), which --help does not need

    settings = settings_or_exit()

    async def migrate(db: Database) -> tuple[str | None, str | None, int | None]:
        before, after = await schema.upgrade(
            db.engine,
            partition_interval=settings.partition_interval,
            partitions_ahead=settings.partitions_ahead,
        )
        return before, after, await _unpartitioned_rows(db, settings.partition_interval)

    before, after, left = run_or_exit(with_database(settings, migrate), settings)
    click.echo(f"{redact_url(settings.database_url)}: schema {before or '(empty)'} -> {after}")
    if left is not None:
        click.echo(
            f"events holds about {left:,} rows in one table: `eventworker partition` partitions it by"
            f" {settings.partition_interval} while ingestion goes on (EVENTWORKER_PARTITION_INTERVAL=none"
            " keeps it as it is and silences this line)"
        )


async def _unpartitioned_rows(db: Database, interval: str) -> int | None:
    """The rows of an unpartitioned PostgreSQL ``events`` that migrate left as they were (None otherwise)."""
    from worker.db.sql import partition_sql

    if db.dialect != "postgresql" or interval == "none":
        return None
    async with db.engine.connect() as connection:
        if (await partition_sql.read_layout(connection)).partitioned:
            return None
        return await partition_sql.stored_rows(connection) or None


@click.command(
    "partition",
    epilog=examples(
        "eventworker partition",
        "EVENTWORKER_PARTITION_INTERVAL=week eventworker partition",
    ),
)
def partition_command() -> None:
    """PostgreSQL: partition events by EVENTWORKER_PARTITION_INTERVAL, keeping its rows (docs: storage).

    Workers may keep running: the table is locked only for the final swap, seconds. On a table already
    partitioned, it records the interval for the partitions to come and makes those due ahead.
    """
    from worker.db.sql import partition_convert

    settings = settings_or_exit()
    if settings.partition_interval == "none":
        raise click.UsageError("EVENTWORKER_PARTITION_INTERVAL is none: set hour, day, week or month")
    interval: Interval = settings.partition_interval

    async def convert(db: Database) -> partition_convert.Conversion:
        if db.dialect != "postgresql":
            raise click.UsageError(f"partitions are for PostgreSQL; {db.dialect} keeps one events table")
        now = datetime.now(UTC)
        return await partition_convert.convert(
            db.engine, interval, settings.partitions_ahead, now, click.echo
        )

    report = run_or_exit(with_database(settings, convert), settings)
    made = ", ".join(report.partitions) or "none needed"
    if report.already:
        click.echo(f"events was partitioned already; interval {interval}; partitions made: {made}")
        return
    kept = (
        f"; its {report.rows:,} rows stay in events_legacy until {report.cutover:%Y-%m-%d %H:%M} UTC"
        if report.rows
        else ""
    )
    click.echo(f"events is partitioned by {interval}{kept}; partitions made: {made}")
