"""``eventworker failed list``, ``failed requeue`` and ``dead-letters``: what the worker could not do.

A failed job used its last try; ``failed requeue`` enqueues it again with its original
arguments and records the new job's id. A dead letter is an input that was not a storable
event, kept with its reason and raw payload for a person to read.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import click
from sqlalchemy.ext.asyncio import AsyncSession

from worker.commands.base import print_rows, run_or_exit, settings_or_exit, with_session
from worker.db import statements
from worker.protocol.serialization import deserialize


@click.group("failed")
def failed_command() -> None:
    """Jobs that used their last try."""


@failed_command.command("list")
@click.option("--all", "include_requeued", is_flag=True, help="Include jobs already re-enqueued.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def failed_list(include_requeued: bool, limit: int, as_json: bool) -> None:
    """List failed jobs, newest first."""

    async def fetch(session: AsyncSession) -> list[dict[str, Any]]:
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


@failed_command.command("requeue")
@click.argument("ids", type=int, nargs=-1, required=True)
def failed_requeue(ids: tuple[int, ...]) -> None:
    """Enqueue failed jobs IDS again, with their original arguments."""
    from worker.protocol.redis import connect  # imported here: arq, which --help does not need

    settings = settings_or_exit()

    async def requeue(session: AsyncSession) -> list[str]:
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


@click.command("dead-letters")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def dead_letters_command(limit: int, as_json: bool) -> None:
    """List dead letters (inputs that were not storable events), newest first."""

    async def fetch(session: AsyncSession) -> list[dict[str, Any]]:
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
