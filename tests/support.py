"""Helpers shared by the integration and e2e tiers: sample events, worker runs and processes, row counts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aioredis
from arq.jobs import Job
from arq.worker import Worker
from sqlalchemy import func, select, text

from jobs.rollup import update
from worker.config import Settings
from worker.db.engine import Database
from worker.db.models import DeadLetter, Event
from worker.db.sql import partition_sql, status_sql
from worker.main import worker_settings
from worker.protocol.producer import EventProducer
from worker.protocol.serialization import deserialize
from worker.runtime.context import WorkerContext


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
    """Run a real arq worker in burst mode until the queue is empty; return it (closed).

    No cron jobs unless asked: a tick falling inside the run would add a job to the counts.
    """
    options = worker_settings(
        settings, **{"burst": True, "handle_signals": False, "poll_delay": 0.01, "cron_jobs": [], **overrides}
    )
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


async def catch_up_rollups(settings: Settings, within: float = 30) -> None:
    """Run rollup updates until no stored event is past the checkpoint.

    On PostgreSQL the checkpoint is the server's transaction horizon: a transaction open in any
    database of the server (another test run's, say) holds it back until that transaction ends.
    """
    db = Database.from_settings(settings)
    deadline = time.monotonic() + within
    try:
        while True:
            await update(db, settings)
            async with db.transaction() as session:
                lag = await status_sql.rollup_lag(session)
            if lag.events == 0:
                return
            assert time.monotonic() < deadline, f"rollups still {lag.events} events behind after {within}s"
            await asyncio.sleep(0.1)
    finally:
        await db.dispose()


async def make_partitions(session: Any, times: list[datetime]) -> None:
    """The partitions rows received at ``times`` need, on a partitioned events (PostgreSQL), as an
    ingest makes them; nothing elsewhere. For tests that write events rows themselves."""
    if session.get_bind().dialect.name != "postgresql":
        return
    layout = await partition_sql.read_layout(session)
    if layout.partitioned:
        await partition_sql.ensure_partitions(session, times, layout.interval)


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


def process_env(**values: str) -> dict[str, str]:
    """This process's environment without eventworker settings, JSON logs, then ``values``."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("EVENTWORKER_") and k not in {"DATABASE_URL", "REDIS_URL"}
    }
    return {**env, "EVENTWORKER_LOG_FORMAT": "json", **values}


class WorkerProcess:
    """``python -m worker run`` with its output in a file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "worker", "run"], env=env, stdout=self._out, stderr=subprocess.STDOUT
        )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_started(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while "worker.started" not in self.output():
            assert self.process.poll() is None, f"worker exited early:\n{self.output()}"
            assert time.monotonic() < deadline, f"worker did not start:\n{self.output()}"
            time.sleep(0.05)

    def started(self) -> dict[str, Any]:
        """The worker's ``worker.started`` log line (worker id, metrics port, settings)."""
        self.wait_started()
        line = next(line for line in self.output().splitlines() if '"worker.started"' in line)
        return dict(orjson.loads(line))

    def stop(self, timeout: float = 20) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._out.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._out.close()
