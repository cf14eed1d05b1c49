"""The database's bucket counts equal the Python reference on every database, for the awkward cases.

The rollup job has the database count events per bucket (``rollup_sql.count_range``, a GROUP BY);
:func:`worker.domain.rollups.count_events` is the reference it must match. The story: events at the
first and last storable moments (years 1 and 9999), before 1970, on and one microsecond either
side of minute and hour boundaries, with a UTC offset, and without a time (so ``received_at``
counts), each under nine series whose types and sources differ only by case or a trailing
space. A run of the job must give exactly what the reference gives for the stored rows.
(asyncpg writes the first and last moments as -infinity and infinity, and reads them back as
those moments; the buckets must follow.)
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from support import catch_up_rollups, event, unique_source

from jobs.rollup import verify
from worker.config import Settings
from worker.db.engine import Database
from worker.db.models import Event
from worker.db.sql import rollup_sql, statements
from worker.domain.rollups import BUCKET_SECONDS, RollupKey, count_events, events_counted
from worker.domain.rows import event_row
from worker.protocol.events import validate_batch

pytestmark = pytest.mark.integration

#: Types and sources that MySQL's default collation (case-insensitive, trailing spaces ignored) would merge.
TYPES = ("com.example.A", "com.example.a", "com.example.a ")
#: Event times (RFC 3339), each stored once per series, with when they were received.
TIMES = (
    "0001-01-01T00:00:00Z",  # the first storable moment (-infinity through asyncpg)
    "0001-01-01T05:30:00+05:30",  # the same moment, written with an offset
    "0001-01-01T00:59:59.999999Z",
    "0001-01-01T01:00:00Z",
    "1900-02-28T12:34:56.000001Z",
    "1969-12-31T22:59:59.999999Z",  # before the epoch: buckets floor, not truncate towards 1970
    "1969-12-31T23:00:00Z",
    "1969-12-31T23:59:59.999999Z",
    "1970-01-01T00:00:00Z",
    "2026-01-02T02:59:59.999999Z",  # the last microsecond of a minute and an hour
    "2026-01-02T03:00:00Z",  # exactly on both boundaries
    "2026-01-02T03:00:00.000001Z",
    "2026-01-02T03:04:59.999999Z",
    "2026-01-02T03:05:00Z",
    "2026-01-02T10:15:30+05:30",  # 04:45:30 UTC
    "9999-12-31T22:59:59.999999Z",
    "9999-12-31T23:00:00Z",
    "9999-12-31T23:59:59.999999Z",  # the last storable moment (infinity through asyncpg)
)
#: When the time-less events were received: they count there. None in the future: MySQL/MariaDB
#: runs wait for a row's ``received_at`` to pass (the settle time), as a worker's clock would.
RECEIVED_ONLY = (
    datetime(1, 1, 1, tzinfo=UTC),
    datetime(1969, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 1, 2, 3, 59, 59, 999_999, tzinfo=UTC),
    datetime(2026, 1, 2, 4, 0, tzinfo=UTC),
)
#: (bucket size, bucket start): events in it per series, by hand from TIMES and RECEIVED_ONLY.
EXPECTED_PER_SERIES = {
    (3600, datetime(1, 1, 1, 0, tzinfo=UTC)): 4,
    (60, datetime(1, 1, 1, 0, 0, tzinfo=UTC)): 3,
    (60, datetime(1, 1, 1, 0, 59, tzinfo=UTC)): 1,
    (3600, datetime(1969, 12, 31, 22, tzinfo=UTC)): 1,
    (3600, datetime(1969, 12, 31, 23, tzinfo=UTC)): 3,
    (60, datetime(1969, 12, 31, 23, 59, tzinfo=UTC)): 2,
    (3600, datetime(1970, 1, 1, 0, tzinfo=UTC)): 1,
    (60, datetime(2026, 1, 2, 2, 59, tzinfo=UTC)): 1,
    (60, datetime(2026, 1, 2, 3, 0, tzinfo=UTC)): 2,
    (60, datetime(2026, 1, 2, 3, 4, tzinfo=UTC)): 1,
    (3600, datetime(2026, 1, 2, 3, tzinfo=UTC)): 5,
    (3600, datetime(2026, 1, 2, 4, tzinfo=UTC)): 2,
    (60, datetime(2026, 1, 2, 4, 45, tzinfo=UTC)): 1,
    (3600, datetime(9999, 12, 31, 22, tzinfo=UTC)): 1,
    (3600, datetime(9999, 12, 31, 23, tzinfo=UTC)): 2,
    (60, datetime(9999, 12, 31, 23, 59, tzinfo=UTC)): 1,
}


def series_names(source: str) -> list[tuple[str, str]]:
    """Nine (type, source) pairs, told apart only by case or a trailing space."""
    return [(type_, src) for type_ in TYPES for src in (source, source.upper(), source + " ")]


async def store(db: Database, events: list[dict[str, Any]], received_at: datetime) -> None:
    """Insert ``events`` as the ingest job would, received at ``received_at``, in one transaction."""
    rows = [event_row(e, received_at, "rollup-buckets") for e in validate_batch(events, 1_000_000).events]
    async with db.transaction("ingest_events") as session:
        assert await statements.insert_events(session, rows) == len(events)


async def stored_events(db: Database) -> list[tuple[str, str, datetime | None, datetime]]:
    """Every stored event as the rollups read it: (type, source, time, received_at)."""
    e = Event.__table__.c
    async with db.transaction() as session:
        rows = await session.execute(select(e.type, e.source, e.time, e.received_at))
        return [(type_, source, time, received_at) for type_, source, time, received_at in rows]


async def test_the_databases_buckets_equal_the_python_reference(settings: Settings, db: Database):
    """Years 1 and 9999, before 1970, boundaries to the microsecond, offsets, no time, near-equal names."""
    settings = settings.model_copy(update={"rollup_settle_seconds": 0.0})
    names = series_names(unique_source())
    timed = [
        event(f"{n}-{k}", source, type=type_, time=time)
        for n, time in enumerate(TIMES)
        for k, (type_, source) in enumerate(names)
    ]
    await store(db, timed, datetime.now(UTC))
    for n, received_at in enumerate(RECEIVED_ONLY):
        timeless = [event(f"r{n}-{k}", src, type=type_, time=None) for k, (type_, src) in enumerate(names)]
        await store(db, timeless, received_at)

    await catch_up_rollups(settings)

    async with db.transaction() as session:
        table = await rollup_sql.stored_rollups(session)
    rows = await stored_events(db)
    assert len(rows) == len(names) * (len(TIMES) + len(RECEIVED_ONLY))
    assert table == count_events(rows)
    assert events_counted(table) == len(rows)
    for (seconds, start), count in EXPECTED_PER_SERIES.items():
        for type_, source in names:
            assert table[RollupKey(seconds, start, type_, source)] == count, (seconds, start, type_, source)
    assert {key.bucket_seconds for key in table} == set(BUCKET_SECONDS)
    assert all(isinstance(count, int) for count in table.values())
    assert (await verify(db)).differences == []
