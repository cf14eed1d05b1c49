"""asyncpg's COPY fast path stores exactly what the portable INSERT path stores."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from sqlalchemy import select
from support import event

from worker.db import statements
from worker.db.models import Event
from worker.events import event_row, validate_batch

pytestmark = pytest.mark.integration

COLUMNS = [c for c in statements.EVENT_COLUMNS if c not in {"source", "job_id"}]


def _rows(source: str, n: int) -> list[dict]:
    inputs = [
        event(
            i,
            source,
            **({"data": None} if i % 3 == 0 else {}),
            **({"traceid": f"t{i}"} if i % 4 == 0 else {}),
        )
        for i in range(n)
    ]
    inputs += [{k: v for k, v in event("no-time", source).items() if k != "time"}]
    batch = validate_batch(inputs, 1_000_000)
    now = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    return [event_row(e, now, "job") for e in batch.events]


@pytest.mark.parametrize("backend", ["asyncpg"])
async def test_copy_and_insert_paths_store_identical_rows(db, monkeypatch):
    """A large batch goes through COPY, and its rows equal the INSERT path's, column by column."""
    copied: list[int] = []
    original = statements._copy_events

    async def spy(session, rows):
        copied.append(len(rows))
        return await original(session, rows)

    monkeypatch.setattr(statements, "_copy_events", spy)
    n = statements.COPY_THRESHOLD * 2
    async with db.transaction() as session:
        assert await statements.insert_events(session, _rows("/copy", n)) == n + 1
        assert await statements.insert_events(session, _rows("/copy", n)) == 0  # all duplicates, counted
        rows = _rows("/insert", n)
        assert await statements.insert_ignoring_duplicates(
            session, statements.EVENTS, rows, ("source", "event_id")
        )
    assert copied == [n + 1, n + 1]
    async with db.transaction() as session:
        stored = (await session.scalars(select(Event).order_by(Event.source, Event.event_id))).all()
    by_source: dict[str, dict[str, tuple]] = {"/copy": {}, "/insert": {}}
    for row in stored:
        by_source[row.source][row.event_id] = tuple(getattr(row, c) for c in COLUMNS)
    assert by_source["/copy"] == by_source["/insert"]
    assert len(by_source["/copy"]) == n + 1
    no_data = by_source["/copy"]["evt-0"]
    assert no_data[COLUMNS.index("data")] is None
