"""What every benchmark of the suite shares: servers, a database of its own, worker processes, statistics.

A benchmark creates its PostgreSQL database (``ew_bench_<name>_<pid>``, so two runs never
meet) and drops it afterwards; it uses one Redis database (13 by default) with queue names and
job ids carrying the same ``<pid>``, and deletes the keys it made. Nothing here runs at import.
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import asyncpg
import redis.asyncio as aioredis
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
PG_URL = os.environ.get("EVENTWORKER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EVENTWORKER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
#: Marks every database, queue and job id of this run.
RUN_TAG = f"ewbench-{os.getpid()}"


def redis_client(url: str) -> aioredis.Redis:
    """A Redis client for ``url``."""
    client: aioredis.Redis = aioredis.Redis.from_url(url)
    return client


def load() -> list[float]:
    """The 1, 5 and 15 minute load averages, rounded: the benchmarks share two cores with whatever runs."""
    return [round(x, 2) for x in os.getloadavg()]


def median(values: Iterable[float]) -> float:
    """The median (of at least one value)."""
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank, of sorted or unsorted ``values``."""
    ordered = sorted(values)
    rank = max(1, round(q / 100 * len(ordered) + 0.5 - 1e-9))
    return float(ordered[min(rank, len(ordered)) - 1])


def rss_mib(pid: int) -> float:
    """Resident memory of process ``pid`` now, in MiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time process ``pid`` has used so far (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class BenchDatabase:
    """A migrated PostgreSQL database of this run: ``create``, use ``dsn`` (asyncpg) or ``url``, ``drop``."""

    name: str
    admin_url: str = PG_URL

    @property
    def dsn(self) -> str:
        """For asyncpg."""
        return make_url(self.admin_url).set(database=self.name).render_as_string(hide_password=False)

    @property
    def url(self) -> str:
        """For eventworker (SQLAlchemy with asyncpg)."""
        url = make_url(self.admin_url).set(drivername="postgresql+asyncpg", database=self.name)
        return url.render_as_string(hide_password=False)

    async def _admin(self, statement: str) -> None:
        connection = await asyncpg.connect(self.admin_url)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()

    async def create(self, partition_interval: str = "none") -> BenchDatabase:
        """Create the database afresh and migrate it to eventworker's schema (``events`` partitioned by
        ``partition_interval`` on PostgreSQL, ``none`` keeping one table)."""
        from worker.config import load_settings
        from worker.db import schema
        from worker.db.engine import Database

        await self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
        await self._admin(f'CREATE DATABASE "{self.name}"')
        db = Database.from_settings(load_settings(database_url=self.url, log_level="WARNING"))
        try:
            await schema.upgrade(db.engine, partition_interval=partition_interval)
        finally:
            await db.dispose()
        return self

    async def drop(self) -> None:
        """Remove the database."""
        await self._admin(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    async def empty(self) -> None:
        """Remove every stored event and dead letter (between runs), and let the planner know."""
        connection = await asyncpg.connect(self.dsn)
        try:
            await connection.execute("TRUNCATE events, dead_letters, handler_runs RESTART IDENTITY")
            await connection.execute("CHECKPOINT")
        finally:
            await connection.close()

    async def count(self, table: str = "events") -> int:
        """Rows in ``table``."""
        connection = await asyncpg.connect(self.dsn)
        try:
            return int(await connection.fetchval(f"SELECT count(*) FROM {table}"))
        finally:
            await connection.close()

    async def connections(self) -> int:
        """Server connections open to this database (``pg_stat_activity``)."""
        connection = await asyncpg.connect(self.admin_url)
        try:
            query = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
            return int(await connection.fetchval(query, self.name))
        finally:
            await connection.close()


def bench_database(purpose: str, admin_url: str = PG_URL) -> BenchDatabase:
    """A database for ``purpose`` on the server of ``admin_url``, named so that no other run uses it."""
    return BenchDatabase(f"ew_bench_{purpose}_{os.getpid()}", admin_url)


async def delete_keys(redis_url: str, *patterns: str) -> int:
    """Delete the Redis keys matching ``patterns`` (this run's): never a whole database."""
    client = redis_client(redis_url)
    deleted = 0
    try:
        for pattern in patterns:
            batch = [key async for key in client.scan_iter(match=pattern, count=1000)]
            for start in range(0, len(batch), 1000):
                deleted += await client.unlink(*batch[start : start + 1000])
    finally:
        await client.aclose()
    return deleted


@dataclass
class WorkerProcess:
    """An ``eventworker run`` (or another command) in its own process, with settings from ``env``.

    Its log goes to ``log_path``; ``ready`` waits for arq's first health check in Redis.
    """

    env: dict[str, str]
    log_path: Path
    command: Sequence[str] = ("-m", "worker", "run")
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> WorkerProcess:
        """Start the process."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, *self.command],
            env={**os.environ, **self.env},
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        return self

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.process is not None
        return self.process.pid

    async def ready(self, redis_url: str, queue: str, wait_s: float = 60.0) -> None:
        """Wait until the worker has polled its queue once (arq writes ``<queue>:health-check``)."""
        client = redis_client(redis_url)
        deadline = time.monotonic() + wait_s
        try:
            while not await client.exists(f"{queue}:health-check"):
                assert self.process is not None
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start; see {self.log_path}")
                await asyncio.sleep(0.05)
        finally:
            await client.aclose()

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM, wait for it to finish; return its exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
        return int(self.process.returncode)


def worker_env(db: BenchDatabase, redis_url: str, queue: str, **settings: Any) -> dict[str, str]:
    """Environment for an eventworker process on ``db`` and ``queue``; ``settings`` as EVENTWORKER_*."""
    env = {
        "DATABASE_URL": db.url,
        "REDIS_URL": redis_url,
        "EVENTWORKER_QUEUE_NAME": queue,
        "EVENTWORKER_LOG_FORMAT": "json",
    }
    env.update({f"EVENTWORKER_{name.upper()}": str(value) for name, value in settings.items()})
    return env
