"""``eventworker``: run a worker, migrate, enqueue, run the demo, inspect and re-drive failures.

Every command reads the same settings (environment and ``settings.env``); a bad
setting ends the command with one line naming it and exit status 2.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import IO, Any, TypeVar

import click

from worker.commands.base import print_rows, run_or_exit, settings_or_exit, with_session
from worker.config import env_example, redact_url
from worker.protocol.serialization import deserialize

T = TypeVar("T")
EXIT_CONFIG = 2


@click.group()
@click.version_option(package_name="eventworker")
def main() -> None:
    """eventworker: store CloudEvents from Redis exactly once, and run batch work over them."""


@main.command()
@click.option("--burst", is_flag=True, help="Exit once the queue is empty.")
def run(burst: bool) -> None:
    """Start a worker (same as `arq worker.main.WorkerSettings`)."""
    from arq.worker import run_worker

    from worker.main import settings_from_environment

    run_worker(settings_from_environment(), burst=burst)


@main.command()
def migrate() -> None:
    """Apply database migrations up to this version."""
    from worker.db import schema
    from worker.db.engine import Database

    settings = settings_or_exit()

    async def upgrade() -> tuple[str | None, str | None]:
        db = Database.from_settings(settings)
        try:
            return await schema.upgrade(db.engine)
        finally:
            await db.dispose()

    before, after = run_or_exit(upgrade(), settings)
    click.echo(f"{redact_url(settings.database_url)}: schema {before or '(empty)'} -> {after}")


def _read_ndjson(stream: IO[bytes]) -> Iterator[Any]:
    for number, line in enumerate(stream, start=1):
        if not line.strip():
            continue
        try:
            yield deserialize(line)  # exact: orjson would turn integers beyond 64 bits into floats
        except ValueError as exc:
            # Sent anyway, as text: the worker keeps it as a dead letter rather than it vanishing here.
            click.echo(f"line {number}: not JSON ({exc}); sent as text, it will be a dead letter", err=True)
            yield line.decode("utf-8", "backslashreplace").rstrip("\n")


@main.command()
@click.argument("source", type=click.File("rb"), default="-")
@click.option(
    "--batch-size", type=click.IntRange(min=1), help="Events per job [default: EVENTWORKER_BATCH_SIZE]."
)
def enqueue(source: IO[bytes], batch_size: int | None) -> None:
    """Enqueue newline-delimited JSON events from SOURCE (a file, or - for stdin)."""
    from worker.protocol.producer import EventProducer

    settings = settings_or_exit()

    async def send() -> tuple[int, int]:
        read = 0

        def counted() -> Iterator[Any]:  # streams: a file of any size is read one batch at a time
            nonlocal read
            for value in _read_ndjson(source):
                read += 1
                yield value

        async with EventProducer(
            settings.redis_url, queue_name=settings.queue_name, batch_size=batch_size or settings.batch_size
        ) as producer:
            jobs = len(await producer.emit(counted()))
        return read, jobs

    count, jobs = run_or_exit(send(), settings)
    click.echo(f"enqueued {count} events in {jobs} jobs")


@main.command()
@click.option("--events", "count", type=click.IntRange(min=1), default=5000, show_default=True)
def demo(count: int) -> None:
    """Run a worker on sample events (embedded SQLite and Redis stand-in unless the URLs are set)."""
    from worker.commands import demo as demo_module

    settings = settings_or_exit()
    for line in demo_module.main(settings, count):
        click.echo(line)


@main.command()
@click.option("--example", is_flag=True, help="Print settings.env.example: every setting with its default.")
def config(example: bool) -> None:
    """Print the settings in effect (passwords hidden), or the documented example file."""
    if example:
        click.echo(env_example(), nl=False)
        return
    for name, value in settings_or_exit().redacted().items():
        click.echo(f"{name}={'' if value is None else value}")


@main.group()
def failed() -> None:
    """Jobs that used their last try."""


@failed.command("list")
@click.option("--all", "include_requeued", is_flag=True, help="Include jobs already re-enqueued.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def failed_list(include_requeued: bool, limit: int, as_json: bool) -> None:
    """List failed jobs, newest first."""
    from worker.db import statements

    async def fetch(session: Any) -> list[dict[str, Any]]:
        rows = await statements.failed_jobs(session, include_requeued=include_requeued, limit=limit)
        return [
            {
                "id": r.id,
                "job_id": r.job_id,
                "job": r.job_name,
                "tries": r.tries,
                "failed_at": r.failed_at,
                "requeued_as": r.requeued_job_id,
                "error": r.error,
            }
            for r in rows
        ]

    settings = settings_or_exit()
    print_rows(run_or_exit(with_session(settings, fetch), settings), as_json)


@failed.command("requeue")
@click.argument("ids", type=int, nargs=-1, required=True)
def failed_requeue(ids: tuple[int, ...]) -> None:
    """Enqueue failed jobs IDS again, with their original arguments."""
    from worker.db import statements
    from worker.protocol.redis import connect

    settings = settings_or_exit()

    async def requeue(session: Any) -> list[str]:
        redis = await connect(settings.redis_url)
        done = []
        try:
            for failed_id in ids:
                record = await statements.failed_job(session, failed_id)
                if record is None:
                    raise click.ClickException(f"no failed job {failed_id}")
                call = deserialize(record.args)
                job = await redis.enqueue_job(
                    record.job_name, *call["args"], _queue_name=settings.queue_name, **call["kwargs"]
                )
                if job is None:  # pragma: no cover - arq ids are random; only a collision returns None
                    raise click.ClickException(f"could not enqueue failed job {failed_id}")
                await statements.mark_requeued(session, failed_id, job.job_id, datetime.now(UTC))
                done.append(f"failed job {failed_id} ({record.job_name}) re-enqueued as {job.job_id}")
        finally:
            await redis.aclose(close_connection_pool=True)
        return done

    for line in run_or_exit(with_session(settings, requeue), settings):
        click.echo(line)


@main.command("dead-letters")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def dead_letters(limit: int, as_json: bool) -> None:
    """List dead letters (inputs that were not storable events), newest first."""
    from worker.db import statements

    async def fetch(session: Any) -> list[dict[str, Any]]:
        rows = await statements.dead_letters(session, limit=limit)
        return [
            {
                "id": r.id,
                "reason": r.reason,
                "job_id": r.job_id,
                "position": r.position,
                "received_at": r.received_at,
                "errors": r.errors,
                "raw": r.raw.decode("utf-8", "backslashreplace")[:2000],
            }
            for r in rows
        ]

    settings = settings_or_exit()
    print_rows(run_or_exit(with_session(settings, fetch), settings), as_json)


def _register_commands() -> None:
    from worker.commands.export import export_command, retention_command
    from worker.commands.handlers import handlers_command
    from worker.commands.rollups import rollups_command
    from worker.commands.stats import stats_command
    from worker.commands.status import check_command, dashboard_command, health_command, status_command

    for command in (rollups_command, export_command, retention_command, stats_command, handlers_command):
        main.add_command(command)
    for command in (status_command, health_command, check_command, dashboard_command):
        main.add_command(command)


_register_commands()

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
