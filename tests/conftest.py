"""Shared fixtures: fresh PostgreSQL databases copied from a migrated template, a clean Redis database.

Integration and e2e tests use the real servers on loopback. A server that is down
makes the tests that need it error out loudly; nothing is skipped.
Override the servers with EVENTWORKER_TEST_PG_URL and EVENTWORKER_TEST_REDIS_URL.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
import redis.asyncio as aioredis
import structlog
from sqlalchemy.engine import make_url

from worker.config import Settings, load_settings
from worker.db import schema
from worker.db.engine import Database

PG_URL = os.environ.get("EVENTWORKER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("EVENTWORKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


def _dsn(database: str) -> str:
    return make_url(PG_URL).set(database=database).render_as_string(hide_password=False)


async def _admin(*statements: str) -> None:
    connection = await asyncpg.connect(PG_URL)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def pg_database_url(database: str, password: str | None = None) -> str:
    """Async URL of ``database`` on the test server (trust auth accepts any password)."""
    url = make_url(PG_URL).set(drivername="postgresql+asyncpg", database=database)
    if password is not None:
        url = url.set(password=password)
    return url.render_as_string(hide_password=False)


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated to head, copied for each test."""
    name = f"ew_template_{os.getpid()}"

    async def build() -> None:
        await _admin(f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"')
        db = Database.from_settings(load_settings(database_url=pg_database_url(name)))
        try:
            await schema.upgrade(db.engine)
        finally:
            await db.dispose()

    asyncio.run(build())
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def _fresh_database(template: str | None) -> str:
    name = f"ew_test_{uuid.uuid4().hex[:12]}"
    clause = f' TEMPLATE "{template}"' if template else ""
    await _admin(f'CREATE DATABASE "{name}"{clause}')
    return name


@pytest.fixture
async def pg_database(pg_template: str) -> AsyncIterator[str]:
    """Name of a fresh, migrated database, dropped after the test."""
    name = await _fresh_database(pg_template)
    yield name
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def pg_url(pg_database: str) -> str:
    """Async URL of a fresh, migrated database."""
    return pg_database_url(pg_database)


@pytest.fixture
async def empty_pg_url() -> AsyncIterator[str]:
    """Async URL of a fresh database with no schema at all."""
    name = await _fresh_database(None)
    yield pg_database_url(name)
    await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    """A Redis database emptied before and after the test."""
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.flushdb()
        yield REDIS_URL
        await client.flushdb()
    finally:
        await client.aclose()


@pytest.fixture
def settings(pg_url: str, redis_url: str) -> Settings:
    """Settings for a worker on the test database and Redis, tuned for quick tests."""
    return load_settings(
        database_url=pg_url,
        redis_url=redis_url,
        poll_delay=0.01,
        retry_base_delay=0.05,
        retry_max_delay=0.2,
        log_format="json",
        application_name=f"ew-test-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """The test database's engine and sessions, disposed after the test."""
    database = Database.from_settings(settings)
    yield database
    await database.dispose()


@pytest.fixture(autouse=True)
def _clean_log_context() -> Iterator[None]:
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()
