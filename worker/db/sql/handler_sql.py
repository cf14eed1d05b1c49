"""Statements over ``handler_runs``, the outbox of event handler runs (see :mod:`worker.domain.handlers`),
and the :class:`~worker.domain.handlers.StoredEvent` a handler receives, made from its ``events`` row.

A run is ``pending`` (``tries`` failed attempts so far), ``done`` or ``failed`` (out of tries,
with ``last_error``). ``updated_at`` is when it last changed: a pending run that failed is
due again ``RetryTiming.wait(id, tries)`` seconds after it, which :func:`due` says in SQL.

Taking a run (:func:`claim_run`) differs per database, and only here:

- PostgreSQL, MySQL/MariaDB: ``SELECT ... WHERE id = :id FOR UPDATE SKIP LOCKED``. The row
  stays locked until the run's transaction ends, so a second worker skips it. Runs are
  claimed by primary key (a candidate list is read first without locks): on MySQL a locking
  range scan in REPEATABLE READ would also lock the gaps of ``ix_handler_runs_status`` and
  hold up every ingest inserting new runs while a handler runs.
- SQLite: there is one writer, so the claim is an ``UPDATE`` of the row, which takes the
  database's write lock first; a second worker waits for it (busy timeout) and then finds the
  run no longer pending. While a handler runs, other writers on the file wait: keep handlers
  short on SQLite, which is for one process anyway.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Table, and_, func, literal_column, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from worker.db.dialect import dialect_name, insert_ignoring_duplicates
from worker.db.models import Event, HandlerRun
from worker.domain.handlers import JITTER_BUCKETS, RetryTiming, StoredEvent
from worker.protocol.events import CloudEvent

HANDLER_RUNS: Table = HandlerRun.__table__  # type: ignore[assignment]

PENDING = "pending"
DONE = "done"
FAILED = "failed"
STATUSES = (PENDING, DONE, FAILED)

#: A run's jitter bucket, ``id % JITTER_BUCKETS``, with the modulus written out so that the SELECT
#: and the GROUP BY of :func:`next_due_at` are the same expression.
run_bucket = HandlerRun.id % literal_column(str(JITTER_BUCKETS))


async def create_handler_runs(
    session: AsyncSession,
    rows: Sequence[Mapping[str, Any]],
    handlers_by_type: Mapping[str, Sequence[str]],
    received_at: datetime,
) -> int:
    """In the ingest transaction: a pending run per handler for each event of ``rows`` stored just now.

    ``rows`` are the batch's ``events`` rows, all with ``received_at``; the events this
    transaction inserted are found again by that ``received_at`` (indexed) among the batch's
    identities. Rows the batch skipped as already stored carry an earlier ``received_at``, so
    a duplicate never creates runs, on any database (MySQL's ``INSERT IGNORE`` returns no
    ids to tell them apart). Another worker storing an event at the very same microsecond is
    harmless: runs are inserted skipping ``(event_seq, handler)`` pairs that exist.
    Returns how many runs were created; no query at all when no event has a handler.
    """
    handled = {row["type"] for row in rows} & handlers_by_type.keys()
    if not handled:
        return 0
    identities = {(row["source"], row["event_id"]) for row in rows if row["type"] in handled}
    statement = select(Event.seq, Event.source, Event.event_id, Event.type).where(
        Event.received_at == received_at, Event.type.in_(sorted(handled))
    )
    stored = [
        (seq, event_type)
        for seq, source, event_id, event_type in await session.execute(statement)
        if (source, event_id) in identities
    ]
    runs = [
        {
            "event_seq": seq,
            "handler": name,
            "status": PENDING,
            "tries": 0,
            "last_error": None,
            "created_at": received_at,
            "updated_at": received_at,
        }
        for seq, event_type in sorted(stored)
        for name in handlers_by_type.get(event_type, ())
    ]
    return await insert_ignoring_duplicates(session, HANDLER_RUNS, runs, ("event_seq", "handler"))


def due(now: datetime, timing: RetryTiming) -> ColumnElement[bool]:
    """Pending runs may be tried now: never tried, or failed long enough ago for their back-off.

    One clause per (tries, jitter bucket) pair: a few dozen at most, all on indexed columns'
    rows already narrowed to pending ones.
    """
    clauses: list[ColumnElement[bool]] = [HandlerRun.tries <= 0]
    for tries in range(1, timing.max_tries):
        for bucket in range(JITTER_BUCKETS):
            ready = now - timedelta(seconds=timing.wait(bucket, tries))
            clauses.append(
                and_(HandlerRun.tries == tries, run_bucket == bucket, HandlerRun.updated_at <= ready)
            )
    # Runs left with more tries than allowed (max_tries lowered since): one more try, then failed.
    ready = now - timedelta(seconds=timing.wait(0, timing.max_tries))
    clauses.append(and_(HandlerRun.tries >= timing.max_tries, HandlerRun.updated_at <= ready))
    return or_(*clauses)


async def due_runs(
    session: AsyncSession, handlers: Sequence[str], now: datetime, timing: RetryTiming, limit: int
) -> list[tuple[int, int]]:
    """``(id, tries)`` of up to ``limit`` due pending runs of ``handlers``, oldest first; no locks taken."""
    statement = (
        select(HandlerRun.id, HandlerRun.tries)
        .where(HandlerRun.status == PENDING, HandlerRun.handler.in_(handlers), due(now, timing))
        .order_by(HandlerRun.id)
        .limit(limit)
    )
    return [(int(run_id), int(tries)) for run_id, tries in await session.execute(statement)]


async def claim_run(session: AsyncSession, run_id: int, tries: int) -> HandlerRun | None:
    """Lock run ``run_id`` for this transaction if it is still pending after ``tries`` failures.

    The run comes with its event loaded (``run.event``). None when another worker holds it,
    finished it, or failed it again since it was listed.
    """
    # selectinload, not joinedload: the event comes in a second, plain SELECT by primary key
    # (none at all when no run was claimed). A join would put the events row under the same
    # FOR UPDATE SKIP LOCKED: the event's other runs, held by other workers, would be skipped
    # as locked, and MariaDB has no FOR UPDATE OF to lock only handler_runs. Not awaitable_attrs
    # either: ``HandlerRun.event`` is lazy="raise", and every claimed run needs its event.
    with_event = selectinload(HandlerRun.event)
    still_due = (HandlerRun.id == run_id, HandlerRun.status == PENDING, HandlerRun.tries == tries)
    if dialect_name(session) == "sqlite":
        claim = update(HANDLER_RUNS).where(*still_due).values(status=PENDING).returning(HANDLER_RUNS.c.id)
        if (await session.execute(claim)).scalar_one_or_none() is None:
            return None
        return await session.get(HandlerRun, run_id, options=[with_event])
    statement = select(HandlerRun).where(*still_due).options(with_event).with_for_update(skip_locked=True)
    return (await session.scalars(statement)).one_or_none()


def stored_event(row: Event) -> StoredEvent:
    """What a handler receives for an ``events`` row: the CloudEvent again, with its seq and received_at."""
    fields: dict[str, Any] = {
        **(row.extensions or {}),
        "specversion": row.specversion,
        "id": row.event_id,
        "source": row.source,
        "type": row.type,
        "time": row.time.isoformat() if row.time else None,
        "subject": row.subject,
        "datacontenttype": row.datacontenttype,
        "dataschema": row.dataschema,
        "data": row.data,
        "data_base64": row.data_base64,
    }
    return StoredEvent(seq=row.seq, event=CloudEvent.model_validate(fields), received_at=row.received_at)


async def mark_done(session: AsyncSession, run: HandlerRun, now: datetime) -> None:
    """The run's handler succeeded (its ``tries`` counts this try too)."""
    await session.execute(
        update(HANDLER_RUNS)
        .where(HANDLER_RUNS.c.id == run.id)
        .values(status=DONE, tries=run.tries + 1, updated_at=now)
    )


async def mark_failed_try(
    session: AsyncSession, run: HandlerRun, error: str, now: datetime, *, last: bool
) -> None:
    """The run's handler failed: pending for another try later, or ``failed`` when it was the ``last``."""
    await session.execute(
        update(HANDLER_RUNS)
        .where(HANDLER_RUNS.c.id == run.id)
        .values(status=FAILED if last else PENDING, tries=run.tries + 1, last_error=error, updated_at=now)
    )


async def next_due_at(session: AsyncSession, handlers: Sequence[str], timing: RetryTiming) -> datetime | None:
    """When the earliest pending run of ``handlers`` becomes due, or None when none is pending."""
    statement = (
        select(HandlerRun.tries, run_bucket, func.min(HandlerRun.updated_at))
        .where(HandlerRun.status == PENDING, HandlerRun.handler.in_(handlers))
        .group_by(HandlerRun.tries, run_bucket)
    )
    times = [
        updated_at + timedelta(seconds=timing.wait(int(bucket), tries))
        for tries, bucket, updated_at in await session.execute(statement)
    ]
    return min(times, default=None)


async def list_runs(
    session: AsyncSession, status: str | None = None, limit: int = 100
) -> list[dict[str, Any]]:
    """Runs with their event's identity, newest first, optionally of one status."""
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
    if status is not None:
        statement = statement.where(HandlerRun.status == status)
    return [dict(row._mapping) for row in await session.execute(statement)]


async def run_statuses(session: AsyncSession, ids: Sequence[int]) -> dict[int, str]:
    """The status of each of the runs ``ids`` that exists."""
    statement = select(HandlerRun.id, HandlerRun.status).where(HandlerRun.id.in_(ids))
    return {int(run_id): status for run_id, status in await session.execute(statement)}


async def reset_failed_runs(session: AsyncSession, ids: Sequence[int] | None, now: datetime) -> list[int]:
    """Make failed runs (those of ``ids``, or all) pending with a fresh set of tries; return their ids.

    ``last_error`` is kept until the next try replaces it.
    """
    statement = select(HandlerRun.id).where(HandlerRun.status == FAILED).order_by(HandlerRun.id)
    if ids is not None:
        statement = statement.where(HandlerRun.id.in_(ids))
    reset = [int(run_id) for run_id in await session.scalars(statement)]
    if reset:
        await session.execute(
            update(HANDLER_RUNS)
            .where(HANDLER_RUNS.c.id.in_(reset), HANDLER_RUNS.c.status == FAILED)
            .values(status=PENDING, tries=0, updated_at=now)
        )
    return reset
