"""Peer (b): the same ingest job on SAQ, with its Redis queue.

``settings`` is what ``saq`` reads (``python -m saq bench.peer_workers.saq_core.settings``; a
callable, so that the queue and the URLs are read from the environment when the worker starts:
``PEER_QUEUE``, ``REDIS_URL``, ``DATABASE_URL``, ``PEER_MAX_JOBS`` as its concurrency). Jobs'
arguments are JSON through orjson; the engine is made in the start-up hook, disposed in the
shutdown hook.
"""

from __future__ import annotations

import os
from typing import Any

import orjson
from saq import Queue
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


async def store_events_job(ctx: dict[str, Any], *, raw_events: list[Any]) -> dict[str, int]:
    """The job: one batch of events."""
    return await store_events(ctx["sessions"], raw_events, ctx["job"].key)


def queue(redis_url: str, name: str) -> Queue:
    """The queue, for the worker and the producer alike."""
    return Queue.from_url(redis_url, name=name, dump=orjson.dumps, load=orjson.loads)


def settings() -> dict[str, Any]:
    """What ``saq`` reads."""
    return {
        "queue": queue(os.environ["REDIS_URL"], os.environ["PEER_QUEUE"]),
        "functions": [(JOB, store_events_job)],
        "concurrency": int(os.environ.get("PEER_MAX_JOBS", "10")),
        "startup": startup,
        "shutdown": shutdown,
    }
