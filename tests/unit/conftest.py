"""Fixtures for the unit tier: no network, only fakeredis and SQLite files in ``tmp_path``.

Every test runs with a clean environment (no ``EVENTWORKER_*``, ``DATABASE_URL`` or
``REDIS_URL`` from the developer's shell, no ``./settings.env``), logging and structlog
put back as they were, and an empty in-process Redis. Databases are copies of one SQLite
file migrated once per session, so a test starts from the real schema without paying
for Alembic each time.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shutil
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
from arq.worker import Worker

from worker.config import Settings, load_settings
from worker.db import schema
from worker.db.engine import Database
from worker.main import worker_settings
from worker.protocol.redis import MemoryArqRedis, memory_pool
from worker.runtime.context import WorkerContext

#: Names the settings are read from; removed so the shell running pytest cannot change a test.
_SETTINGS_VARIABLES = ("DATABASE_URL", "REDIS_URL")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No settings from the caller's environment or working directory."""
    for name in list(os.environ):
        if name.startswith("EVENTWORKER_") or name in _SETTINGS_VARIABLES:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


@pytest.fixture(autouse=True)
def isolated_logging() -> Iterator[None]:
    """Undo configure_logging and bound contextvars after each test."""
    root, arq_logger = logging.getLogger(), logging.getLogger("arq")
    saved_root = (root.handlers[:], root.level)
    saved_arq = (arq_logger.handlers[:], arq_logger.level, arq_logger.propagate)
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()
    structlog.reset_defaults()
    root.handlers[:], root.level = saved_root
    arq_logger.handlers[:], arq_logger.level, arq_logger.propagate = saved_arq


@pytest.fixture
async def redis() -> AsyncIterator[MemoryArqRedis]:
    """The process's in-process Redis, emptied: one fakeredis server is shared by the whole process."""
    pool = memory_pool()
    await pool.flushall()
    yield pool
    await pool.aclose(close_connection_pool=True)


async def _migrate(url: str) -> None:
    db = Database.from_settings(load_settings(database_url=url, redis_url="memory://"))
    try:
        await schema.upgrade(db.engine)
    finally:
        await db.dispose()


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file at the head revision, to be copied by each test that needs a database."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    asyncio.run(_migrate(f"sqlite+aiosqlite:///{path}"))
    return path


def _make_settings(database_path: Path, **overrides: Any) -> Settings:
    options: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{database_path}",
        "redis_url": "memory://",
        "log_level": "WARNING",
        "log_format": "json",
        "max_tries": 3,
        "retry_base_delay": 0.01,
        "retry_max_delay": 0.04,
        "poll_delay": 0.01,
        "startup_wait": 0,
    }
    return load_settings(**{**options, **overrides})


@pytest.fixture
def database_path(tmp_path: Path, migrated_template: Path) -> Path:
    """A fresh migrated SQLite database file for this test."""
    path = tmp_path / "eventworker.db"
    shutil.copyfile(migrated_template, path)
    return path


@pytest.fixture
def make_settings(database_path: Path) -> Callable[..., Settings]:
    """Settings on this test's database and the in-process Redis, fast retries, ``overrides`` winning."""
    return functools.partial(_make_settings, database_path)


@pytest.fixture
def settings(make_settings: Callable[..., Settings]) -> Settings:
    """Settings on this test's database and the in-process Redis, 3 tries with back-off of 5-40 ms."""
    return make_settings()


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """The engine and sessions on this test's database, disposed afterwards."""
    database = Database.from_settings(settings)
    yield database
    await database.dispose()


async def _new_aiosqlite_threads_stopped(before: set[threading.Thread]) -> None:
    """Wait, with the loop still running, for aiosqlite threads started since ``before`` to end.

    aiosqlite stops a connection that failed to open without awaiting it; its thread then
    calls back into the event loop, which must still be open or the thread raises.
    """
    for thread in set(threading.enumerate()) - before:
        if "_connection_worker_thread" in thread.name:
            await asyncio.to_thread(thread.join, 2.0)


@pytest.fixture
async def unreachable_db(make_settings: Callable[..., Settings], tmp_path: Path) -> AsyncIterator[Database]:
    """A Database whose SQLite file cannot be opened (its directory does not exist)."""
    before = set(threading.enumerate())
    database = Database.from_settings(
        make_settings(database_url=f"sqlite+aiosqlite:///{tmp_path}/missing/eventworker.db")
    )
    yield database
    await database.dispose()
    await _new_aiosqlite_threads_stopped(before)


@pytest.fixture
def make_ctx(settings: Settings, db: Database) -> Callable[..., WorkerContext]:
    """Build the ``ctx`` arq hands a job, as the worker fills it."""

    def make(*, job_try: int = 1, job_id: str = "job-1", **overrides: Any) -> WorkerContext:
        ctx: WorkerContext = {
            "settings": settings,
            "worker_id": "test-host:1",
            "known_jobs": frozenset({"ingest_events", "store_undecodable_job"}),
            "redis": None,
            "db": db,
            "job_id": job_id,
            "job_try": job_try,
        }
        ctx.update(overrides)  # type: ignore[typeddict-item]
        return ctx

    return make


async def _run_worker(settings: Settings, **overrides: Any) -> Worker:
    """Run a burst worker in this process until the queue is empty, then close it (no cron ticks)."""
    options = worker_settings(
        settings, **{"burst": True, "handle_signals": False, "poll_delay": 0.01, "cron_jobs": [], **overrides}
    )
    worker = Worker(**options)
    try:
        await worker.async_run()
    finally:
        await worker.close()
    return worker


@pytest.fixture
def run_worker() -> Callable[..., Awaitable[Worker]]:
    """``await run_worker(settings, **overrides)``: a burst worker in this process, closed after."""
    return _run_worker
