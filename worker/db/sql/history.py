"""Reading and trimming the stored history: the export stream and the retention deletes.

All SQL for exports and retention lives here, dialect differences included:

- :func:`stream_events` reads through a server-side cursor (``yield_per``: a named
  cursor or portal on PostgreSQL, ``SSCursor`` on MySQL/MariaDB through aiomysql, a
  lazily stepped statement on SQLite), in one transaction, so memory stays flat and
  the export is one snapshot: ``REPEATABLE READ`` on PostgreSQL and MySQL/MariaDB; on
  SQLite the single ``SELECT`` reads one WAL snapshot. asyncmy's ``SSCursor`` parses
  rows lazily but its connection reads every incoming byte into one growing buffer
  (no read flow control, asyncmy 0.2.18), so through asyncmy the rows come a page at a
  time instead (``seq > last ORDER BY seq LIMIT n``), in the same one transaction and
  snapshot.
- The retention deletes take a bounded chunk of the oldest rows per call, found by
  key range rather than ``IN (SELECT ... LIMIT n)``, which MySQL/MariaDB refuse, so
  the same statements run everywhere with three parameters whatever the chunk size.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    DateTime,
    Row,
    Select,
    Table,
    Text,
    delete,
    func,
    literal,
    select,
    type_coerce,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from worker.db.dialect import SNAPSHOT_ISOLATION
from worker.db.models import DeadLetter, Event
from worker.db.types import UtcDateTime
from worker.domain.export import EXPORT_COLUMNS, ExportFilter

EVENTS: Table = Event.__table__  # type: ignore[assignment]
DEAD_LETTERS: Table = DeadLetter.__table__  # type: ignore[assignment]

#: Drivers whose server-side cursor does not bound the client's memory (see the module docstring).
_PAGED_DRIVERS = frozenset({"asyncmy"})
#: Drivers that decode ``timestamptz`` to aware UTC datetimes themselves: the export reads their
#: timestamps as they come instead of through UtcDateTime (two calls a row, an eighth of the time).
_UTC_AWARE_DRIVERS = frozenset({"asyncpg"})


def _export_columns(driver: str | None) -> dict[str, ColumnElement[Any]]:
    c = EVENTS.c
    time: ColumnElement[Any] = c.time
    received_at: ColumnElement[Any] = c.received_at
    if driver in _UTC_AWARE_DRIVERS:
        time = type_coerce(c.time, DateTime(timezone=True)).label("time")
        received_at = type_coerce(c.received_at, DateTime(timezone=True)).label("received_at")
    return {
        "seq": c.seq,
        "id": c.event_id.label("id"),
        "source": c.source,
        "type": c.type,
        "specversion": c.specversion,
        "time": time,
        "subject": c.subject,
        "datacontenttype": c.datacontenttype,
        "dataschema": c.dataschema,
        # As text: the export copies the stored JSON out instead of parsing and re-serializing it.
        "data": sql_cast(c.data, Text).label("data"),
        "data_base64": c.data_base64,
        "extensions": c.extensions,
        "received_at": received_at,
    }


def event_time() -> ColumnElement[datetime]:
    """When an event happened: its own ``time``, or ``received_at`` when it came without one."""
    return func.coalesce(EVENTS.c.time, EVENTS.c.received_at, type_=UtcDateTime())


def export_conditions(query: ExportFilter) -> list[ColumnElement[bool]]:
    """The ``WHERE`` conditions selecting the events matching ``query`` (every export path shares them)."""
    conditions: list[ColumnElement[bool]] = []
    if query.since is not None:
        conditions.append(event_time() >= query.since)
    if query.until is not None:
        conditions.append(event_time() < query.until)
    if query.received_before is not None:
        conditions.append(EVENTS.c.received_at < query.received_before)
    for name in ("type", "source", "subject"):
        value = getattr(query, name)
        if value is not None:
            conditions.append(EVENTS.c[name] == value)
    return conditions


def select_events(query: ExportFilter, driver: str | None = None) -> Select[Any]:
    """The events matching ``query``, in :data:`~worker.domain.export.EXPORT_COLUMNS` order, by ``seq``.

    ``driver`` (the engine's, e.g. ``asyncpg``) lets the statement skip conversions it does itself.
    """
    columns = _export_columns(driver)
    statement = select(*(columns[name] for name in EXPORT_COLUMNS)).order_by(EVENTS.c.seq)
    return statement.where(*export_conditions(query))


@asynccontextmanager
async def snapshot(
    engine: AsyncEngine, *, application_name: str | None = None
) -> AsyncIterator[AsyncConnection]:
    """A connection in a transaction that reads one snapshot, begun.

    The isolation level is :data:`~worker.db.dialect.SNAPSHOT_ISOLATION`'s for the engine's database.

    ``application_name`` tags the connection on PostgreSQL for the transaction's duration.
    On PostgreSQL the transaction is already open on the server when this yields (the
    drivers begin lazily, at the first statement), so that a statement sent straight
    through the driver connection (:mod:`worker.db.sql.export_copy`) runs inside it.
    """
    dialect = engine.dialect.name
    async with engine.connect() as connection:
        isolation = SNAPSHOT_ISOLATION.get(dialect)
        if isolation is not None:
            connection = await connection.execution_options(isolation_level=isolation)
        async with connection.begin():
            if dialect == "postgresql":
                await connection.execute(
                    select(func.set_config("application_name", application_name, True))
                    if application_name
                    else select(literal(1))
                )
            yield connection


async def stream_events(
    engine: AsyncEngine, query: ExportFilter, chunk_size: int, *, application_name: str | None = None
) -> AsyncGenerator[Sequence[Row[Any]]]:
    """Yield the events matching ``query`` in chunks of at most ``chunk_size`` rows, by ``seq``.

    One connection, one transaction, one snapshot (:func:`snapshot`), from the first chunk
    to the last; the connection goes back to the pool when the generator ends or is
    closed, so callers wrap it in :func:`contextlib.aclosing`. ``application_name`` tags
    the connection on PostgreSQL for the transaction's duration.
    """
    async with snapshot(engine, application_name=application_name) as connection:
        if engine.dialect.driver in _PAGED_DRIVERS:
            async for page in _pages(connection, query, chunk_size):
                yield page
            return
        statement = select_events(query, engine.dialect.driver).execution_options(yield_per=chunk_size)
        result = await connection.stream(statement)
        try:
            async for chunk in result.partitions():
                yield chunk
        finally:
            # Closes the server-side cursor also when the consumer stops early (error, cancellation).
            await result.close()


async def _pages(
    connection: AsyncConnection, query: ExportFilter, size: int
) -> AsyncGenerator[Sequence[Row[Any]]]:
    """The matching events a page of ``size`` rows at a time, each page a query of its own, by seq."""
    after: int | None = None
    while True:
        statement = select_events(query).limit(size)
        if after is not None:
            statement = statement.where(EVENTS.c.seq > after)
        page = (await connection.execute(statement)).all()
        if page:
            yield page
            after = page[-1].seq
        if len(page) < size:
            return


async def _delete_oldest(
    session: AsyncSession,
    table: Table,
    cutoff: datetime,
    limit: int,
    up_to: int | None = None,
) -> int:
    """Delete the ``limit`` rows of ``table`` with the lowest keys among those received before ``cutoff``.

    The chunk is found first (its lowest and highest key), then deleted by key range and
    the same conditions: the matching rows inside that range are exactly the chunk.
    """
    key = next(iter(table.primary_key.columns))
    conditions = [table.c.received_at < cutoff]
    if up_to is not None:
        conditions.append(key <= up_to)
    chunk = select(key.label("key")).where(*conditions).order_by(key).limit(limit).subquery()
    low, high = (await session.execute(select(func.min(chunk.c.key), func.max(chunk.c.key)))).one()
    if low is None:
        return 0
    result = await session.execute(delete(table).where(key >= low, key <= high, *conditions))
    return int(cast(CursorResult[Any], result).rowcount)


async def delete_events_older_than(
    session: AsyncSession, cutoff: datetime, limit: int, *, up_to_seq: int | None = None
) -> int:
    """Delete at most ``limit`` of the oldest events (by ``seq``) received before ``cutoff``; return how many.

    ``up_to_seq`` spares events above it (those an export that ran first did not see).
    Their handler runs go with them (``ON DELETE CASCADE``).
    """
    return await _delete_oldest(session, EVENTS, cutoff, limit, up_to_seq)


async def delete_dead_letters_older_than(session: AsyncSession, cutoff: datetime, limit: int) -> int:
    """Delete at most ``limit`` of the oldest dead letters (by ``id``) received before ``cutoff``."""
    return await _delete_oldest(session, DEAD_LETTERS, cutoff, limit)
