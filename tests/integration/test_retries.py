"""Database outages are retried with back-off; a job out of tries is recorded and can be re-driven."""

from __future__ import annotations

import asyncio

import arq
import pytest
from click.testing import CliRunner
from sqlalchemy import select
from support import count, enqueue, event, run_worker, unique_source

from jobs.ingest import ingest_events
from worker.commands.cli import main as cli
from worker.db.engine import Database
from worker.db.models import Event, FailedJob
from worker.errors import JobFailed
from worker.runtime.context import WorkerContext

pytestmark = pytest.mark.integration


def _ctx(settings, db: Database, job_try: int) -> WorkerContext:
    return {
        "settings": settings,
        "db": db,
        "worker_id": "test",
        "known_jobs": frozenset(),
        "redis": None,
        "job_id": "job-retry",
        "job_try": job_try,
    }


async def test_a_database_outage_is_retried_then_stored(settings, db, unreachable_url):
    """With the database unreachable the job asks arq to retry later; once it is back, the batch is stored."""
    down = Database.from_settings(settings.model_copy(update={"database_url": unreachable_url}))
    batch = [event(i) for i in range(10)]
    try:
        with pytest.raises(arq.Retry) as retry:
            await ingest_events(_ctx(settings, down, 1), batch)
    finally:
        await down.dispose()
    assert 0 < retry.value.defer_score <= settings.retry_base_delay * 1000
    assert await ingest_events(_ctx(settings, db, 2), batch) == {
        "accepted": 10,
        "duplicates": 0,
        "rejected": 0,
    }


async def test_back_off_grows_with_each_try(settings, unreachable_url):
    """Later tries wait longer: base * 2**(try-1), half of it fixed and half jitter."""
    slow = settings.model_copy(update={"retry_base_delay": 1.0, "retry_max_delay": 100.0})
    down = Database.from_settings(slow.model_copy(update={"database_url": unreachable_url}))
    delays = []
    try:
        for job_try in (1, 2, 3, 4):
            with pytest.raises(arq.Retry) as retry:
                await ingest_events(_ctx(slow, down, job_try), [event(1)])
            delays.append(retry.value.defer_score / 1000)
    finally:
        await down.dispose()
    for job_try, delay in enumerate(delays, start=1):
        assert 2 ** (job_try - 1) / 2 <= delay <= 2 ** (job_try - 1)


async def test_the_last_try_records_the_job_and_the_cli_requeues_it(
    settings, db, monkeypatch, unreachable_url
):
    """Out of tries, the job's arguments and error are kept; `failed requeue` runs it again."""
    down = Database.from_settings(settings.model_copy(update={"database_url": unreachable_url}))
    batch = [event(i, unique_source()) for i in range(3)]
    # The failure can only be recorded where the database is reachable: record through `db`.
    ctx = _ctx(settings, down, settings.max_tries)
    try:
        with pytest.raises(arq.Retry):  # cannot even record the failure while the database is down
            await ingest_events(ctx, batch)
    finally:
        await down.dispose()
    ctx = _ctx(settings, db, settings.max_tries + 1)
    with pytest.raises(JobFailed, match="failed job"):
        await ingest_events(ctx, batch)
    async with db.transaction() as session:
        record = (await session.scalars(select(FailedJob))).one()
    assert record.job_name == "ingest_events"
    assert record.job_id == "job-retry"
    assert "interrupted" in record.error

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("EVENTWORKER_QUEUE_NAME", settings.queue_name)
    runner = CliRunner()

    def invoke(*args: str):  # the CLI runs its own event loop: give it a thread
        return asyncio.to_thread(runner.invoke, cli, list(args))

    listed = await invoke("failed", "list", "--json")
    assert listed.exit_code == 0, listed.output
    assert f'"id": {record.id}' in listed.output
    requeued = await invoke("failed", "requeue", str(record.id))
    assert requeued.exit_code == 0, requeued.output
    assert "re-enqueued as" in requeued.output
    await run_worker(settings)
    assert await count(db, Event) == 3
    assert (await invoke("failed", "list")).output.strip() == "(none)"


async def test_an_unexpected_error_on_the_last_try_is_recorded(settings, db, monkeypatch):
    """A bug-like failure is retried up to max_tries and then recorded with its error."""
    from worker.db.sql import statements

    async def broken(*_args, **_kwargs):
        raise RuntimeError("boom in insert")

    monkeypatch.setattr(statements, "insert_events", broken)
    with pytest.raises(arq.Retry):
        await ingest_events(_ctx(settings, db, 1), [event(1)])
    with pytest.raises(JobFailed):
        await ingest_events(_ctx(settings, db, settings.max_tries), [event(1)])
    async with db.transaction() as session:
        record = (await session.scalars(select(FailedJob))).one()
    assert "RuntimeError: boom in insert" in record.error
    assert record.tries == settings.max_tries


async def test_the_worker_retries_a_job_until_the_database_answers(settings, db):
    """Through a real worker: the first try fails on the database, a later try stores the batch."""
    from worker.db.sql import statements

    calls = {"n": 0}
    original = statements.insert_events

    async def flaky(session, rows):
        calls["n"] += 1
        if calls["n"] == 1:
            raise ConnectionRefusedError("database restarting")
        return await original(session, rows)

    statements.insert_events = flaky
    try:
        await enqueue(settings, [[event(i) for i in range(5)]])
        worker = await run_worker(settings)
    finally:
        statements.insert_events = original
    assert calls["n"] == 2
    assert worker.jobs_retried == 1
    assert await count(db, Event) == 5
