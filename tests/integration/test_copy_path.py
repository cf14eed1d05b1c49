"""asyncpg's COPY fast path stores exactly what the portable INSERT path stores."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from support import event

from worker.db import dialect
from worker.db.models import Event
from worker.db.sql import statements
from worker.domain.rows import EVENT_COLUMNS, event_row
from worker.protocol.events import validate_batch

pytestmark = pytest.mark.integration

COLUMNS = [c for c in EVENT_COLUMNS if c != "source"]


#: Values that an encoding could get wrong, one per event, cycled through the batch.
HARD_DATA: list[Any] = [
    {
        "text": "naïve café ☕ 漢字 👩\u200d💻",
        "rtl": "שלום",
        "escapes": 'tab\tnl\ncr\r "q" \\ back\\slash \\N',
    },
    {"u64": 2**64 - 1, "i64": -(2**63), "float": 1.5e300, "small": 5e-324, "neg_zero": -0.0, "int": 1},
    {"deep": {"a": [1, [2, [3, {"b": None, "c": [True, False]}]]]}, "empty": {}, "list": []},
    ["an", "array", 1, None, {"k": "v"}],
    "a bare string with \u2028 and \\",
    1234567890123456789,
    3.14,
    False,
    {"copy": "\\.", "csv": 'a,b;"c"', "ctrl": "\x01\x1f\x7f", "json_in_string": '{"x": 1}'},
]
HARD_TIMES = [
    "2026-01-02T03:04:05.123456Z",
    "2026-01-02T03:04:05Z",
    "2026-01-02T03:04:05.999999+05:45",
    "1999-12-31T23:59:59.5-11:30",
    "0002-01-01T00:00:00Z",
    "9998-12-31T23:59:59.000001+00:00",
    # beyond microseconds: truncated by validation, and stored so by both paths
    "2026-06-15T12:00:00.1234567-03:00",
]


#: Integers beyond 64 bits: orjson refuses them, so a batch holding one is encoded by the stdlib.
BIG_NUMBERS = {"big": 2**64, "negative": -(2**70), "huge": 10**40}


def _hard_event(i: int, source: str, big_numbers: bool) -> dict[str, Any]:
    """An event carrying one of each kind of awkward value, chosen by ``i``."""
    data = BIG_NUMBERS if big_numbers and i % 9 == 1 else HARD_DATA[i % len(HARD_DATA)]
    value = event(i, source, data=data, time=HARD_TIMES[i % len(HARD_TIMES)])
    if i % 5 == 0:
        del value["data"]
        value["data_base64"] = base64.b64encode(bytes(range(256))).decode()
    if i % 4 == 0:
        value.update(traceid=f"t{i}", sampled=True, retries=3, weight=0.25, note="ünïcode \\ \t")
    if i % 6 == 0:
        value.update(
            subject="sub/ject ✓", dataschema="https://example.com/s.json", datacontenttype="application/json"
        )
    if i % 7 == 0:
        value["data"] = None
    return value


def _rows(source: str, n: int, big_numbers: bool) -> list[dict[str, Any]]:
    inputs = [_hard_event(i, source, big_numbers) for i in range(n)]
    inputs += [{k: v for k, v in event("no-time", source).items() if k != "time"}]
    batch = validate_batch(inputs, 1_000_000)
    assert not batch.rejected, [r.message for r in batch.rejected]
    now = datetime(2026, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    return [event_row(e, now, "job") for e in batch.events]


@pytest.fixture
def copied(monkeypatch) -> list[int]:
    """The size of each batch that went through COPY."""
    sizes: list[int] = []
    original = statements._copy_events

    async def spy(session, rows):
        sizes.append(len(rows))
        return await original(session, rows)

    monkeypatch.setattr(statements, "_copy_events", spy)
    return sizes


@pytest.mark.parametrize("backend", ["asyncpg"])
@pytest.mark.parametrize("big_numbers", [False, True], ids=["orjson", "stdlib-json"])
async def test_copy_and_insert_paths_store_identical_rows(db, copied, big_numbers):
    """A large batch goes through COPY, and its rows equal the INSERT path's, column by column.

    Unicode, escapes, numbers at the edges of 64 bits (and beyond, which orjson refuses),
    nested and non-object data, JSON null data (SQL NULL), binary data_base64, extensions of
    each type, times with offsets and extra digits, and an event without a time.
    """
    n = statements.COPY_THRESHOLD * 2
    async with db.transaction() as session:
        assert await statements.insert_events(session, _rows("/copy", n, big_numbers)) == n + 1
        # all duplicates, counted from the statement's status
        assert await statements.insert_events(session, _rows("/copy", n, big_numbers)) == 0
        rows = _rows("/insert", n, big_numbers)
        assert await dialect.insert_ignoring_duplicates(
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
    no_data = by_source["/copy"]["evt-7"]
    assert no_data[COLUMNS.index("data")] is None  # JSON null is stored as SQL NULL on both paths
    numbers = by_source["/copy"]["evt-1"][COLUMNS.index("data")]
    exact = BIG_NUMBERS if big_numbers else {"u64": 2**64 - 1, "i64": -(2**63)}
    assert {key: numbers[key] for key in exact} == exact  # integers stay exact, not floats
    assert by_source["/copy"]["evt-4"][COLUMNS.index("extensions")]["note"] == "ünïcode \\ \t"


@pytest.mark.parametrize("backend", ["asyncpg"])
async def test_rows_of_several_jobs_take_the_insert_path_and_keep_their_own_columns(db, copied):
    """COPY sends received_at and job_id once per batch; rows that differ in them are inserted row by row."""
    n = statements.COPY_THRESHOLD * 2
    rows = _rows("/mixed", n, big_numbers=False)
    later = datetime(2026, 5, 6, 8, 0, tzinfo=UTC)
    rows = [row | {"received_at": later, "job_id": "other"} if i % 2 else row for i, row in enumerate(rows)]
    async with db.transaction() as session:
        assert await statements.insert_events(session, rows) == len(rows)
    assert copied == []
    async with db.transaction() as session:
        stored = (await session.execute(select(Event.event_id, Event.received_at, Event.job_id))).all()
    expected = {row["event_id"]: (row["received_at"], row["job_id"]) for row in rows}
    assert {event_id: (received_at, job_id) for event_id, received_at, job_id in stored} == expected
