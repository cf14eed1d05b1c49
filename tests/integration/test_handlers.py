"""Event handlers on every database: once per stored event, retried, failed visibly, re-driven, kept."""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest
from arq.cron import cron
from click.testing import CliRunner
from conftest import WITH_POOLER
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session
from support import enqueue, job_ctx, results, run_worker, unique_source

import worker.main
from jobs.handlers import drain, run_handlers, sweep_handlers
from jobs.ingest import ingest_events
from worker.commands.handlers import handlers_command
from worker.constants import SWEEP_HANDLERS_JOB
from worker.db.engine import Database
from worker.db.models import Checkpoint, HandlerRun
from worker.domain import handlers
from worker.domain.handlers import HandlerRegistry, StoredEvent
from worker.errors import JobFailed
from worker.runtime.context import WorkerContext

pytestmark = pytest.mark.integration


@pytest.fixture(params=WITH_POOLER)
def backend(request: pytest.FixtureRequest) -> str:
    """Every driver, and asyncpg and psycopg through PgBouncer in transaction mode too."""
    return str(request.param)


ORDER = "com.example.order.created"
#: The repository root, where ``examples`` lives.
REPOSITORY = str(Path(__file__).resolve().parents[2])


@pytest.fixture(autouse=True)
def registry(monkeypatch) -> HandlerRegistry:
    """A registry of this test's own, with no handler modules configured; the worker runs the handler jobs."""
    fresh = HandlerRegistry()
    monkeypatch.setattr(handlers, "registry", fresh)
    monkeypatch.delenv(handlers.MODULES_VARIABLE, raising=False)
    # What the lead's FUNCTIONS entries do: the worker knows run_handlers and sweep_handlers.
    jobs = dict.fromkeys((*worker.main.FUNCTIONS, run_handlers, sweep_handlers))  # each once, if wired
    monkeypatch.setattr(worker.main, "FUNCTIONS", tuple(jobs))
    return fresh


def order(n: int | str, source: str, **data) -> dict:
    """An order event numbered ``n``."""
    return {"specversion": "1.0", "id": f"order-{n}", "source": source, "type": ORDER, "data": data}


def other(n: int, source: str) -> dict:
    """An event of a type without handlers."""
    return {"specversion": "1.0", "id": f"other-{n}", "source": source, "type": "com.example.other"}


async def runs(db: Database) -> list[HandlerRun]:
    """Every handler run, by id."""
    async with db.transaction() as session:
        return list((await session.scalars(select(HandlerRun).order_by(HandlerRun.id))).all())


def _ctx(settings, db: Database, redis=None) -> WorkerContext:
    """A job's context, with ``redis`` as the arq pool."""
    return {**job_ctx(settings, db, "job-handlers"), "redis": redis}


class _RedisDown:
    """An arq pool whose every enqueue fails, as when Redis goes away right after a commit."""

    async def enqueue_job(self, *_args, **_kwargs):
        raise ConnectionError("Redis went away")


async def test_each_stored_event_runs_its_handler_once(registry, settings, db):
    """Through a real worker: one run per stored event of the type; duplicates and other types make none."""
    seen: list[tuple[int, str, object]] = []

    @registry.handler(ORDER)
    async def record(event: StoredEvent, session: AsyncSession) -> None:
        seen.append((event.seq, event.event.id, event.event.data))

    source = unique_source()
    first = [
        order(1, source, amount=5),
        order(2, source, amount=7),
        other(1, source),
        order(1, source, amount=9),
    ]
    second = [order(2, source, amount=7), order(3, source, amount=1), other(2, source)]
    job_ids = await enqueue(settings, [first])
    await run_worker(settings)
    job_ids += await enqueue(settings, [second])
    await run_worker(settings)

    assert [r["accepted"] for r in await results(settings, job_ids)] == [3, 2]
    assert sorted(event_id for _, event_id, _ in seen) == ["order-1", "order-2", "order-3"]
    assert {event_id: data for _, event_id, data in seen}["order-1"] == {"amount": 5}
    stored = await runs(db)
    default_name = f"{record.__module__}.{record.__qualname__}"
    assert [(r.handler, r.status, r.tries) for r in stored] == [(default_name, "done", 1)] * 3
    assert sorted(r.event_seq for r in stored) == sorted(seq for seq, _, _ in seen)


async def test_a_large_batch_gets_a_run_for_each_new_event(registry, settings, db):
    """However the batch is inserted (COPY for large batches on asyncpg), each new event gets its run once."""

    @registry.handler(ORDER, name="count")
    async def count_it(event: StoredEvent, session: AsyncSession) -> None:
        pass

    source = unique_source()
    stored = await ingest_events(_ctx(settings, db, _RedisDown()), [order(n, source) for n in range(150)])
    again = await ingest_events(_ctx(settings, db, _RedisDown()), [order(n, source) for n in range(100, 300)])
    assert (stored["accepted"], again["accepted"], again["duplicates"]) == (150, 150, 50)
    pending = await runs(db)
    assert len(pending) == 300
    assert len({run.event_seq for run in pending}) == 300


async def test_a_failing_handler_is_retried_then_failed_while_the_rest_goes_on(registry, settings, db):
    """Failing every try, a run ends failed with its error; the other handler and ingestion go on."""
    good_calls: list[str] = []
    bad_calls: list[str] = []

    @registry.handler(ORDER, name="good")
    async def good(event: StoredEvent, session: AsyncSession) -> None:
        good_calls.append(event.event.id)

    @registry.handler(ORDER, name="bad")
    async def bad(event: StoredEvent, session: AsyncSession) -> None:
        bad_calls.append(event.event.id)
        raise RuntimeError(f"payment service down for {event.event.id}")

    source = unique_source()
    job_ids = await enqueue(settings, [[order(1, source, amount=3)], [order(2, source, amount=4)]])
    await run_worker(settings)

    assert [r["accepted"] for r in await results(settings, job_ids)] == [1, 1]
    assert sorted(good_calls) == ["order-1", "order-2"]
    assert sorted(bad_calls) == ["order-1"] * settings.max_tries + ["order-2"] * settings.max_tries
    by_handler = {(r.handler, r.event_seq): r for r in await runs(db)}
    for (name, _), run in by_handler.items():
        if name == "good":
            assert (run.status, run.tries, run.last_error) == ("done", 1, None)
        else:
            assert (run.status, run.tries) == ("failed", settings.max_tries)
            assert run.last_error is not None
            assert run.last_error.startswith("RuntimeError: payment service down for order-")

    # Ingestion is not held up by the failed runs: a later batch is stored and handled.
    [job_id] = await enqueue(settings, [[order(3, source, amount=5)]])
    await run_worker(settings)
    assert (await results(settings, [job_id]))[0]["accepted"] == 1
    assert "order-3" in good_calls


async def test_failed_runs_are_listed_and_retry_re_drives_them(registry, settings, db, monkeypatch):
    """`handlers list --status failed` shows the error; `handlers retry` makes the run pending, then done."""
    broken = {"on": True}

    @registry.handler(ORDER, name="flaky")
    async def flaky(event: StoredEvent, session: AsyncSession) -> None:
        if broken["on"]:
            raise ValueError(f"amount must not be negative in {event.event.id}")

    await enqueue(settings, [[order(1, unique_source(), amount=-5)]])
    await run_worker(settings)
    [run] = await runs(db)
    assert (run.status, run.tries) == ("failed", settings.max_tries)

    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    monkeypatch.setenv("EVENTWORKER_DB_POOLER", settings.db_pooler)
    monkeypatch.setenv("REDIS_URL", settings.redis_url)
    monkeypatch.setenv("EVENTWORKER_QUEUE_NAME", settings.queue_name)
    runner = CliRunner()

    def invoke(*args: str):  # the CLI runs its own event loop: give it a thread
        return asyncio.to_thread(runner.invoke, handlers_command, list(args))

    listed = await invoke("list", "--status", "failed", "--json")
    assert listed.exit_code == 0, listed.output
    [shown] = json.loads(listed.output)
    assert (shown["id"], shown["handler"], shown["status"], shown["event_id"]) == (
        run.id,
        "flaky",
        "failed",
        "order-1",
    )
    assert shown["last_error"] == "ValueError: amount must not be negative in order-1"
    plain = await invoke("list")
    assert f"id={run.id}" in plain.output
    assert "last_error=ValueError: amount must not be negative in order-1" in plain.output

    refused = await invoke("retry", str(run.id), "999999")
    assert refused.exit_code == 1
    assert "no handler run 999999" in refused.output

    broken["on"] = False  # the handler is fixed
    retried = await invoke("retry", str(run.id))
    assert retried.exit_code == 0, retried.output
    assert f"pending again: {run.id}" in retried.output
    assert "run_handlers enqueued as" in retried.output
    await run_worker(settings)
    [run] = await runs(db)
    assert (run.status, run.tries) == ("done", 1)
    assert (await invoke("list", "--status", "failed")).output.strip() == "(none)"

    not_failed = await invoke("retry", str(run.id))
    assert not_failed.exit_code == 1
    assert f"handler run {run.id} is done, not failed" in not_failed.output
    assert (await invoke("retry", "--all-failed")).output.strip() == "no failed handler runs"
    assert (await invoke("retry")).exit_code == 2


async def test_a_sync_handler_runs_through_run_sync_and_commits_with_the_run(registry, settings, db):
    """A legacy handler gets a plain Session; what it writes commits together with the run being done."""
    sessions: list[type] = []

    @registry.sync_handler(ORDER, name="legacy")
    def legacy(event: StoredEvent, session: Session) -> None:
        sessions.append(type(session))
        session.add(Checkpoint(name=f"legacy-{event.seq}", position=event.seq, updated_at=datetime.now(UTC)))

    await enqueue(settings, [[order(1, unique_source(), amount=1)]])
    await run_worker(settings)
    [run] = await runs(db)
    assert (run.handler, run.status) == ("legacy", "done")
    assert len(sessions) == 1
    assert issubclass(sessions[0], Session)  # a sync Session (our subclass), not the AsyncSession
    async with db.transaction() as session:
        assert await session.scalar(select(Checkpoint.name)) == f"legacy-{run.event_seq}"


async def test_a_failed_try_rolls_back_what_the_handler_wrote(registry, settings, db):
    """A handler's writes are kept only with the try that succeeded: a failed try leaves nothing."""
    tries = {"n": 0}

    @registry.handler(ORDER, name="writer")
    async def writer(event: StoredEvent, session: AsyncSession) -> None:
        tries["n"] += 1
        session.add(Checkpoint(name=f"try-{tries['n']}", position=event.seq, updated_at=datetime.now(UTC)))
        await session.flush()
        if tries["n"] < 3:
            raise RuntimeError("not yet")

    await enqueue(settings, [[order(1, unique_source(), amount=1)]])
    await run_worker(settings)
    [run] = await runs(db)
    assert (run.status, run.tries) == ("done", 3)
    async with db.transaction() as session:
        assert list(await session.scalars(select(Checkpoint.name))) == ["try-3"]


async def test_the_sweeper_runs_handlers_whose_job_was_never_enqueued(registry, settings, db):
    """At least once: stored, but the run_handlers job was lost with Redis; the sweeper runs the handler."""
    calls: list[int] = []

    @registry.handler(ORDER, name="audit")
    async def audit(event: StoredEvent, session: AsyncSession) -> None:
        calls.append(event.seq)

    result = await ingest_events(_ctx(settings, db, _RedisDown()), [order(1, unique_source(), amount=2)])
    assert result == {"accepted": 1, "duplicates": 0, "rejected": 0}
    [run] = await runs(db)
    assert (run.status, run.tries, calls) == ("pending", 0, [])

    swept = await sweep_handlers(_ctx(settings, db, _RedisDown()))
    assert swept == {"done": 1, "retrying": 0, "failed": 0, "skipped": 0}
    [run] = await runs(db)
    assert (run.status, calls) == ("done", [run.event_seq])
    assert await sweep_handlers(_ctx(settings, db, _RedisDown())) == {
        "done": 0,
        "retrying": 0,
        "failed": 0,
        "skipped": 0,
    }


async def test_the_sweep_cron_job_runs_pending_runs_in_a_worker(registry, settings, db):
    """As a cron job (here at start-up only), sweep_handlers runs what no job was enqueued for."""
    calls: list[int] = []

    @registry.handler(ORDER, name="late")
    async def late(event: StoredEvent, session: AsyncSession) -> None:
        calls.append(event.seq)

    await ingest_events(_ctx(settings, db, _RedisDown()), [order(1, unique_source(), amount=2)])
    # Scheduled in a month five months away: arq's cron otherwise fires at second 0 of every minute,
    # and a run crossing a minute would count a second tick.
    month = (datetime.now(UTC).month + 4) % 12 + 1
    sweeper = cron(cast(Any, sweep_handlers), name=SWEEP_HANDLERS_JOB, month=month, run_at_startup=True)
    worker_run = await run_worker(settings, cron_jobs=[sweeper])
    assert worker_run.jobs_complete == 1
    [run] = await runs(db)
    assert (run.status, calls) == ("done", [run.event_seq])


async def test_two_workers_never_take_the_same_run(registry, settings, db):
    """Two workers draining at once (each its own pool) run every handler run exactly once between them."""
    calls: list[int] = []

    @registry.handler(ORDER, name="slow")
    async def slow(event: StoredEvent, session: AsyncSession) -> None:
        calls.append(event.seq)
        await asyncio.sleep(0.02)

    source = unique_source()
    await ingest_events(_ctx(settings, db, _RedisDown()), [order(n, source, amount=n) for n in range(20)])
    other_db = Database.from_settings(settings)
    try:
        async with other_db.transaction() as session:  # connected already, as a running worker would be
            await session.execute(select(1))
        first, second = await asyncio.gather(
            drain(_ctx(settings, db, _RedisDown()), 100), drain(_ctx(settings, other_db, _RedisDown()), 100)
        )
    finally:
        await other_db.dispose()
    assert sorted(calls) == sorted(set(calls))
    assert len(calls) == 20
    assert first["done"] + second["done"] == 20
    if db.dialect != "sqlite":  # SQLite has one writer: there one worker may take them all, the other waiting
        assert min(first["done"], second["done"]) > 0
    async with db.transaction() as session:
        statuses = dict(
            (await session.execute(select(HandlerRun.status, func.count()).group_by(HandlerRun.status))).all()
        )
    assert statuses == {"done": 20}


async def test_runs_of_handlers_this_worker_lacks_stay_pending(registry, settings, db, monkeypatch):
    """A worker without a handler leaves its runs alone: pending and listed, for a worker that has it."""

    @registry.handler(ORDER, name="elsewhere")
    async def elsewhere(event: StoredEvent, session: AsyncSession) -> None:
        raise AssertionError("not run here")

    await ingest_events(_ctx(settings, db, _RedisDown()), [order(1, unique_source(), amount=2)])
    monkeypatch.setattr(handlers, "registry", HandlerRegistry())
    assert await run_handlers(_ctx(settings, db, _RedisDown())) == {
        "done": 0,
        "retrying": 0,
        "failed": 0,
        "skipped": 0,
    }
    [run] = await runs(db)
    assert (run.handler, run.status, run.tries) == ("elsewhere", "pending", 0)


async def test_the_example_handlers_run_as_documented(registry, settings, db, monkeypatch, capsys):
    """examples.order_totals by name: totals logged, a negative amount ends failed, the legacy one counts."""
    monkeypatch.syspath_prepend(REPOSITORY)  # PYTHONPATH=. in docs/concepts.md
    monkeypatch.delitem(sys.modules, "examples.order_totals", raising=False)  # import it into this registry
    settings = settings.model_copy(update={"handler_modules": ["examples.order_totals"]})
    source = unique_source()
    await enqueue(settings, [[order(1, source, amount=12.5, currency="EUR"), order(2, source, amount=-3)]])
    await run_worker(settings)
    outcome = sorted(
        (r.event_seq, r.handler.rsplit(".", 1)[-1], r.status, r.last_error) for r in await runs(db)
    )
    [first, second] = sorted({seq for seq, *_ in outcome})
    assert outcome == [
        (first, "check_order_total", "done", None),
        (first, "count_orders_of_source", "done", None),
        (second, "check_order_total", "failed", "InvalidOrder: data.amount must not be negative, got -3"),
        (second, "count_orders_of_source", "done", None),
    ]
    logged = [
        json.loads(line) for line in capsys.readouterr().err.splitlines() if '"examples.order_totals"' in line
    ]
    assert [line["total"] for line in logged if line["event"] == "order.total"] == ["12.5 EUR"]
    assert sorted(line["orders"] for line in logged if line["event"] == "order.count") == [2, 2]


@pytest.mark.parametrize("backend", ["asyncpg"])
async def test_a_bad_limit_fails_run_handlers_at_once(settings, db):
    """run_handlers(limit=...) takes a whole number: anything else is a failed job at once, not retried."""
    with pytest.raises(JobFailed, match="limit='ten'"):
        await run_handlers(_ctx(settings, db), "ten")
