"""What every eventworker job gets around it: log context, a time limit, retries, failure records.

:func:`job` wraps a job coroutine. On a failure it asks :mod:`worker.runtime.retry` what to
do: retry with back-off (arq ``Retry``), or record the job in ``failed_jobs`` with
its arguments and error so the CLI can list and re-enqueue it. arq's own try limit
is set :data:`RECORD_TRIES` above ours, so the try after the last one still runs
here and records the failure (for example after repeated kills) instead of arq
dropping the job. A try that failed only because the database could not be reached is
given back to arq (its try counter is decremented), so an outage of any length sends no
job to ``failed_jobs``: the job waits with back-off, counted in ``eventworker:db-waits:<id>``.
Each try is also reported to the worker's monitor (:func:`tracked`), which records in Redis
which worker runs it and, for cron jobs, how their last run ended, and counted in the worker's
metrics. Both are known here only by what this module uses of them
(:class:`~worker.runtime.context.JobMonitor`, :class:`~worker.runtime.context.JobMetrics`):
a job imports neither the monitor nor prometheus_client. With tracing on, each try is a span
(:meth:`worker.tracing.hooks.Tracing.job_try`) that ends with the job's counts or with the retry
logic's class of its failure; with tracing off it costs a read of ``hooks.ACTIVE`` per try.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any, NoReturn

import structlog
from arq import Retry
from arq.constants import retry_key_prefix

from worker.backoff import backoff
from worker.constants import DB_WAITS_PREFIX
from worker.db.sql import statements
from worker.errors import JobFailed
from worker.logging import get_logger, redact_text
from worker.protocol.serialization import serialize
from worker.runtime.context import NO_METRICS, WorkerContext
from worker.runtime.retry import DATABASE_UNAVAILABLE, GiveUp, RetryLater, classify, decide
from worker.tracing import hooks
from worker.tracing.hooks import JobSpan

#: Extra arq tries beyond ``max_tries`` in which a job only records its own failure.
RECORD_TRIES = 2
#: How long a job's count of tries that met an unreachable database (``DB_WAITS_PREFIX``) is kept after
#: the last such try (as arq keeps its own try counter).
DB_WAITS_TTL_S = 88_400

JobFunction = Callable[..., Awaitable[Any]]
log = get_logger("eventworker.job")


def _now() -> datetime:
    return datetime.now(UTC)


async def record_failure(
    ctx: WorkerContext, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], error: str, tries: int
) -> int:
    """Keep a job that will not be tried again, with what it was called with."""
    secrets = ctx["settings"].secrets()
    async with ctx["db"].transaction("record_failure") as session:
        return await statements.record_failed_job(
            session,
            job_id=ctx.get("job_id") or "",
            job_name=name,
            args=serialize({"args": list(args), "kwargs": kwargs}),
            error=redact_text(error, secrets)[:10_000],
            tries=tries,
            now=_now(),
        )


async def _give_back_try(ctx: WorkerContext) -> int | None:
    """Undo arq's count of this try; return how many tries of the job met no database, or None.

    None when there is no Redis to tell (a job called directly) or Redis failed too: then the
    try counts as any other.
    """
    redis, job_id = ctx.get("redis"), ctx.get("job_id")
    if redis is None or not job_id:
        return None
    try:
        async with redis.pipeline(transaction=True) as pipe:
            pipe.decr(retry_key_prefix + job_id)
            pipe.incr(DB_WAITS_PREFIX + job_id)
            pipe.expire(DB_WAITS_PREFIX + job_id, DB_WAITS_TTL_S)
            _, waits, _ = await pipe.execute()
    except Exception as exc:  # any failure here only means the try counts
        log.warning("job.try_not_given_back", error=type(exc).__name__)
        return None
    return int(waits)


async def _give_up(
    ctx: WorkerContext, name: str, args: tuple[Any, ...], kwargs: dict[str, Any], error: str, tries: int
) -> NoReturn:
    settings = ctx["settings"]
    try:
        failed_id = await record_failure(ctx, name, args, kwargs, error, tries)
    except Exception as exc:
        # The record itself could not be written (database down?): come back and try again.
        delay = backoff(tries, settings.retry_base_delay, settings.retry_max_delay)
        log.error("job.failure_not_recorded", error=type(exc).__name__, retry_in_s=round(delay, 2))
        raise Retry(defer=delay) from exc
    log.error("job.failed", failed_job_id=failed_id, tries=tries, error=error[:500])
    ctx.get("metrics", NO_METRICS).job_failed(name)
    raise JobFailed(failed_id, error[:500])


@asynccontextmanager
async def tracked(ctx: WorkerContext, job: str) -> AsyncIterator[None]:
    """Around one job try: record it as running on this worker, and how it ended."""
    monitor = ctx.get("monitor")
    if monitor is None:
        yield
        return
    run = await monitor.job_started(ctx.get("job_id") or "", job, ctx.get("job_try", 1))
    try:
        yield
    except BaseException as exc:
        await monitor.job_finished(run, exc)
        raise
    await monitor.job_finished(run, None)


def job(function: JobFunction) -> JobFunction:
    """Wrap a job coroutine ``function(ctx, *args, **kwargs)`` with eventworker's job handling."""
    name = function.__name__

    @functools.wraps(function)
    async def run(ctx: WorkerContext, *args: Any, **kwargs: Any) -> Any:
        structlog.contextvars.bind_contextvars(job_name=name)
        tracing = hooks.ACTIVE
        if tracing is None:
            async with tracked(ctx, name):
                return await _run(ctx, function, name, args, kwargs)
        with tracing.job_try(ctx, name) as span:
            async with tracked(ctx, name):
                return await _run(ctx, function, name, args, kwargs, span)

    @functools.wraps(function)
    async def untraced(ctx: WorkerContext, *args: Any, **kwargs: Any) -> Any:
        structlog.contextvars.bind_contextvars(job_name=name)
        async with tracked(ctx, name):
            return await _run(ctx, function, name, args, kwargs)

    return untraced if hooks.BYPASS else run


async def _run(
    ctx: WorkerContext,
    function: JobFunction,
    name: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    span: JobSpan | None = None,
) -> Any:
    """One try of ``function``: time limit, metrics, and the retry-or-record decision on failure.

    ``span``: the try's span, told how the try ended (tracing on).
    """
    settings = ctx["settings"]
    job_try = ctx.get("job_try", 1)
    if job_try > settings.max_tries:
        if span is not None:
            span.failed(None, "interrupted", "failed", None)
        await _give_up(
            ctx, name, args, kwargs, "interrupted on every try (worker killed or timed out)", job_try - 1
        )
    metrics = ctx.get("metrics", NO_METRICS)
    metrics.job_started(name)
    started = time.perf_counter()
    try:
        async with asyncio.timeout(settings.job_timeout):
            result = await function(ctx, *args, **kwargs)
    except Exception as exc:
        metrics.job_raised(name, time.perf_counter() - started)
        decision = decide(
            exc, job_try, settings.max_tries, base=settings.retry_base_delay, cap=settings.retry_max_delay
        )
        error = f"{type(exc).__name__}: {exc}"
        waits = None
        if isinstance(decision, RetryLater) and decision.reason == DATABASE_UNAVAILABLE:
            waits = await _give_back_try(ctx)
            if waits is not None:
                delay = backoff(waits, settings.retry_base_delay, settings.retry_max_delay)
                decision = RetryLater(delay, DATABASE_UNAVAILABLE)
        if span is not None:
            retry_in = decision.delay if isinstance(decision, RetryLater) else None
            span.failed(exc, classify(exc), "failed" if retry_in is None else "retry", retry_in)
        if isinstance(decision, RetryLater):
            log.warning(
                "job.retry",
                reason=decision.reason,
                retry_in_s=round(decision.delay, 2),
                error=redact_text(error, settings.secrets())[:500],
                **({} if waits is None else {"try_counted": False, "database_waits": waits}),
            )
            metrics.job_retried(name)
            raise Retry(defer=decision.delay) from exc
        assert isinstance(decision, GiveUp)
        await _give_up(ctx, name, args, kwargs, f"{decision.reason}: {error}", job_try)
    elapsed = time.perf_counter() - started
    if span is not None:
        span.succeeded(result)
    metrics.job_succeeded(name, elapsed)
    log.debug("job.done", duration_ms=round(elapsed * 1000, 2))
    return result
