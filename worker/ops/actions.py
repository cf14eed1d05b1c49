"""What an operator can do about what the worker could not: requeue a failed job, retry failed handler
runs, re-drive a dead letter. Used by the operator API and the dashboard (:mod:`worker.http`).

Each takes the request's session and the Redis pool, enqueues, then records what it did in the
same transaction; a refusal is an :class:`ActionRefused` saying why (no such record, wrong state).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from jobs.handlers import enqueue_run_handlers
from worker.constants import INGEST_JOB
from worker.db.sql import handler_sql, operator_sql, statements
from worker.protocol.serialization import deserialize

#: Dead letters whose raw bytes are one event (the others hold a whole job, or a job's argument).
REDRIVABLE = frozenset({"invalid", "too_large"})


class ActionRefused(Exception):
    """An action that cannot be done; ``kind`` is ``not-found`` or ``conflict``."""

    def __init__(self, kind: Literal["not-found", "conflict"], detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Requeued:
    failed_job: int
    job: str
    job_id: str


async def requeue_failed_job(session: AsyncSession, redis: Any, queue_name: str, failed_id: int) -> Requeued:
    """Enqueue a failed job again with its original arguments and note the new job's id."""
    record = await statements.failed_job(session, failed_id)
    if record is None:
        raise ActionRefused("not-found", f"no failed job {failed_id}")
    if record.requeued_at is not None:
        raise ActionRefused(
            "conflict", f"failed job {failed_id} was requeued already as {record.requeued_job_id}"
        )
    call = deserialize(record.args)
    job = await redis.enqueue_job(record.job_name, *call["args"], _queue_name=queue_name, **call["kwargs"])
    if job is None:  # pragma: no cover - arq ids are random; only a collision returns None
        raise ActionRefused("conflict", f"could not enqueue failed job {failed_id}")
    await statements.mark_requeued(session, failed_id, job.job_id, datetime.now(UTC))
    await session.commit()
    return Requeued(failed_id, record.job_name, job.job_id)


async def retry_handler_runs(
    session: AsyncSession, redis: Any, queue_name: str, ids: list[int] | None
) -> tuple[list[int], str | None]:
    """Make failed handler runs (``ids``, or all) pending again, enqueue ``run_handlers``; both ids."""
    if ids:
        statuses = await handler_sql.run_statuses(session, ids)
        missing = [i for i in ids if i not in statuses]
        if missing:
            raise ActionRefused("not-found", f"no handler run {missing[0]}")
        wrong = [i for i in ids if statuses[i] != handler_sql.FAILED]
        if wrong:
            raise ActionRefused("conflict", f"handler run {wrong[0]} is {statuses[wrong[0]]}, not failed")
    reset = await handler_sql.reset_failed_runs(session, ids or None, datetime.now(UTC))
    await session.commit()
    job_id = await enqueue_run_handlers(redis, queue_name) if reset else None
    return reset, job_id


async def redrive_dead_letter(session: AsyncSession, redis: Any, queue_name: str, dead_letter_id: int) -> str:
    """Enqueue a dead letter's event again (its cause fixed, say a larger EVENTWORKER_MAX_EVENT_BYTES),
    then delete it; the new job's id. If it is still not storable, the worker keeps it anew."""
    row = await operator_sql.dead_letter(session, dead_letter_id)
    if row is None:
        raise ActionRefused("not-found", f"no dead letter {dead_letter_id}")
    if row.reason not in REDRIVABLE:
        raise ActionRefused(
            "conflict", f"dead letter {dead_letter_id} is {row.reason}: it holds no single event to re-drive"
        )
    try:
        value = deserialize(bytes(row.raw))
    except ValueError:
        value = bytes(row.raw).decode("utf-8", "backslashreplace")  # sent as text, kept again as it is
    job = await redis.enqueue_job(INGEST_JOB, [value], _queue_name=queue_name)
    if job is None:  # pragma: no cover - arq ids are random; only a collision returns None
        raise ActionRefused("conflict", f"could not enqueue dead letter {dead_letter_id}")
    await operator_sql.delete_dead_letter(session, dead_letter_id)
    await session.commit()
    return str(job.job_id)
