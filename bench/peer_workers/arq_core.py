"""Peer (a): the ingest job on bare arq, as its documentation shows a worker.

``WorkerSettings`` as ``arq`` reads it: the job, JSON jobs (orjson instead of pickle, so that
any producer can enqueue and nothing unpickles what is in Redis), the engine made in
``on_startup`` and disposed in ``on_shutdown``. Run with ``python -m bench.peer_workers.arq_core``:
the queue and the URLs come from the environment (``PEER_QUEUE``, ``REDIS_URL``,
``DATABASE_URL``, ``PEER_MAX_JOBS``, ``PEER_POLL_DELAY``), with arq's own log configuration
as its command line sets it, at WARNING: failures are logged, finished jobs not. At INFO, arq's
line for each job's start holds the ``repr`` of its arguments, the whole batch cut short after
it was built: 2.9 ms of CPU per 1,000 events here, a tenth of this worker's; SAQ's command line
logs only errors by default.
"""

from __future__ import annotations

import logging.config
import os
from typing import Any

import orjson
from arq.connections import RedisSettings
from arq.logs import default_log_config
from arq.worker import func, run_worker
from sqlalchemy.ext.asyncio import async_sessionmaker

from bench.peer_workers.store import make_engine, store_events

JOB = "store_events"


async def startup(ctx: dict[str, Any]) -> None:
    """Make the engine and the sessions' factory once per worker."""
    ctx["engine"] = make_engine(os.environ["DATABASE_URL"])
    ctx["sessions"] = async_sessionmaker(ctx["engine"], expire_on_commit=False)


async def shutdown(ctx: dict[str, Any]) -> None:
    """Close the pool."""
    await ctx["engine"].dispose()


async def store(ctx: dict[str, Any], raw_events: list[Any]) -> dict[str, int]:
    """The job: one batch of events."""
    return await store_events(ctx["sessions"], raw_events, ctx["job_id"])


def dumps(value: Any) -> bytes:
    """arq's job serializer."""
    return orjson.dumps(value)


class WorkerSettings:
    """What ``arq`` reads."""

    functions = [func(store, name=JOB)]  # noqa: RUF012 (arq reads it)
    on_startup = startup
    on_shutdown = shutdown
    job_serializer = dumps
    job_deserializer = orjson.loads
    max_jobs = 10
    keep_result = 0


def main() -> None:
    """Run the worker on the queue the environment names."""
    logging.config.dictConfig(default_log_config(verbose=False))
    logging.getLogger("arq").setLevel(logging.WARNING)
    run_worker(
        WorkerSettings,  # type: ignore[arg-type]
        redis_settings=RedisSettings.from_dsn(os.environ["REDIS_URL"]),
        queue_name=os.environ["PEER_QUEUE"],
        max_jobs=int(os.environ.get("PEER_MAX_JOBS", "10")),
        poll_delay=float(os.environ.get("PEER_POLL_DELAY", "0.05")),
        health_check_interval=1,
    )


if __name__ == "__main__":
    main()
