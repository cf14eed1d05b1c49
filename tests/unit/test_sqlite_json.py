"""On SQLite an event whose data is a bare number keeps it exactly (worker.db.types.SqliteJson).

A column declared JSON has numeric affinity in SQLite: before, ``0.0`` was stored as the integer 0,
``2**64 + 1`` as a rounded REAL, ``0.30000000000000004`` came out of an export as ``0.3``, and reading
such an event through the ORM raised. Found by the export round trip (tests/integration/
test_export_roundtrip.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select, text

from jobs.export import export_to_file
from worker.db.models import Event
from worker.db.sql import statements
from worker.domain.export import ExportFilter, ExportFormat
from worker.domain.rows import event_row
from worker.protocol.events import CloudEvent
from worker.protocol.serialization import deserialize, serialize

NUMBERS: list[Any] = [0.0, -0.0, 1.5, 1e300, 1e-7, 0.1 + 0.2, 2**63 - 1, 2**64 + 1, 10**30, -3]
OTHERS: list[Any] = [True, "7", [1.0], {"n": 2**64 + 1, "f": 0.0}]


async def _store(db, values: list[Any]) -> None:
    events = [
        {"specversion": "1.0", "id": str(n), "source": "/n", "type": "t", "data": v}
        for n, v in enumerate(values)
    ]
    rows = [event_row(CloudEvent.model_validate(e), datetime.now(UTC), "job") for e in events]
    async with db.transaction() as session:
        assert await statements.insert_events(session, rows) == len(values)


def _same(a: Any, b: Any) -> bool:
    """The same JSON once written one way: an integer is not a float, and -0.0 is not 0.0."""
    return serialize(a) == serialize(b)


async def test_an_export_gives_each_number_back_as_it_was_sent(db, tmp_path):
    values = NUMBERS + OTHERS
    await _store(db, values)
    path = tmp_path / "all.ndjson"
    await export_to_file(db, path, ExportFilter(), ExportFormat.NDJSON, chunk_size=100, compress=False)
    exported = {line["id"]: line["data"] for line in map(deserialize, path.read_bytes().splitlines())}
    for n, value in enumerate(values):
        assert _same(exported[str(n)], value), (value, exported[str(n)])


async def test_the_orm_reads_them_back(db):
    """Including rows stored before the fix, which SQLite had turned into numbers."""
    await _store(db, NUMBERS + OTHERS)
    async with db.transaction() as session:
        await session.execute(
            text(
                "INSERT INTO events (source, event_id, type, specversion, data, received_at)"
                " VALUES ('/old', 'a', 't', '1.0', 4, '2026-01-01 00:00:00')"
            )
        )
        read = {(e.source, e.event_id): e.data for e in await session.scalars(select(Event))}
    for n, value in enumerate(NUMBERS + OTHERS):
        assert _same(read[("/n", str(n))], value)
    assert read[("/old", "a")] == 4


@pytest.mark.parametrize("value", NUMBERS)
async def test_a_number_is_stored_as_its_text(db, value):
    await _store(db, [value])
    async with db.transaction() as session:
        kind, stored = (
            await session.execute(text("SELECT typeof(data), CAST(data AS TEXT) FROM events"))
        ).one()
    assert kind == "blob"  # numeric affinity leaves a BLOB alone
    assert deserialize(stored) == value
