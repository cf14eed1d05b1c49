"""Loading is explicit on every database: a handler run comes with its event, nothing loads by itself.

``HandlerRun.event`` is ``lazy="raise"``: touching it unloaded is an error, not a hidden query.
Claiming a run loads its event through the relationship (``selectinload``: one more SELECT, by
primary key, without the run's lock). Sessions keep what they read after commit
(``expire_on_commit=False`` in :mod:`worker.db.engine`), so reading it costs no statement.
Statements are counted with the engine's ``before_cursor_execute`` event.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import event, inspect, select
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.ext.asyncio import AsyncSession
from support import job_ctx, unique_source

from jobs.handlers import run_one
from worker.db.engine import Database
from worker.db.models import Event, HandlerRun
from worker.db.sql import handler_sql
from worker.domain.handlers import HandlerRegistry, StoredEvent

pytestmark = pytest.mark.integration

ORDER = "com.example.order.created"
RECEIVED = datetime(2026, 5, 1, 10, 0, 1, tzinfo=UTC)
#: The statements that take a run (worker.db.sql.handler_sql.claim_run). SQLite has one writer: an
#: UPDATE takes its lock, then the run is read. Elsewhere one SELECT ... FOR UPDATE SKIP LOCKED.
CLAIM = {
    "postgresql": ["SELECT handler_runs"],
    "mysql": ["SELECT handler_runs"],
    "sqlite": ["UPDATE handler_runs", "SELECT handler_runs"],
}


@contextmanager
def statements(db: Database) -> Iterator[list[str]]:
    """The SQL text of every statement the engine sends while the block runs, in order."""
    sent: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        sent.append(" ".join(statement.split()))

    event.listen(db.engine.sync_engine, "before_cursor_execute", record)
    try:
        yield sent
    finally:
        event.remove(db.engine.sync_engine, "before_cursor_execute", record)


async def stored_runs(db: Database, *handlers: str) -> list[int]:
    """Store one order event with a pending run for each of ``handlers``; the runs' ids."""
    async with db.transaction() as session:
        row = Event(
            source=unique_source(),
            event_id="order-1",
            type=ORDER,
            specversion="1.0",
            data={"amount": 5},
            received_at=RECEIVED,
        )
        session.add(row)
        await session.flush()
        runs = [
            HandlerRun(
                event_seq=row.seq,
                handler=name,
                status=handler_sql.PENDING,
                tries=0,
                created_at=RECEIVED,
                updated_at=RECEIVED,
            )
            for name in handlers
        ]
        session.add_all(runs)
        await session.flush()
        return [run.id for run in runs]


def is_select_of(statement: str, table: str) -> bool:
    """True for a SELECT reading ``table`` (quoted or not)."""
    text = statement.upper().replace('"', "").replace("`", "")
    return text.startswith("SELECT") and f"FROM {table.upper()}" in text


def kinds(sent: list[str]) -> list[str]:
    """``SELECT events``, ``UPDATE handler_runs``...: what each statement does, the job's tag left out."""
    described = []
    for statement in sent:
        words = statement.replace('"', "").replace("`", "").split()
        if "set_config(" in statement:
            continue  # PostgreSQL names the job on the connection (worker.db.engine), not part of the path
        table = words[1] if words[0] == "UPDATE" else words[words.index("FROM") + 1]
        described.append(f"{words[0]} {table}")
    return described


async def test_an_unloaded_relationship_raises_instead_of_querying(db):
    """Touching ``HandlerRun.event`` that no statement loaded raises; it never sends a query of its own."""
    [run_id] = await stored_runs(db, "audit")
    async with db.transaction() as session:
        run = (await session.scalars(select(HandlerRun).where(HandlerRun.id == run_id))).one()
        with statements(db) as sent, pytest.raises(InvalidRequestError, match="lazy='raise'"):
            _ = run.event
    assert sent == []


async def test_a_claimed_run_comes_with_its_event_in_one_more_select(db):
    """The claim loads the run's event through the relationship: one SELECT by key, without the lock."""
    [run_id] = await stored_runs(db, "audit")
    async with db.transaction() as session:
        await session.execute(select(1))  # connected already: the count is the claim's alone
        with statements(db) as sent:
            run = await handler_sql.claim_run(session, run_id, tries=0)
            assert run is not None
            loaded = run.event
        assert (loaded.seq, loaded.event_id, loaded.data) == (run.event_seq, "order-1", {"amount": 5})
    assert kinds(sent) == [*CLAIM[db.dialect], "SELECT events"]
    if db.dialect != "sqlite":
        assert "FOR UPDATE SKIP LOCKED" in sent[0].upper()
    assert "FOR UPDATE" not in sent[-1].upper()


async def test_a_run_not_claimed_loads_no_event(db):
    """A run someone else finished is not claimed, and its event is never read."""
    [run_id] = await stored_runs(db, "audit")
    async with db.transaction() as session:
        await session.execute(select(1))
        with statements(db) as sent:
            assert await handler_sql.claim_run(session, run_id, tries=3) is None
    assert len(sent) == 1
    assert not any(is_select_of(statement, "events") for statement in sent)


async def test_the_handler_path_reads_the_event_once(settings, db):
    """``run_one`` claims the run, reads its event once through the relationship, runs the handler."""
    [run_id] = await stored_runs(db, "audit")
    registry = HandlerRegistry()
    seen: list[StoredEvent] = []

    @registry.handler(ORDER, name="audit")
    async def audit(stored: StoredEvent, session: AsyncSession) -> None:
        seen.append(stored)

    with statements(db) as sent:
        assert await run_one(job_ctx(settings, db), registry, run_id, tries=0) == "done"
    [stored] = seen
    assert (stored.event.id, stored.event.data, stored.received_at) == ("order-1", {"amount": 5}, RECEIVED)
    assert kinds(sent) == [*CLAIM[db.dialect], "SELECT events", "UPDATE handler_runs"]
    async with db.transaction() as session:
        assert await handler_sql.run_statuses(session, [run_id]) == {run_id: handler_sql.DONE}


@pytest.mark.parametrize("backend", ["asyncpg", "psycopg", "aiomysql", "asyncmy"])
async def test_a_claim_locks_the_run_and_not_its_event(db):
    """Two workers take two runs of one event at once; only the run itself is skipped as locked.

    Were the event joined into the locking SELECT, its row would be locked too, and the second
    worker would skip every other run of that event while the first one's handler runs.
    """
    first_id, second_id = await stored_runs(db, "audit", "notify")
    async with db.transaction() as first:
        assert await handler_sql.claim_run(first, first_id, tries=0) is not None
        async with db.transaction() as second:
            other = await handler_sql.claim_run(second, second_id, tries=0)
            assert other is not None
            assert other.event.event_id == "order-1"
            assert await handler_sql.claim_run(second, first_id, tries=0) is None


async def test_what_a_transaction_read_is_still_there_after_its_commit(db):
    """``expire_on_commit=False``: attributes and loaded relationships read after commit send no statement."""
    [run_id] = await stored_runs(db, "audit")
    async with db.transaction() as session:
        run = await handler_sql.claim_run(session, run_id, tries=0)
        assert run is not None
        await session.commit()
        with statements(db) as sent:
            assert not inspect(run).expired_attributes
            assert (run.handler, run.status, run.event.event_id) == ("audit", "pending", "order-1")
        assert sent == []
    with statements(db) as sent:  # the session is closed now: the objects stay readable as they were
        assert (run.id, run.tries, run.event.type) == (run_id, 0, ORDER)
    assert sent == []
