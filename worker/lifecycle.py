"""arq lifecycle hooks: the worker owns the engine from start-up to shutdown.

``on_startup`` builds the engine, waits (bounded) for the database, and refuses to
run on a schema that is behind; then it starts the metrics server (when configured)
and the worker's :class:`~worker.runtime.monitor.Monitor` (heartbeat, metrics samples).
``on_shutdown`` stops the monitor and disposes the engine, so no connection outlives
the worker, then stops tracing (if the start-up started it: its last spans are exported).
``on_job_start`` binds the job's identity into every log line the job writes.
"""

from __future__ import annotations

import asyncio
import gc
import time

import structlog

from worker.config import redact_url
from worker.constants import CRON_JOBS
from worker.db import schema
from worker.db.engine import Database
from worker.db.failures import is_connection_error
from worker.domain.handlers import load_handler_modules
from worker.errors import DatabaseUnavailable
from worker.logging import get_logger, redact_text
from worker.runtime.context import WorkerContext
from worker.runtime.metrics import Metrics
from worker.runtime.monitor import Monitor
from worker.tracing import hooks

#: The collector's young-generation threshold in a worker (CPython's default is 700). Decoding one
#: batch of a thousand events makes some 25,000 container objects at once, nearly all freed by
#: reference counting when the job ends; at 700 the collector ran about 16 times per batch and
#: walked them each time (2.0 s of gc per 100,000 events, counted with ``gc.callbacks``; 0.11 s at
#: 50,000). What it still collects (reference cycles) waits for at most this many new objects.
GC_YOUNG_THRESHOLD = 50_000


def settle_collector() -> None:
    """Tune the garbage collector for a worker whose start-up is done (also the job benchmark's).

    Everything made so far (modules, the engine, settings) lives as long as the process: move it
    out of the collector's sight. Decoding a batch makes many objects, and each collection
    otherwise walked all of these again (a sixth of a busy worker's time in a profile; 43-53 ->
    36-42 us/event). Then collect young objects less often (:data:`GC_YOUNG_THRESHOLD`).
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])


log = get_logger("eventworker.worker")


async def _wait_for_database(db: Database, wait_s: float) -> None:
    """Check the schema, retrying connection errors for up to ``wait_s`` seconds."""
    deadline = time.monotonic() + wait_s
    delay = 0.25
    while True:
        try:
            await schema.ensure_current(db.engine)
            return
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            if time.monotonic() + delay > deadline:
                reason = redact_text(str(getattr(exc, "orig", None) or exc).splitlines()[0])
                raise DatabaseUnavailable(
                    f"database {redact_url(db.engine.url)} unreachable after {wait_s:.0f}s: {reason}"
                ) from None
            log.warning("worker.database_wait", retry_in_s=delay, error=type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


async def on_startup(ctx: WorkerContext) -> None:
    """Create the engine and session factory; refuse to start on an unreachable or old database."""
    settings = ctx["settings"]
    load_handler_modules(settings.handler_modules)  # a bad module stops the start, not every ingest
    db = Database.from_settings(settings)
    try:
        await _wait_for_database(db, settings.startup_wait)
    except BaseException:
        await db.dispose()
        raise
    ctx["db"] = db
    metrics = Metrics()
    metrics.watch_pool(db.engine.pool)
    ctx["metrics"] = metrics
    port = (
        None if settings.metrics_port is None else metrics.serve(settings.metrics_port, settings.metrics_host)
    )
    monitor = Monitor(
        settings=settings,
        worker_id=ctx["worker_id"],
        redis=ctx["redis"],
        db=db,
        metrics=metrics,
        metrics_port=port,
        cron_jobs=frozenset(CRON_JOBS),
    )
    monitor.start()
    ctx["monitor"] = monitor
    settle_collector()
    log.info(
        "worker.started",
        worker_id=ctx["worker_id"],
        jobs=sorted(ctx["known_jobs"]),
        metrics_listening_on=port,
        **settings.redacted(),
    )


async def on_shutdown(ctx: WorkerContext) -> None:
    """Stop the heartbeat and sampler, then dispose the engine: every pooled connection is closed."""
    monitor = ctx.get("monitor")
    if monitor is not None:
        await monitor.stop()
    db = ctx.get("db")
    if db is not None:
        await db.dispose()
    metrics = ctx.get("metrics")
    if metrics is not None:
        metrics.close()
    log.info("worker.stopped", worker_id=ctx["worker_id"])
    hooks.stop()


async def on_job_start(ctx: WorkerContext) -> None:
    """Bind job id, try and worker id into the log context of this job."""
    structlog.contextvars.bind_contextvars(
        job_id=ctx.get("job_id"), job_try=ctx.get("job_try"), worker_id=ctx["worker_id"]
    )
