"""The worker owns the engine: tagging, short sessions, disposal, refusal on an unready database."""

from __future__ import annotations

import asyncio

import pytest
from conftest import SERVER_BACKENDS
from sqlalchemy import event as sa_event
from sqlalchemy import text
from support import connection_names, enqueue, event, run_worker

from worker import lifecycle
from worker.config import load_settings
from worker.db.engine import Database
from worker.errors import DatabaseUnavailable, SchemaBehindError
from worker.runtime.context import WorkerContext

pytestmark = pytest.mark.integration


def _ctx(settings) -> WorkerContext:
    return {"settings": settings, "worker_id": "test", "known_jobs": frozenset(), "redis": None}


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
async def test_connections_carry_the_application_name(settings, db):
    """The server shows each pooled connection under the configured name (application_name / program_name)."""
    tagged = Database.from_settings(settings.model_copy(update={"application_name": "ew-tag-check"}))
    try:
        async with tagged.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            assert await connection_names(db, "ew-tag-check") == ["ew-tag-check"]
    finally:
        await tagged.dispose()


async def test_a_running_job_shows_its_name_in_pg_stat_activity(pg_settings, pg_db):
    """While a job's transaction runs, application_name names the job; afterwards it reverts."""
    worker_db = Database.from_settings(pg_settings.model_copy(update={"application_name": "ew-job-tag"}))
    try:
        async with worker_db.transaction("ingest_events") as session:
            await session.execute(text("SELECT 1"))
            assert await connection_names(pg_db, "%ew-job-tag") == ["ingest_events@ew-job-tag"]
        async with worker_db.engine.connect() as connection:
            await connection.execute(text("SELECT 1"))
            assert await connection_names(pg_db, "%ew-job-tag") == ["ew-job-tag"]
    finally:
        await worker_db.dispose()


@pytest.mark.parametrize("backend", ["asyncpg", "psycopg"])
async def test_pg_stat_activity_names_the_job_while_a_real_job_runs(settings, db, monkeypatch):
    """Seen from another connection, a worker's ingest transaction is tagged ingest_events@<name>."""
    from worker.db.sql import statements

    seen: list[list[str]] = []
    original = statements.insert_events

    async def observed(session, rows):
        result = await original(session, rows)  # the transaction has its connection now, still open
        seen.append(await connection_names(db, f"%{settings.connection_name}"))
        return result

    monkeypatch.setattr(statements, "insert_events", observed)
    await enqueue(settings, [[event(1)]])
    await run_worker(settings)
    assert seen == [[f"ingest_events@{settings.connection_name}"]]


@pytest.mark.parametrize("backend", SERVER_BACKENDS)
async def test_shutdown_disposes_the_engine(settings, db):
    """After on_shutdown no connection of the worker is left on the server."""
    ctx = _ctx(settings)
    await lifecycle.on_startup(ctx)
    async with ctx["db"].transaction("ingest_events") as session:
        await session.execute(text("SELECT 1"))
    assert await connection_names(db, f"%{settings.connection_name}") == [settings.connection_name]
    await lifecycle.on_shutdown(ctx)
    # The client has closed them; MariaDB forgets a closed connection a moment later.
    for _ in range(50):
        if not (left := await connection_names(db, f"%{settings.connection_name}")):
            break
        await asyncio.sleep(0.05)
    assert left == []


async def test_sessions_are_returned_after_each_job(settings):
    """Once jobs finish, the worker's pool has no connection checked out."""
    seen: list[int] = []
    original = lifecycle.on_shutdown

    async def check_then_shutdown(ctx):
        seen.append(ctx["db"].engine.pool.checkedout())
        await original(ctx)

    await enqueue(settings, [[event(i)] for i in range(20)])
    worker = await run_worker(settings, on_shutdown=check_then_shutdown)
    assert worker.jobs_complete == 20
    assert seen == [0]


async def test_startup_refuses_an_unmigrated_database(empty_pg_url, redis_url):
    """A worker started on a database without the schema says which command to run."""
    settings = load_settings(database_url=empty_pg_url, redis_url=redis_url)
    with pytest.raises(SchemaBehindError, match="eventworker migrate"):
        await lifecycle.on_startup(_ctx(settings))


async def test_startup_gives_up_on_an_unreachable_database_without_leaking_the_password(redis_url):
    """An unreachable database ends start-up with one clear error that hides the password."""
    settings = load_settings(
        database_url="postgresql://ew:hunter2-secret@127.0.0.1:1/nowhere",
        redis_url=redis_url,
        startup_wait=0.5,
    )
    with pytest.raises(DatabaseUnavailable) as caught:
        await asyncio.wait_for(lifecycle.on_startup(_ctx(settings)), 10)
    message = str(caught.value)
    assert "hunter2-secret" not in message
    assert "postgresql+asyncpg://ew:***@127.0.0.1:1/nowhere" in message
    assert len(message.splitlines()) == 1


async def test_a_transaction_takes_its_connection_at_its_first_statement(settings, db):
    """Acquire late: a job's transaction with no statement checks out no connection and sends nothing."""
    checkouts: list[tuple[object, ...]] = []

    def count(*args: object) -> None:
        checkouts.append(args)

    pool = db.engine.sync_engine.pool
    sa_event.listen(pool, "checkout", count)
    try:
        async with db.transaction("noop"):
            assert pool.checkedout() == 0
        assert checkouts == []
        async with db.transaction("ingest_events") as session:
            assert checkouts == []
            await session.execute(text("SELECT 1"))
            assert len(checkouts) == 1
            assert pool.checkedout() == 1
        assert pool.checkedout() == 0
    finally:
        sa_event.remove(pool, "checkout", count)
