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

from worker.commands.base import examples, print_rows, run_or_exit, settings_or_exit, with_session
from worker.db.sql import statements
from worker.domain.text import describe_errors, one_line
from worker.protocol.serialization import deserialize

#: Characters of a dead letter's payload kept: in --json, and (on one line) in the listing.
RAW_JSON_CHARS = 2000
RAW_TEXT_CHARS = 200


@click.group("failed", epilog=examples("eventworker failed list", "eventworker failed requeue 12"))
def failed_command() -> None:
    """Jobs that used their last try."""


@failed_command.command(
    "list", epilog=examples("eventworker failed list", "eventworker failed list --all --json --limit 10")
)
@click.option("--all", "include_requeued", is_flag=True, help="Include jobs already re-enqueued.")
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the failed jobs as JSON.")
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


@failed_command.command("requeue", epilog=examples("eventworker failed requeue 12 13"))
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


def _dead_letter_lines(letter: dict[str, Any]) -> list[str]:
    job = "" if letter["job_id"] is None else f", job {letter['job_id']} input {letter['position']}"
    return [
        f"#{letter['id']} {letter['reason']}, received {letter['received_at']:%Y-%m-%d %H:%M:%S} UTC{job}",
        f"  errors: {describe_errors(letter['errors']) or '-'}",
        f"  raw: {one_line(letter['raw'], RAW_TEXT_CHARS)}",
    ]


@click.command(
    "dead-letters",
    epilog=examples(
        "eventworker dead-letters --limit 5", "eventworker dead-letters --json | jq '.[].errors'"
    ),
)
@click.option("--limit", type=click.IntRange(min=1), default=100, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print them as JSON, errors as a list.")
def dead_letters_command(limit: int, as_json: bool) -> None:
    """List dead letters (inputs that were not storable events), newest first.

    Each with its reason, when it came and from which job and input, its errors (field: what is
    wrong) and the payload as received (its first 200 characters; --json has 2000).
    """

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
                "raw": r.raw.decode("utf-8", "backslashreplace")[:RAW_JSON_CHARS],
            }
            for r in rows
        ]

    settings = settings_or_exit()
    letters = run_or_exit(with_session(settings, fetch), settings)
    if as_json or not letters:
        print_rows(letters, as_json)
        return
    for letter in letters:
        for line in _dead_letter_lines(letter):
            click.echo(line)
