"""``eventworker run`` and ``eventworker migrate``: start a worker, bring the database schema up to date."""

from __future__ import annotations

import click

from worker.commands.base import examples, run_or_exit, settings_or_exit, with_database
from worker.config import redact_url


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
    before, after = run_or_exit(with_database(settings, lambda db: schema.upgrade(db.engine)), settings)
    click.echo(f"{redact_url(settings.database_url)}: schema {before or '(empty)'} -> {after}")
