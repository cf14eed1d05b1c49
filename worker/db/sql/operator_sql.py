"""Pages of what the operator API lists (dead letters, failed jobs, handler runs), newest first.

Pages are by key: ``before`` is the smallest id of the page just read, so a page is one indexed
range scan however deep it is, and rows arriving meanwhile do not shift the pages.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from worker.db.models import DeadLetter, Event, FailedJob, HandlerRun


async def dead_letters_page(
    session: AsyncSession, *, limit: int, before: int | None = None, reason: str | None = None
) -> list[DeadLetter]:
    """Dead letters with ids below ``before``, of one ``reason`` if given, newest first."""
    statement = select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit)
    if before is not None:
        statement = statement.where(DeadLetter.id < before)
    if reason is not None:
        statement = statement.where(DeadLetter.reason == reason)
    return list((await session.scalars(statement)).all())


async def dead_letter(session: AsyncSession, dead_letter_id: int) -> DeadLetter | None:
    return await session.get(DeadLetter, dead_letter_id)


async def delete_dead_letter(session: AsyncSession, dead_letter_id: int) -> None:
    await session.execute(delete(DeadLetter).where(DeadLetter.id == dead_letter_id))


async def failed_jobs_page(
    session: AsyncSession, *, limit: int, before: int | None = None, include_requeued: bool = False
) -> list[FailedJob]:
    """Failed jobs with ids below ``before``, newest first; requeued ones only if asked."""
    statement = select(FailedJob).order_by(FailedJob.id.desc()).limit(limit)
    if before is not None:
        statement = statement.where(FailedJob.id < before)
    if not include_requeued:
        statement = statement.where(FailedJob.requeued_at.is_(None))
    return list((await session.scalars(statement)).all())


async def handler_runs_page(
    session: AsyncSession, *, limit: int, before: int | None = None, status: str | None = None
) -> list[dict[str, Any]]:
    """Handler runs with their event's identity, ids below ``before``, of one ``status`` if given."""
    statement = (
        select(
            HandlerRun.id,
            HandlerRun.handler,
            HandlerRun.status,
            HandlerRun.tries,
            HandlerRun.event_seq,
            Event.type.label("event_type"),
            Event.source,
            Event.event_id,
            HandlerRun.created_at,
            HandlerRun.updated_at,
            HandlerRun.last_error,
        )
        .outerjoin(Event, Event.seq == HandlerRun.event_seq)
        .order_by(HandlerRun.id.desc())
        .limit(limit)
    )
    if before is not None:
        statement = statement.where(HandlerRun.id < before)
    if status is not None:
        statement = statement.where(HandlerRun.status == status)
    return [dict(row._mapping) for row in await session.execute(statement)]
