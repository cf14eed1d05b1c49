"""``run_handlers`` and ``sweep_handlers``: run registered event handlers on their due runs.

``run_handlers`` is enqueued by each ingest job that created runs, after its commit, and by
``eventworker handlers retry``. ``sweep_handlers`` is a cron job (every minute) doing the same,
so a run whose ``run_handlers`` never got enqueued (Redis down, worker killed between the
commit and the enqueue) still runs: nothing is left pending for good.

Each run is taken in its own session and transaction (see :mod:`worker.db.sql.handler_sql` for
how two workers never take the same run), the handler called inside a savepoint, and the
outcome written in the same commit. A job stops starting runs after half of
``job_timeout`` and gives one handler call a quarter of it (a handler running longer fails
that try), so it ends before its own time limit; if due runs remain it enqueues a follow-up
at once, and otherwise one for when the next failed run's back-off ends.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

from sqlalchemy.ext.asyncio import AsyncSession

from worker.config import Settings
from worker.constants import RUN_HANDLERS_JOB, SWEEP_HANDLERS_JOB
from worker.db.engine import Database
from worker.db.models import Event
from worker.db.sql import handler_sql
from worker.domain.handlers import (
    HandlerRegistry,
    Registration,
    RetryTiming,
    configured_registry,
    error_text,
)
from worker.errors import InvalidArgument
from worker.logging import get_logger, redact_text
from worker.runtime.context import WorkerContext
from worker.runtime.jobrunner import job
from worker.tracing import hooks

log = get_logger("eventworker.handlers")

#: Share of ``job_timeout`` after which a job starts no new run.
CLAIM_SHARE = 0.5
#: Share of ``job_timeout`` one handler call may take before its try counts as failed.
HANDLER_TIMEOUT_SHARE = 0.25
#: Runs one sweep takes at most (a follow-up job continues if more are due).
SWEEP_LIMIT = 1000
#: A follow-up for a back-off wakes this much after the run is due, never a hair before.
WAKE_SLACK = timedelta(milliseconds=50)


class HandlersResult(TypedDict):
    """What a run_handlers or sweep_handlers job did."""

    done: int
    retrying: int
    failed: int
    skipped: int
    """Runs another worker took (or changed) between listing and claiming them."""


def _now() -> datetime:
    return datetime.now(UTC)


def retry_timing(settings: Settings) -> RetryTiming:
    """Handler runs use the jobs' retry settings: ``max_tries``, ``retry_base_delay``, ``retry_max_delay``."""
    return RetryTiming(settings.max_tries, settings.retry_base_delay, settings.retry_max_delay)


async def enqueue_run_handlers(redis: Any, queue_name: str, at: datetime | None = None) -> str | None:
    """Enqueue ``run_handlers`` (now, or at ``at``); its job id, or None if Redis did not take it.

    Never raises: the handler runs are in the database already, and ``sweep_handlers``
    picks them up within a minute if this enqueue is lost. A timed follow-up gets an id from its
    time, so that many jobs computing the same next due time enqueue it once.
    """
    job_id = None if at is None else f"{RUN_HANDLERS_JOB}:at:{int(at.timestamp() * 1000)}"
    try:
        enqueued = await redis.enqueue_job(
            RUN_HANDLERS_JOB, _queue_name=queue_name, _job_id=job_id, _defer_until=at
        )
    except Exception as exc:
        log.warning(
            "handlers.enqueue_failed",
            error=type(exc).__name__,
            fallback=f"{SWEEP_HANDLERS_JOB} within a minute",
        )
        return None
    return None if enqueued is None else str(enqueued.job_id)


async def _attempt(
    registration: Registration, row: Event | None, session: AsyncSession, time_limit: float
) -> Exception | None:
    """Call the handler on the run's event inside a savepoint; the exception it raised, if any."""
    try:
        if row is None:  # a guard: the foreign key's ON DELETE CASCADE takes a run away with its event
            raise LookupError("the event is no longer stored")
        event = handler_sql.stored_event(row)
        async with session.begin_nested(), asyncio.timeout(time_limit):
            await registration.call(event, session)
    except Exception as exc:
        return exc
    return None


async def run_one(ctx: WorkerContext, registry: HandlerRegistry, run_id: int, tries: int) -> str:
    """Take run ``run_id`` (listed after ``tries`` failures), run its handler, record the outcome.

    Returns ``done``, ``retrying``, ``failed`` or ``skipped`` (someone else has it). With tracing on,
    the run is a span in its event's own trace (:func:`worker.tracing.hooks.handler_run`).
    """
    settings, db = ctx["settings"], ctx["db"]
    timing = retry_timing(settings)
    with ExitStack() as traced:  # the run's span lasts until its outcome is committed and logged
        async with db.transaction(RUN_HANDLERS_JOB) as session:
            run = await handler_sql.claim_run(session, run_id, tries)
            registration = registry.get(run.handler) if run is not None else None
            if run is None or registration is None:
                return "skipped"
            span = traced.enter_context(hooks.handler_run(run.handler, run.id, run.tries + 1, run.event))
            started = time.perf_counter()
            exc = await _attempt(
                registration, run.event, session, settings.job_timeout * HANDLER_TIMEOUT_SHARE
            )
            duration_ms = round((time.perf_counter() - started) * 1000, 2)
            context = {
                "handler": run.handler,
                "run_id": run.id,
                "event_seq": run.event_seq,
                "try": run.tries + 1,
            }
            if exc is None:
                await handler_sql.mark_done(session, run, _now())
                span.ended("done", None)
                log.debug("handler.done", **context, duration_ms=duration_ms)
                return "done"
            last = run.tries + 1 >= timing.max_tries
            span.ended("failed" if last else "retrying", exc)
            error = redact_text(error_text(exc), settings.secrets())
            await handler_sql.mark_failed_try(session, run, error, _now(), last=last)
        if last:
            log.error("handler.failed", **context, error=error[:500], duration_ms=duration_ms)
            return "failed"
        retry_in = timing.delay(run.id, run.tries + 1)
        log.warning("handler.retry", **context, error=error[:500], retry_in_s=round(retry_in, 2))
        return "retrying"


async def _due(db: Database, names: list[str], timing: RetryTiming, limit: int) -> list[tuple[int, int]]:
    async with db.transaction(RUN_HANDLERS_JOB) as session:
        return await handler_sql.due_runs(session, names, _now(), timing, limit)


async def _follow_up(ctx: WorkerContext, names: list[str], timing: RetryTiming, *, more_due: bool) -> None:
    settings = ctx["settings"]
    if more_due:
        await enqueue_run_handlers(ctx["redis"], settings.queue_name)
        return
    async with ctx["db"].transaction(RUN_HANDLERS_JOB) as session:
        next_due = await handler_sql.next_due_at(session, names, timing)
    if next_due is not None:
        await enqueue_run_handlers(ctx["redis"], settings.queue_name, at=max(next_due, _now()) + WAKE_SLACK)


def _taken(outcomes: Counter[str]) -> int:
    return outcomes.total() - outcomes["skipped"]


async def drain(ctx: WorkerContext, limit: int) -> HandlersResult:
    """Run due runs of this worker's handlers, oldest first, until none is due, ``limit``, or time is up."""
    settings = ctx["settings"]
    registry = configured_registry(ctx["settings"])
    names = registry.names()
    if not names:
        return HandlersResult(done=0, retrying=0, failed=0, skipped=0)
    timing = retry_timing(settings)
    started = time.monotonic()
    deadline = started + settings.job_timeout * CLAIM_SHARE
    outcomes: Counter[str] = Counter()
    more_due = False
    while True:
        room = limit - _taken(outcomes)
        if room <= 0 or time.monotonic() >= deadline:
            more_due = True  # perhaps: the follow-up job finds out
            break
        candidates = await _due(ctx["db"], names, timing, room)
        if not candidates:
            break
        batch: Counter[str] = Counter()
        for run_id, tries in candidates:
            if time.monotonic() >= deadline:
                break
            batch[await run_one(ctx, registry, run_id, tries)] += 1
        outcomes += batch
        if batch and batch["skipped"] == batch.total():
            break  # other workers hold every due run: they follow up
    await _follow_up(ctx, names, timing, more_due=more_due)
    result = HandlersResult(
        done=outcomes["done"],
        retrying=outcomes["retrying"],
        failed=outcomes["failed"],
        skipped=outcomes["skipped"],
    )
    log.info("handlers.ran", **result, duration_ms=round((time.monotonic() - started) * 1000, 2))
    return result


@job
async def run_handlers(ctx: WorkerContext, limit: int = 100) -> HandlersResult:
    """Run up to ``limit`` due handler runs."""
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidArgument("limit", limit, "must be a whole number of runs, 1 or more")
    return await drain(ctx, limit)


@job
async def sweep_handlers(ctx: WorkerContext) -> HandlersResult:
    """Cron: run due handler runs, whether or not a ``run_handlers`` job was enqueued for them."""
    return await drain(ctx, SWEEP_LIMIT)
