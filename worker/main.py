"""The arq worker definition: ``arq worker.main.WorkerSettings`` or ``eventworker run``.

``WorkerSettings`` is built when it is first looked up (PEP 562 module ``__getattr__``),
from the environment at that moment: importing this module reads nothing and
connects nowhere. :func:`worker_settings` builds the same from given settings.
"""

from __future__ import annotations

from datetime import UTC
from typing import Any, cast

from arq.cron import CronJob, cron
from arq.worker import func

from jobs.export import export_events
from jobs.handlers import run_handlers, sweep_handlers
from jobs.ingest import ingest_events
from jobs.partitions import maintain_partitions
from jobs.retention import apply_retention
from jobs.rollup import rebuild_rollups, update_rollups
from jobs.stats import event_stats
from jobs.undecodable import store_undecodable_job
from worker import lifecycle
from worker.config import Settings, load_settings, unknown_variables
from worker.constants import (
    APPLY_RETENTION_JOB,
    INGEST_JOB,
    MAINTAIN_PARTITIONS_JOB,
    SWEEP_HANDLERS_JOB,
    UPDATE_ROLLUPS_JOB,
)
from worker.errors import ConfigError, EventWorkerError
from worker.logging import configure_logging, get_logger
from worker.protocol.redis import MEMORY_URL, memory_pool, patch_arq_for_memory, refuse_cluster, worker_pool
from worker.protocol.serialization import job_deserializer, serialize
from worker.runtime.context import WorkerContext, worker_id
from worker.runtime.jobrunner import RECORD_TRIES, JobFunction
from worker.tracing import hooks

#: The jobs a worker runs when asked, each by its function's name (a name of ``worker.constants``).
FUNCTIONS: tuple[JobFunction, ...] = (
    ingest_events,
    store_undecodable_job,
    rebuild_rollups,
    export_events,
    run_handlers,
    event_stats,
)


#: How long a cron tick's result stays in Redis. While it does, the tick's id cannot be enqueued
#: again: arq keeps no result for cron jobs by default, so a worker running late (its loop held up
#: past the tick) could enqueue a tick that had already run, and it ran again once arq's 60 s
#: in-progress lock on it expired.
CRON_TICK_KEPT_S = 3600.0


def cron_jobs() -> list[CronJob]:
    """The periodic jobs. Each tick gets the id ``<name>:<tick>``, so it runs once across workers.

    A cron job's ``name`` must be a job name the worker knows: arq's default ``cron:<name>``
    would be refused by our job deserializer and kept as a dead letter.
    """
    kept = CRON_TICK_KEPT_S
    return [
        cron(cast(Any, update_rollups), name=UPDATE_ROLLUPS_JOB, second=5, unique=True, keep_result=kept),
        cron(
            cast(Any, apply_retention),
            name=APPLY_RETENTION_JOB,
            hour=3,
            minute=15,
            second=0,
            unique=True,
            keep_result=kept,
        ),
        cron(cast(Any, sweep_handlers), name=SWEEP_HANDLERS_JOB, second=35, unique=True, keep_result=kept),
        cron(
            cast(Any, maintain_partitions),
            name=MAINTAIN_PARTITIONS_JOB,
            minute=45,
            second=50,
            unique=True,
            keep_result=kept,
        ),
    ]


#: arq's time limit is ours plus this, so our own limit fires first and the job is retried or recorded.
TIMEOUT_GRACE_S = 5.0

#: arq's own try limit, only a backstop. The job runner stops trying a job after ``max_tries`` and
#: records it in failed_jobs; while the database is down that record is retried with back-off, so arq
#: must not drop the job first (it did after ``max_tries + RECORD_TRIES``, keeping only a log line).
#: With the default back-off a record is retried every 8 to 16 s: 1000 tries cover about 3 hours.
ARQ_TRY_LIMIT = 1000

log = get_logger("eventworker.worker")


#: The ``service.name`` of a worker's spans when ``OTEL_SERVICE_NAME`` gives none.
TRACING_SERVICE = "eventworker"


def _configure_logging(settings: Settings) -> None:
    configure_logging(
        settings.log_level, settings.log_format, settings.secrets(), processors=hooks.log_processors()
    )


async def _startup(ctx: WorkerContext) -> None:
    # arq's CLI installs its own log handlers after reading WorkerSettings; take them back.
    settings = ctx["settings"]
    _configure_logging(settings)
    try:
        if settings.redis_url != MEMORY_URL:
            await refuse_cluster(ctx["redis"], settings.redis_url)  # before any job meets a MOVED
        # Before the engine exists (its statements are spanned from the start); off unless OTEL_* ask.
        tracing = hooks.start(TRACING_SERVICE, settings.secrets())
        if tracing is not None:
            tracing.quiet_outside_spans()  # arq's main task: its polls and claims are no spans
            _configure_logging(settings)  # every line written inside a span names it
        await lifecycle.on_startup(ctx)
    except EventWorkerError as exc:
        log.error("worker.refused_to_start", error=str(exc))
        raise SystemExit(1) from None


def worker_settings(settings: Settings, **overrides: Any) -> dict[str, Any]:
    """arq Worker keyword arguments for ``settings`` (``overrides`` win)."""
    periodic = cron_jobs()
    names = frozenset(f.__name__ for f in FUNCTIONS) | {job.name for job in periodic}
    ctx: WorkerContext = {"settings": settings, "worker_id": worker_id(), "known_jobs": names, "redis": None}
    options: dict[str, Any] = {
        "functions": [func(cast(Any, f), name=f.__name__) for f in FUNCTIONS],
        "cron_jobs": periodic,
        "queue_name": settings.queue_name,
        "on_startup": _startup,
        "on_shutdown": lifecycle.on_shutdown,
        "on_job_start": lifecycle.on_job_start,
        "ctx": ctx,
        "max_jobs": settings.max_jobs,
        "poll_delay": settings.poll_delay,
        "job_timeout": settings.job_timeout + TIMEOUT_GRACE_S,
        # On SIGTERM/SIGINT: take no new job, let running ones finish for this long, then cancel the rest,
        # which arq hands back to the queue. Without the wait arq cancels every job at once, and a job
        # cancelled while arq fetches or finishes it escapes arq's handling: the worker exits 1 and the
        # job stays locked until job_timeout + 15 s (docs/concepts.md, "Guarantees").
        "job_completion_wait": settings.shutdown_wait,
        "max_tries": max(settings.max_tries + RECORD_TRIES, ARQ_TRY_LIMIT),
        "health_check_interval": settings.health_check_interval,
        "keep_result": settings.keep_result,
        "job_serializer": serialize,
        # The ingest job reads its events from their JSON text (worker.domain.wire): the fast path.
        "job_deserializer": job_deserializer(names, raw_argument_jobs=frozenset({INGEST_JOB})),
        "timezone": UTC,  # cron hours are UTC whatever the container's local time
    }
    if settings.redis_url == MEMORY_URL:
        patch_arq_for_memory()
        options["redis_pool"] = memory_pool(options["job_deserializer"])
    else:
        options["redis_pool"] = worker_pool(
            settings.redis_url,
            retry_window=settings.redis_retry_window,
            job_deserializer=options["job_deserializer"],
            queue_name=settings.queue_name,
        )
    return {**options, **overrides}


def settings_from_environment() -> dict[str, Any]:
    """Worker keyword arguments from the environment; a bad setting exits with one line."""
    try:
        settings = load_settings()
        unknown = [] if settings.strict_settings else unknown_variables()
    except ConfigError as exc:
        raise SystemExit(f"eventworker: configuration error: {exc}") from None
    if settings.redis_url == MEMORY_URL:
        raise SystemExit(
            "eventworker: configuration error: REDIS_URL: memory:// works only inside one process "
            "(`eventworker demo`); a worker needs a real Redis, e.g. redis://localhost:6379/0"
        )
    _configure_logging(settings)
    for variable in unknown:  # a typo, most likely: said once at start (EVENTWORKER_STRICT_SETTINGS refuses)
        log.warning(
            "settings.unknown_variable",
            variable=variable.name,
            file=variable.file,
            closest=variable.suggestion,
        )
    return worker_settings(settings)


def __getattr__(name: str) -> Any:
    if name == "WorkerSettings":
        return settings_from_environment()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
