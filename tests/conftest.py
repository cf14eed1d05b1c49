"""Shared fixtures: fresh databases on every supported driver, a clean Redis database.

A test asking for ``settings`` (or ``database_url``) runs once per driver in
:data:`BACKENDS`, each time on a fresh, migrated database: PostgreSQL copies of a
migrated template (asyncpg, psycopg), MariaDB databases (aiomysql, asyncmy), a SQLite
file (aiosqlite). ``pg_settings`` pins a test to PostgreSQL/asyncpg. A module that defines
its ``backend`` fixture over :data:`WITH_POOLER` also runs its tests through a PgBouncer in
transaction mode (:data:`POOLED_BACKENDS`, the session's ``pgbouncer``), with
``EVENTWORKER_DB_POOLER=transaction``, and on PostgreSQL with ``events`` partitioned by day
(:data:`PARTITIONED_BACKENDS`: copies of a template that migration 0003 partitioned, as
``eventworker migrate`` does a new database).

Integration and e2e tests use the real servers on loopback. A server that is down
makes the tests that need it error out loudly; nothing is skipped. Override the
servers with EVENTWORKER_TEST_PG_URL, EVENTWORKER_TEST_MYSQL_URL and
EVENTWORKER_TEST_REDIS_URL.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest
import redis.asyncio as aioredis
import structlog
from pgbouncer import PgBouncer
from pgcluster import replication, tls_cluster  # noqa: F401 - fixtures of the tests' own PostgreSQL clusters
from redis_servers import sentinel_group, sentinel_group_of_the_run  # noqa: F401 - the tests' own Redis
from sqlalchemy.engine import make_url

from worker.config import Settings, load_settings
from worker.db import schema
from worker.db.engine import Database
from worker.runtime.tracking import tracking_keys

PG_URL = os.environ.get("EVENTWORKER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
MYSQL_URL = os.environ.get("EVENTWORKER_TEST_MYSQL_URL", "mysql://root@127.0.0.1:3306/test")
REDIS_URL = os.environ.get("EVENTWORKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")

#: Every async driver eventworker supports, as the driver part of the SQLAlchemy URL.
BACKENDS = ("asyncpg", "psycopg", "aiomysql", "asyncmy", "aiosqlite")
SERVER_BACKENDS = ("asyncpg", "psycopg", "aiomysql", "asyncmy")
#: The PostgreSQL drivers through a PgBouncer in transaction mode: extra backends for the tests of
#: ingestion, exports, rollups and handlers (their modules' ``backend`` runs over :data:`WITH_POOLER`).
POOLED_BACKENDS = ("asyncpg via pgbouncer", "psycopg via pgbouncer")
#: The PostgreSQL drivers on a partitioned ``events`` (the tests of ingestion, exports, rollups and
#: handlers run on them too, through :data:`WITH_POOLER`; retention's own tests ask for them).
PARTITIONED_BACKENDS = ("asyncpg partitioned", "psycopg partitioned")
WITH_POOLER = (*BACKENDS, *POOLED_BACKENDS, *PARTITIONED_BACKENDS)


def _dsn(database: str) -> str:
    return make_url(PG_URL).set(database=database).render_as_string(hide_password=False)


async def _admin(*statements: str) -> None:
    connection = await asyncpg.connect(PG_URL)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


def pg_database_url(database: str, password: str | None = None, driver: str = "asyncpg") -> str:
    """Async URL of ``database`` on the test server (trust auth accepts any password)."""
    url = make_url(PG_URL).set(drivername=f"postgresql+{driver}", database=database)
    if password is not None:
        url = url.set(password=password)
    return url.render_as_string(hide_password=False)


def _template(name: str, partition_interval: str) -> Iterator[str]:
    async def build() -> None:
        await _admin(f'DROP DATABASE IF EXISTS "{name}"', f'CREATE DATABASE "{name}"')
        db = Database.from_settings(load_settings(database_url=pg_database_url(name)))
        try:
            await schema.upgrade(db.engine, partition_interval=partition_interval)
        finally:
            await db.dispose()

    # In a thread of its own: a template first asked for by an async fixture is built inside its loop.
    with ThreadPoolExecutor(1) as thread:
        thread.submit(asyncio.run, build()).result()
    yield name
    asyncio.run(_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str]:
    """A database migrated to head, ``events`` one table, copied for each test."""
    yield from _template(f"ew_template_{os.getpid()}", "none")


@pytest.fixture(scope="session")
def pg_partitioned_template() -> Iterator[str]:
    """A database migrated to head with ``events`` partitioned by day, copied for each test."""
    yield from _template(f"ew_template_partitioned_{os.getpid()}", "day")


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
    """The test Redis, checked to answer. Tests share it, so each uses its own queue (``queue_name``)."""
    client = aioredis.from_url(REDIS_URL)
    try:
        await client.ping()
    finally:
        await client.aclose()
    return REDIS_URL


@pytest.fixture
async def queue_name(redis_url: str) -> AsyncIterator[str]:
    """A queue no other test (or parallel test run) uses; its keys are removed afterwards."""
    name = f"ew-test:{uuid.uuid4().hex[:12]}"
    yield name
    client = aioredis.from_url(redis_url)
    try:
        await client.delete(name, name + ":health-check", *tracking_keys(name))
    finally:
        await client.aclose()


async def _mysql_admin(*statements: str) -> None:
    import asyncmy

    url = make_url(MYSQL_URL)
    connection = await asyncmy.connect(
        host=url.host or "127.0.0.1",
        port=url.port or 3306,
        user=url.username or "root",
        password=url.password or "",
    )
    try:
        async with connection.cursor() as cursor:
            for statement in statements:
                await cursor.execute(statement)
    finally:
        connection.close()


def mysql_database_url(database: str, driver: str) -> str:
    """Async URL of ``database`` on the test MariaDB/MySQL server."""
    url = make_url(MYSQL_URL).set(drivername=f"mysql+{driver}", database=database)
    return url.render_as_string(hide_password=False)


async def _migrate(url: str) -> None:
    db = Database.from_settings(load_settings(database_url=url))
    try:
        await schema.upgrade(db.engine)
    finally:
        await db.dispose()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The driver under test (a test may narrow it with ``@pytest.mark.parametrize("backend", ...)``)."""
    return str(request.param)


@pytest.fixture(scope="session")
def pgbouncer() -> Iterator[PgBouncer]:
    """A PgBouncer of this session in front of the test server: transaction pooling, 4 server connections
    per database (as the issue's set-up), started when a test first asks for it."""
    bouncer = PgBouncer(PG_URL, pool_size=4).start()
    yield bouncer
    bouncer.stop()


def pooler(backend: str) -> str:
    """``EVENTWORKER_DB_POOLER`` for ``backend``."""
    return "transaction" if backend in POOLED_BACKENDS else "none"


@pytest.fixture
async def database_url(
    backend: str, pg_template: str, tmp_path, request: pytest.FixtureRequest
) -> AsyncIterator[str]:
    """Async URL of a fresh database at the head revision, on ``backend``; dropped afterwards."""
    if backend in {"asyncpg", "psycopg"}:
        name = await _fresh_database(pg_template)
        yield pg_database_url(name, driver=backend)
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    elif backend in PARTITIONED_BACKENDS:
        name = await _fresh_database(request.getfixturevalue("pg_partitioned_template"))
        yield pg_database_url(name, driver=backend.split()[0])
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    elif backend in POOLED_BACKENDS:
        bouncer: PgBouncer = request.getfixturevalue("pgbouncer")  # started only for the tests using it
        name = await _fresh_database(pg_template)
        yield bouncer.url(name, driver=backend.split()[0])
        await _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    elif backend in {"aiomysql", "asyncmy"}:
        name = f"ew_test_{uuid.uuid4().hex[:12]}"
        await _mysql_admin(f"CREATE DATABASE `{name}` CHARACTER SET utf8mb4")
        url = mysql_database_url(name, backend)
        await _migrate(url)
        yield url
        await _mysql_admin(f"DROP DATABASE IF EXISTS `{name}`")
    elif backend == "aiosqlite":
        url = f"sqlite+aiosqlite:///{tmp_path}/eventworker.db"
        await _migrate(url)
        yield url
    else:  # pragma: no cover - BACKENDS lists the choices
        raise ValueError(backend)


@pytest.fixture
def unreachable_url(backend: str, database_url: str, tmp_path) -> str:
    """A URL on ``backend`` that cannot be connected to (nothing listens / no such directory)."""
    if backend == "aiosqlite":
        return f"sqlite+aiosqlite:///{tmp_path}/missing-directory/eventworker.db"
    return make_url(database_url).set(port=1).render_as_string(hide_password=False)


def _test_settings(database_url: str, redis_url: str, queue_name: str, db_pooler: str = "none") -> Settings:
    return load_settings(
        database_url=database_url,
        redis_url=redis_url,
        queue_name=queue_name,
        db_pooler=db_pooler,
        poll_delay=0.01,
        retry_base_delay=0.05,
        retry_max_delay=0.2,
        log_format="json",
        application_name=f"ew-test-{uuid.uuid4().hex[:8]}",
    )


@pytest.fixture
def settings(database_url: str, redis_url: str, queue_name: str, backend: str) -> Settings:
    """Settings on this test's database (each driver in turn), Redis and own queue, tuned for quick tests."""
    return _test_settings(database_url, redis_url, queue_name, pooler(backend))


@pytest.fixture
def pg_settings(pg_url: str, redis_url: str, queue_name: str) -> Settings:
    """Settings on a fresh PostgreSQL database through asyncpg, for PostgreSQL-only behaviour."""
    return _test_settings(pg_url, redis_url, queue_name)


@pytest.fixture
async def db(settings: Settings) -> AsyncIterator[Database]:
    """This test's database engine and sessions, disposed after the test."""
    database = Database.from_settings(settings)
    yield database
    await database.dispose()


@pytest.fixture
async def pg_db(pg_settings: Settings) -> AsyncIterator[Database]:
    """The PostgreSQL test database's engine and sessions, disposed after the test."""
    database = Database.from_settings(pg_settings)
    yield database
    await database.dispose()


@pytest.fixture(autouse=True)
def _clean_log_context() -> Iterator[None]:
    structlog.contextvars.clear_contextvars()
    yield
    structlog.contextvars.clear_contextvars()
