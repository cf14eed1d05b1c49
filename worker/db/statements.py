"""Every SQL statement the jobs and the CLI run, named for what it does.

Dialect differences live here and nowhere else: :func:`insert_ignoring_duplicates`
is the one place that knows PostgreSQL/SQLite say ``ON CONFLICT DO NOTHING`` and
MySQL/MariaDB say ``INSERT IGNORE``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

import orjson
from sqlalchemy import Table, func, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

from worker.db.models import DeadLetter, Event, FailedJob
from worker.events import Rejection

EVENTS: Table = Event.__table__  # type: ignore[assignment]
DEAD_LETTERS: Table = DeadLetter.__table__  # type: ignore[assignment]


async def insert_ignoring_duplicates(
    session: AsyncSession, table: Table, rows: Sequence[dict[str, Any]], unique: Sequence[str]
) -> int:
    """Insert ``rows`` in bulk, skipping any whose ``unique`` key is already stored; return how many were new.

    The count comes from the statement itself (RETURNING rows or the affected-row count),
    not from extra queries. Safe when another transaction inserts the same keys at once.
    """
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    if dialect in {"postgresql", "sqlite"}:
        dialect_insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
        primary = next(iter(table.primary_key.columns))
        statement = (
            dialect_insert(table).on_conflict_do_nothing(index_elements=list(unique)).returning(primary)
        )
        result = await session.execute(statement, list(rows))
        return len(result.all())
    if dialect in {"mysql", "mariadb"}:
        result = await session.execute(insert(table).prefix_with("IGNORE"), list(rows))
        return int(result.rowcount)  # type: ignore[attr-defined]
    raise NotImplementedError(f"no idempotent insert for dialect {dialect!r}")


#: Columns an ingest writes (seq and txid come from the server).
EVENT_COLUMNS = (
    "source",
    "event_id",
    "type",
    "specversion",
    "time",
    "subject",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    "extensions",
    "received_at",
    "job_id",
)
_IDENTITY = itemgetter("source", "event_id")
#: Batches at least this large go through COPY on asyncpg; smaller ones are cheaper as one INSERT.
COPY_THRESHOLD = 64
_STAGE = "ew_events_stage"
_STAGE_DDL = text(
    f"CREATE TEMPORARY TABLE IF NOT EXISTS {_STAGE} (source text, event_id text, type text, specversion text,"
    " time timestamptz, subject text, datacontenttype text, dataschema text, data jsonb, data_base64 text,"
    " extensions jsonb, received_at timestamptz, job_id text) ON COMMIT DELETE ROWS"
)
_COLUMN_LIST = ", ".join(EVENT_COLUMNS)
_FROM_STAGE = text(
    f"INSERT INTO events ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM {_STAGE}"  # noqa: S608 - constants only
    " ORDER BY source, event_id ON CONFLICT (source, event_id) DO NOTHING"
)


def _json_text(value: Any) -> str | None:
    """JSON text for COPY, as the engine's JSON serializer writes it (the stdlib for what orjson refuses)."""
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # integers beyond 64 bits, which a valid event may carry
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _record(row: dict[str, Any]) -> tuple[Any, ...]:
    """A row as COPY takes it: values in :data:`EVENT_COLUMNS` order, JSON columns as text."""
    return (
        row["source"],
        row["event_id"],
        row["type"],
        row["specversion"],
        row["time"],
        row["subject"],
        row["datacontenttype"],
        row["dataschema"],
        _json_text(row["data"]),
        row["data_base64"],
        _json_text(row["extensions"]),
        row["received_at"],
        row["job_id"],
    )


async def _copy_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> int:
    """asyncpg: COPY the batch into a per-connection temporary table, then one INSERT … SELECT.

    COPY moves rows in PostgreSQL's binary format, several times faster than a multi-row
    INSERT; the INSERT … ON CONFLICT DO NOTHING keeps storage idempotent and its status
    line counts the new rows. The staging table empties itself at commit or rollback.
    """
    await session.execute(_STAGE_DDL)  # also begins the transaction the COPY joins
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    records = [_record(row) for row in rows]
    driver = raw.driver_connection
    assert driver is not None  # a checked-out connection always has its driver connection
    await driver.copy_records_to_table(_STAGE, records=records, columns=EVENT_COLUMNS)
    result = await session.execute(_FROM_STAGE)
    return int(result.rowcount)  # type: ignore[attr-defined]


async def insert_events(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> int:
    """Store events not stored yet (by source and event_id); return how many were new.

    Rows go in identity order so that two batches sharing identities lock them in the
    same order and cannot deadlock each other. On asyncpg large batches take the COPY path.
    """
    ordered = sorted(rows, key=_IDENTITY)
    bind = session.get_bind()
    if (
        len(ordered) >= COPY_THRESHOLD
        and bind.dialect.name == "postgresql"
        and bind.dialect.driver == "asyncpg"
    ):
        return await _copy_events(session, ordered)
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
