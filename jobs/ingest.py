"""``ingest_events``: validate a batch of CloudEvents and store each exactly once.

Valid events go into ``events`` in one bulk insert that skips identities already
stored (also when another worker stores them at the same moment); everything
else goes into ``dead_letters`` byte for byte, in the same transaction. So do the
pending runs of the event handlers registered for the new events' types (the
outbox, see ``worker.domain.handlers``); once committed, a ``run_handlers`` job is enqueued.
With tracing on, the job try's span links to the trace each stored event carries (``traceparent``).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any, TypedDict

from jobs.handlers import enqueue_run_handlers
from worker.constants import INGEST_JOB
from worker.db.sql import handler_sql, statements
from worker.domain.handlers import configured_registry
from worker.domain.wire import batch_rows
from worker.logging import get_logger
from worker.runtime.context import NO_METRICS, WorkerContext
from worker.runtime.jobrunner import job
from worker.tracing import hooks

log = get_logger("eventworker.ingest")


class IngestResult(TypedDict):
    """What an ingest job did with its batch."""

    accepted: int
    duplicates: int
    rejected: int


@job
async def ingest_events(ctx: WorkerContext, events: Any) -> IngestResult:
    """Store ``events`` (a list of CloudEvents as JSON objects); return the counts."""
    started = time.perf_counter()
    now, job_id = datetime.now(UTC), ctx.get("job_id")
    batch = batch_rows(events, ctx["settings"].max_event_bytes, now, job_id)
    validated = time.perf_counter()
    rows = batch.rows
    if hooks.ACTIVE is not None:
        inputs = len(rows) + batch.duplicates + len(batch.rejected)
        hooks.ACTIVE.link_events([row["extensions"] for row in rows], inputs)
    dead = [statements.dead_letter_row(r, r.position, job_id, INGEST_JOB, now) for r in batch.rejected]
    handlers_by_type = configured_registry(ctx["settings"]).names_by_type()
    async with ctx["db"].transaction(INGEST_JOB) as session:
        inserted = await statements.insert_events(session, rows)
        await statements.insert_dead_letters(session, dead)
        runs = (
            await handler_sql.create_handler_runs(session, rows, handlers_by_type, now)
            if inserted and handlers_by_type
            else 0
        )
    if runs:
        await enqueue_run_handlers(ctx["redis"], ctx["settings"].queue_name)
    result = IngestResult(
        accepted=inserted, duplicates=batch.duplicates + len(rows) - inserted, rejected=len(batch.rejected)
    )
    pairs = [(row["source"], row["type"]) for row in rows]
    ctx.get("metrics", NO_METRICS).count_ingest(pairs, inserted, result["duplicates"], batch.rejected)
    log.info(
        "ingest.stored",
        **result,
        handler_runs=runs,
        validate_ms=round((validated - started) * 1000, 2),
        total_ms=round((time.perf_counter() - started) * 1000, 2),
    )
    return result
