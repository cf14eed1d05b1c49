"""Every SQL statement the jobs and the CLI run, named for what it does.

Storing exactly once goes through :func:`worker.db.dialect.insert_ignoring_duplicates`, the
one place that knows PostgreSQL/SQLite say ``ON CONFLICT DO NOTHING`` and MySQL/MariaDB say
``INSERT IGNORE``; on asyncpg a large ingest batch takes the COPY path instead (:func:`insert_events`).
A partitioned ``events`` (PostgreSQL) keeps its identities in ``event_keys``: the batch's keys are
inserted first and only the events whose key was new follow (:mod:`worker.db.sql.partition_sql`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import Table, bindparam, func, insert, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.pool import ConnectionPoolEntry

from worker.db.dialect import insert_ignoring_duplicates
from worker.db.failures import is_layout_change
from worker.db.models import DeadLetter, Event, FailedJob
from worker.db.sql import partition_sql
from worker.domain.rows import EVENT_COLUMNS, EventRow
from worker.protocol.events import Rejection
from worker.tracing import hooks

EVENTS: Table = Event.__table__  # type: ignore[assignment]
DEAD_LETTERS: Table = DeadLetter.__table__  # type: ignore[assignment]


_IDENTITY = itemgetter("source", "event_id")
#: Batches at least this large go through COPY on asyncpg; smaller ones are cheaper as one INSERT.
COPY_THRESHOLD = 64
_STAGE = "ew_events_stage"
#: The staging table's columns, in COPY's order: a row's plain values, then its JSON columns. The
#: batch's received_at and job_id, the same in every row, go to the INSERT as parameters instead
#: (asyncpg encodes a datetime per row at about a microsecond).
_JSON_COLUMNS = ("data", "extensions")
_BATCH_COLUMNS = ("received_at", "job_id")
_PLAIN_COLUMNS = tuple(c for c in EVENT_COLUMNS if c not in {*_JSON_COLUMNS, *_BATCH_COLUMNS})
_STAGE_COLUMNS = (*_PLAIN_COLUMNS, *_JSON_COLUMNS)
#: JSON is staged as its UTF-8 bytes, as orjson writes them: COPY sends bytes as they are
#: (``jsonb`` would cost a Python call per value, ``text`` a decode and an encode), and the
#: server parses each value once either way, in the INSERT rather than in the COPY.
_STAGE_TABLE = (
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (source text, event_id text, type text,"
    " specversion text, time timestamptz, subject text, datacontenttype text, dataschema text,"
    " data_base64 text, data bytea, extensions bytea)"
)
#: The connection's staging table (:func:`create_stage`), emptied at every commit or rollback.
_STAGE_DDL = f"{_STAGE_TABLE} ON COMMIT DELETE ROWS"
_ENSURE_STAGE = text(_STAGE_DDL)
#: The transaction's own staging table, behind a transaction pooler: the next transaction of the same
#: client connection may run on another server connection, and one of another client on this one.
_STAGE_FOR_TRANSACTION = text(f"{_STAGE_TABLE} ON COMMIT DROP")


def _staged_value(column: str) -> str:
    if column in _JSON_COLUMNS:
        return f"convert_from({column}, 'UTF8')::jsonb"
    return f":{column}" if column in _BATCH_COLUMNS else column


_FROM_STAGE = text(
    f"INSERT INTO events ({', '.join(EVENT_COLUMNS)})"  # noqa: S608 - constants only
    f" SELECT {', '.join(map(_staged_value, EVENT_COLUMNS))} FROM {_STAGE}"
    " ORDER BY source, event_id ON CONFLICT (source, event_id) DO NOTHING"
).bindparams(
    bindparam("received_at", type_=EVENTS.c.received_at.type),
    bindparam("job_id", type_=EVENTS.c.job_id.type),
)
#: The same into a partitioned ``events``: the identities into ``event_keys`` first, and only the
#: staged events whose key was new into ``events``, in one statement.
_FROM_STAGE_KEYED = text(
    "WITH new AS (INSERT INTO event_keys (source, event_id, received_at)"  # noqa: S608 - constants only
    f" SELECT source, event_id, :received_at FROM {_STAGE} ORDER BY source, event_id"
    " ON CONFLICT (source, event_id) DO NOTHING RETURNING source, event_id)"
    f" INSERT INTO events ({', '.join(EVENT_COLUMNS)})"
    f" SELECT {', '.join(map(_staged_value, EVENT_COLUMNS))} FROM {_STAGE} JOIN new USING (source, event_id)"
).bindparams(
    bindparam("received_at", type_=EVENTS.c.received_at.type),
    bindparam("job_id", type_=EVENTS.c.job_id.type),
)
_plain_values = itemgetter(*_PLAIN_COLUMNS)
#: What asyncpg sends for the COPY, as a trace shows it.
_COPY_STATEMENT = f"COPY {_STAGE} ({', '.join(_STAGE_COLUMNS)}) FROM STDIN (FORMAT binary)"


def _json_bytes(value: Any) -> bytes | None:
    """JSON for COPY, as the engine's JSON serializer writes it (the stdlib for what orjson refuses)."""
    if value is None:
        return None
    try:
        return orjson.dumps(value)
    except TypeError:  # integers beyond 64 bits, which a valid event may carry
        return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _records(rows: Sequence[EventRow]) -> list[tuple[Any, ...]]:
    """Rows as COPY takes them: values in :data:`_STAGE_COLUMNS` order, JSON columns as UTF-8 bytes.

    One comprehension with orjson inline (a hot loop of the ingest job); a batch holding what
    orjson refuses is encoded again row by row with :func:`_json_bytes`.
    """
    dumps = orjson.dumps
    try:
        return [
            (
                *_plain_values(row),
                None if (data := row["data"]) is None else dumps(data),
                None if (extensions := row["extensions"]) is None else dumps(extensions),
            )
            for row in rows
        ]
    except TypeError:  # orjson.JSONEncodeError: integers beyond 64 bits
        return [
            (*_plain_values(row), _json_bytes(row["data"]), _json_bytes(row["extensions"])) for row in rows
        ]


#: Set in a pooled connection's ``info`` once it has the staging table.
_STAGED = "eventworker_stage"


def create_stage(dbapi_connection: Any, connection_record: ConnectionPoolEntry) -> None:
    """Create a new connection's staging table: the engine's ``connect`` event, on asyncpg.

    Made once per connection, outside any job's transaction (so a job that rolls back cannot
    take it away), where per job it cost a statement and a round trip. It empties itself at
    every commit or rollback. Not behind a transaction pooler, where a server connection is
    no client's for longer than a transaction (:data:`_STAGE_FOR_TRANSACTION`).
    """
    cursor = dbapi_connection.cursor()
    cursor.execute(_STAGE_DDL)
    cursor.close()
    dbapi_connection.commit()
    connection_record.info[_STAGED] = True


async def _copy_events(session: AsyncSession, rows: Sequence[EventRow], *, keyed: bool = False) -> int:
    """asyncpg: COPY the batch into a temporary table, then one INSERT … SELECT.

    COPY moves rows in PostgreSQL's binary format, several times faster than a multi-row
    INSERT; the INSERT … ON CONFLICT DO NOTHING keeps storage idempotent and its status
    line counts the new rows. The COPY goes straight to the driver, in the transaction the
    session has begun. The staging table is the connection's (:func:`create_stage`), or,
    on an engine made without it (behind a transaction pooler), the transaction's own.
    ``keyed``: into a partitioned ``events``, through ``event_keys`` (:data:`_FROM_STAGE_KEYED`).
    """
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None  # a checked-out connection always has its driver connection
    if not raw.info.get(_STAGED):
        await session.execute(_STAGE_FOR_TRANSACTION)
    elif not driver.is_in_transaction():
        # SQLAlchemy sends BEGIN with the first statement, which the COPY (to the driver) is not.
        await session.execute(_ENSURE_STAGE)
    records = _records(rows)
    tracing = hooks.ACTIVE
    if tracing is None:
        await driver.copy_records_to_table(_STAGE, records=records, columns=_STAGE_COLUMNS)
    else:  # the SQL instrumentation sees what goes through SQLAlchemy; this goes to asyncpg itself
        with tracing.database_call("postgresql", "COPY", _STAGE, _COPY_STATEMENT):
            await driver.copy_records_to_table(_STAGE, records=records, columns=_STAGE_COLUMNS)
    first = rows[0]
    batch = {"received_at": first["received_at"], "job_id": first["job_id"]}
    result = await session.execute(_FROM_STAGE_KEYED if keyed else _FROM_STAGE, batch)
    return int(result.rowcount)  # type: ignore[attr-defined]


async def _insert_keyed(session: AsyncSession, rows: Sequence[EventRow]) -> int:
    """Into a partitioned ``events`` without COPY: the new identities first, then their events."""
    keys = partition_sql.EVENT_KEYS
    claimed = (
        postgresql.insert(keys)
        .on_conflict_do_nothing(index_elements=["source", "event_id"])
        .returning(keys.c.source, keys.c.event_id)
    )
    identities = [
        {"source": row["source"], "event_id": row["event_id"], "received_at": row["received_at"]}
        for row in rows
    ]
    new = {(source, event_id) for source, event_id in await session.execute(claimed, identities)}
    fresh = [row for row in rows if (row["source"], row["event_id"]) in new]
    if fresh:
        await session.execute(insert(EVENTS), fresh)
    return len(fresh)


def _copies(session: AsyncSession, rows: Sequence[EventRow]) -> bool:
    """Whether a batch takes the COPY path: asyncpg, large enough, one job's (one received_at and job_id)."""
    bind = session.get_bind()
    return (
        len(rows) >= COPY_THRESHOLD
        and bind.dialect.driver == "asyncpg"
        and len({(row["received_at"], row["job_id"]) for row in rows}) == 1
    )


async def _insert_postgresql(session: AsyncSession, rows: Sequence[EventRow]) -> int:
    shape = await partition_sql.layout(session)
    try:
        if shape.partitioned:
            await partition_sql.ensure_partitions(
                session, {row["received_at"] for row in rows}, shape.interval
            )
            return await (
                _copy_events(session, rows, keyed=True)
                if _copies(session, rows)
                else _insert_keyed(session, rows)
            )
        if _copies(session, rows):
            return await _copy_events(session, rows)
        return await insert_ignoring_duplicates(session, EVENTS, rows, ("source", "event_id"))
    except DBAPIError as exc:
        if is_layout_change(exc):
            await partition_sql.forget(session)  # read again by the retry, on whichever connection
        raise


async def insert_events(session: AsyncSession, rows: Sequence[EventRow]) -> int:
    """Store events not stored yet (by source and event_id); return how many were new.

    Rows go in identity order so that two batches sharing identities lock them in the
    same order and cannot deadlock each other. On asyncpg a large batch of one job (one
    received_at and job_id, as the ingest job makes them) takes the COPY path. Into a partitioned
    ``events``, a row whose partition is missing gets it made first.
    """
    ordered = sorted(rows, key=_IDENTITY)
    if not ordered:
        return 0
    if session.get_bind().dialect.name == "postgresql":
        return await _insert_postgresql(session, ordered)
    return await insert_ignoring_duplicates(session, EVENTS, ordered, ("source", "event_id"))


def dead_letter_row(
    rejection: Rejection, position: int, job_id: str | None, job_name: str | None, now: datetime
) -> dict[str, Any]:
    """The ``dead_letters`` row for a rejected input."""
    return {
        "reason": rejection.reason,
        "errors": rejection.errors,
        "raw": rejection.raw,
        "source": rejection.source,
        "event_id": rejection.event_id,
        "job_id": job_id,
        "job_name": job_name,
        "position": position,
        "digest": hashlib.sha256(rejection.raw).hexdigest(),
        "received_at": now,
    }


async def insert_dead_letters(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> int:
    """Keep rejected inputs; a re-run of the same job does not keep them twice. Return how many were new."""
    return await insert_ignoring_duplicates(session, DEAD_LETTERS, rows, ("job_id", "position", "digest"))


async def record_failed_job(
    session: AsyncSession, *, job_id: str, job_name: str, args: bytes, error: str, tries: int, now: datetime
) -> int:
    """Record a job that used its last try; return the record's id."""
    statement = (
        insert(FailedJob)
        .values(job_id=job_id, job_name=job_name, args=args, error=error, tries=tries, failed_at=now)
        .returning(FailedJob.id)
    )
    return int((await session.execute(statement)).scalar_one())


async def failed_jobs(
    session: AsyncSession, *, include_requeued: bool = False, limit: int = 100
) -> list[FailedJob]:
    """Failed jobs, newest first."""
    statement = select(FailedJob).order_by(FailedJob.id.desc()).limit(limit)
    if not include_requeued:
        statement = statement.where(FailedJob.requeued_at.is_(None))
    return list((await session.scalars(statement)).all())


async def failed_job(session: AsyncSession, failed_id: int) -> FailedJob | None:
    """One failed job by its record id."""
    return await session.get(FailedJob, failed_id)


async def mark_requeued(session: AsyncSession, failed_id: int, new_job_id: str, now: datetime) -> None:
    """Note that a failed job was enqueued again, under ``new_job_id``."""
    await session.execute(
        update(FailedJob).where(FailedJob.id == failed_id).values(requeued_at=now, requeued_job_id=new_job_id)
    )


async def dead_letters(session: AsyncSession, *, limit: int = 100) -> list[DeadLetter]:
    """Dead letters, newest first."""
    return list((await session.scalars(select(DeadLetter).order_by(DeadLetter.id.desc()).limit(limit))).all())


async def table_counts(session: AsyncSession) -> dict[str, int]:
    """Row counts of events, dead letters and not-yet-requeued failed jobs."""
    events = await session.scalar(select(func.count()).select_from(Event))
    dead = await session.scalar(select(func.count()).select_from(DeadLetter))
    failed = await session.scalar(
        select(func.count()).select_from(FailedJob).where(FailedJob.requeued_at.is_(None))
    )
    return {"events": int(events or 0), "dead_letters": int(dead or 0), "failed_jobs": int(failed or 0)}
