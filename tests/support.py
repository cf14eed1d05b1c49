"""Helpers shared by the integration and e2e tiers: sample events, a worker run, row counts."""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis.asyncio as aioredis
from arq.jobs import Job
from arq.worker import Worker
from sqlalchemy import func, select, text

from worker.config import Settings
from worker.context import WorkerContext
from worker.db.engine import Database
from worker.db.models import DeadLetter, Event
from worker.main import worker_settings
from worker.producer import EventProducer
from worker.serialization import deserialize


def event(n: int | str, source: str = "/tests", **extra: Any) -> dict[str, Any]:
    """A valid CloudEvent numbered ``n``."""
    return {
        "specversion": "1.0",
        "id": f"evt-{n}",
        "source": source,
        "type": "com.example.test",
        "time": "2026-01-02T03:04:05.123456Z",
        "data": {"n": str(n), "payload": "x" * 50},
        **extra,
    }


def unique_source() -> str:
    """A source no other test uses."""
    return f"/tests/{uuid.uuid4().hex[:8]}"


async def run_worker(settings: Settings, **overrides: Any) -> Worker:
    """Run a real arq worker in burst mode until the queue is empty; return it (closed)."""
    options = worker_settings(settings, burst=True, handle_signals=False, poll_delay=0.01, **overrides)
    worker = Worker(**options)
    try:
        await worker.async_run()
    finally:
        await worker.close()
    return worker


async def enqueue(settings: Settings, batches: list[Any]) -> list[str]:
    """Enqueue each element of ``batches`` as one ingest job; return the job ids."""
    async with EventProducer(settings.redis_url, queue_name=settings.queue_name) as producer:
        return [await producer.emit_batch(batch) for batch in batches]


async def results(settings: Settings, job_ids: list[str]) -> list[Any]:
    """The results of finished jobs, in order."""
    async with EventProducer(settings.redis_url, queue_name=settings.queue_name) as producer:
        return [await Job(j, producer.redis, _deserializer=deserialize).result(timeout=30) for j in job_ids]


async def put_raw_job(settings: Settings, raw: bytes) -> str:
    """Write ``raw`` bytes as a job into the queue, as a foreign producer could; return its id."""
    job_id = uuid.uuid4().hex
    client = aioredis.from_url(settings.redis_url)
    try:
        await client.set(f"arq:job:{job_id}", raw)
        await client.zadd(settings.queue_name, {job_id: int(time.time() * 1000)})
    finally:
        await client.aclose()
    return job_id


def job_ctx(settings: Settings, db: Database, job_id: str = "job-1", job_try: int = 1) -> WorkerContext:
    """The ``ctx`` arq hands a job, for calling a job coroutine directly."""
    return {
        "settings": settings,
        "db": db,
        "worker_id": "test",
        "known_jobs": frozenset(),
        "redis": None,
        "job_id": job_id,
        "job_try": job_try,
    }


async def count(db: Database, model: type[Event] | type[DeadLetter]) -> int:
    """Rows in ``model``'s table."""
    async with db.transaction() as session:
        return int(await session.scalar(select(func.count()).select_from(model)) or 0)


async def connection_names(db: Database, like: str) -> list[str]:
    """Names the server shows for its other connections matching ``like``.

    PostgreSQL: ``pg_stat_activity.application_name``; MySQL/MariaDB: the ``program_name``
    connection attribute (needs performance_schema, which .ci/services turns on).
    """
    async with db.engine.connect() as connection:
        if db.dialect == "postgresql":
            query = (
                "SELECT application_name FROM pg_stat_activity "
                "WHERE application_name LIKE :like AND pid <> pg_backend_pid()"
            )
        elif db.dialect == "mysql":
            enabled = await connection.scalar(text("SELECT @@performance_schema"))
            assert enabled == 1, "MariaDB/MySQL must run with performance_schema=ON (see .ci/services)"
            query = (
                "SELECT ATTR_VALUE FROM performance_schema.session_connect_attrs "
                "WHERE ATTR_NAME = 'program_name' AND ATTR_VALUE LIKE :like "
                "AND PROCESSLIST_ID <> CONNECTION_ID()"
            )
        else:
            raise AssertionError(f"{db.dialect} has no server to show connections")
        rows = await connection.execute(text(query), {"like": like})
        return [row[0] for row in rows]
