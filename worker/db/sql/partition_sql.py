"""The partitioned ``events`` of PostgreSQL: its layout, its partitions, its identities, its retention.

When ``events`` is partitioned (``eventworker migrate`` on a new database, ``eventworker
partition`` on an existing one: :mod:`worker.db.sql.partition_convert`), it is a table
``PARTITION BY RANGE (received_at)`` whose partitions each cover one interval
(:mod:`worker.domain.partitions`), named in a comment on the table (``eventworker: partitioned
by day``). MySQL/MariaDB and SQLite never get here.

Exactly once across partitions
------------------------------
PostgreSQL enforces a unique index on a partitioned table only if it holds the partition key,
and ``(source, event_id, received_at)`` would let an event sent again a day later in. So the
identities live in :data:`EVENT_KEYS`, one unpartitioned table keyed by ``(source, event_id)``,
written in the same transaction as the events: an ingest first inserts the batch's identities
``ON CONFLICT DO NOTHING RETURNING`` them, then stores the events whose identity was new. Two
workers storing one identity at once meet on the key's unique index, as they met on the events'
own before: the second waits for the first to commit, then skips it. Each key keeps its event's
``received_at``, so that retention removes exactly the keys of the rows it drops (an identity
stored again after that has a later time and stays). The partitions hold no index on the
identity; nothing reads events by it.

Partitions, ahead and on demand
-------------------------------
A partition is made as a table of its own (``LIKE events``, its primary key on ``seq``) and then
attached: ``ATTACH PARTITION`` takes a SHARE UPDATE EXCLUSIVE lock on ``events``, which lets
inserts and reads go on, where ``CREATE TABLE ... PARTITION OF`` would take an ACCESS EXCLUSIVE
one and queue every ingest behind the longest export. The ``maintain_partitions`` job keeps
``partitions_ahead`` intervals made ahead of now; an ingest whose ``received_at`` has no partition
(the job did not run, a clock far ahead) makes it in its own transaction, under an advisory lock
that one ingest at a time takes (:func:`ensure_partitions`). There is no DEFAULT partition: it
would hold rows that no partition drop removes, every new partition would have to scan it, and
``DETACH ... CONCURRENTLY`` refuses to run while one exists.

Which partitions exist, and whether ``events`` is partitioned at all, is kept per connection
(its pool entry's ``info``): reading it costs a query only for a new connection. A statement that
finds the layout changed (:func:`worker.db.failures.is_layout_change`) forgets it (:func:`forget`).

Retention
---------
A partition whose rows are all past retention goes whole: its handler runs are deleted, it is
detached ``CONCURRENTLY`` (outside any transaction: SHARE UPDATE EXCLUSIVE, never blocking
ingestion, but waiting for transactions older than it, such as a running export), the keys of
its rows are deleted in chunks (by their ``received_at``, within the partition's: no lookup by
identity), and the table is dropped. A detach cut short (a cancelled
statement, a lost connection) leaves the partition *pending*, which :func:`finalize_pending`
completes (``DETACH ... FINALIZE``) at the start of the next run; a detached table not dropped
yet is found by its name (:func:`detached_tables`) and finished the same way.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, cast

from sqlalchemy import Column, CursorResult, MetaData, Table, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from worker.db.models import Event
from worker.db.types import IdentityString, UtcDateTime
from worker.domain.partitions import INTERVALS, LEGACY, PREFIX, Interval, Partition, holding, slot

KEYS: Final = "event_keys"
#: The identity of every stored event, whichever partition holds it.
EVENT_KEYS = Table(
    KEYS,
    MetaData(),
    Column("source", IdentityString(Event.source.type.length), primary_key=True),
    Column("event_id", IdentityString(Event.event_id.type.length), primary_key=True),
    Column("received_at", UtcDateTime(), nullable=False),
)
#: The comment on a partitioned ``events`` naming its interval.
COMMENT_PREFIX: Final = "eventworker: partitioned by "
#: One ingest at a time makes a missing partition (a constant of our own: ``ewpart``).
_CREATE_LOCK: Final = 0x65_77_70_61_72_74
#: Pool entry ``info`` keys: the layout, and the partitions, as the connection last read them.
_LAYOUT: Final = "eventworker_layout"
_PARTITIONS: Final = "eventworker_partitions"

_READ_LAYOUT = text(
    "SELECT c.relkind::text AS kind, obj_description(c.oid, 'pg_class') AS comment"
    " FROM pg_class c WHERE c.oid = to_regclass('events')"
)
#: Each partition's bounds, read back as timestamps from the bound's text in the same session (so
#: in its time zone); a DEFAULT partition has no bounds and is left out.
_READ_PARTITIONS = text(
    "SELECT relname AS name, pending,"
    " CASE WHEN bound LIKE 'FOR VALUES FROM (MINVALUE)%' THEN NULL"
    " ELSE substring(bound FROM 'FROM \\(''([^'']*)''\\)')::timestamptz END AS lower,"
    " substring(bound FROM 'TO \\(''([^'']*)''\\)')::timestamptz AS upper"
    " FROM (SELECT c.relname, i.inhdetachpending AS pending, pg_get_expr(c.relpartbound, c.oid) AS bound"
    " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
    " WHERE i.inhparent = to_regclass('events')) AS p WHERE bound <> 'DEFAULT'"
)
#: Tables named as partitions that are no partition: detached by a retention run not finished.
_READ_DETACHED = text(
    "SELECT c.relname AS name FROM pg_class c"
    " WHERE c.relkind = 'r'"
    " AND c.relnamespace = (SELECT relnamespace FROM pg_class WHERE oid = to_regclass('events'))"
    " AND (c.relname LIKE :prefix OR c.relname = :legacy) AND NOT c.relispartition ORDER BY c.relname"
).bindparams(prefix=PREFIX.replace("_", "\\_") + "%", legacy=LEGACY)
_NAME = re.compile(rf"^({re.escape(PREFIX)}[0-9_]+|{LEGACY})$")


@dataclass(frozen=True, slots=True)
class Layout:
    """How ``events`` is stored: one table, or partitions of ``interval``."""

    partitioned: bool
    interval: Interval = "day"


UNPARTITIONED: Final = Layout(partitioned=False)


def _interval(comment: str | None) -> Interval:
    named = (comment or "").removeprefix(COMMENT_PREFIX).strip()
    return cast(Interval, named) if named in INTERVALS else "day"


def table_name(name: str) -> str:
    """``name`` quoted for SQL, once checked to be a partition's (never anything read from input)."""
    if not _NAME.fullmatch(name):
        raise ValueError(f"{name!r} is not the name of an events partition")
    return f'"{name}"'


async def _info(session: AsyncSession) -> dict[str, Any]:
    connection = await session.connection()
    raw = await connection.get_raw_connection()
    return cast(dict[str, Any], raw.info)


async def read_layout(session: AsyncSession | AsyncConnection) -> Layout:
    """Whether ``events`` is partitioned, and by what interval: from the catalog, now."""
    row = (await session.execute(_READ_LAYOUT)).one_or_none()
    if row is None or row.kind != "p":
        return UNPARTITIONED
    return Layout(partitioned=True, interval=_interval(row.comment))


async def layout(session: AsyncSession) -> Layout:
    """:func:`read_layout`, read once per connection."""
    info = await _info(session)
    known = info.get(_LAYOUT)
    if known is None:
        known = info[_LAYOUT] = await read_layout(session)
    return cast(Layout, known)


async def forget(session: AsyncSession) -> None:
    """Make the connection read the layout and the partitions again (they changed under it)."""
    info = await _info(session)
    info.pop(_LAYOUT, None)
    info.pop(_PARTITIONS, None)


async def read_partitions(session: AsyncSession | AsyncConnection) -> list[Partition]:
    """The partitions of ``events``, oldest first, those pending a detach left out."""
    rows = (await session.execute(_READ_PARTITIONS)).all()
    return sorted(
        Partition(upper=row.upper, lower=row.lower, name=row.name) for row in rows if not row.pending
    )


async def pending_detaches(session: AsyncSession | AsyncConnection) -> list[str]:
    """Partitions a ``DETACH ... CONCURRENTLY`` left half done (it was interrupted)."""
    return sorted(row.name for row in (await session.execute(_READ_PARTITIONS)).all() if row.pending)


async def detached_tables(session: AsyncSession | AsyncConnection) -> list[str]:
    """Tables detached from ``events`` by retention and not dropped yet, oldest first."""
    return [row.name for row in (await session.execute(_READ_DETACHED)).all()]


def _literal(at: datetime) -> str:
    return f"'{at.isoformat()}'"


def create_statements(partition: Partition) -> list[str]:
    """The DDL making ``partition``: a table of its own with its key, then attached to ``events``."""
    if partition.lower is None:
        raise ValueError("only the partition of a converted table has no lower bound")
    name = table_name(partition.name)
    return [
        f"CREATE TABLE {name} (LIKE events)",
        f'ALTER TABLE {name} ADD CONSTRAINT "pk_{partition.name}" PRIMARY KEY (seq)',
        f"ALTER TABLE events ATTACH PARTITION {name}"
        f" FOR VALUES FROM ({_literal(partition.lower)}) TO ({_literal(partition.upper)})",
    ]


async def create_partitions(session: AsyncSession, partitions: Sequence[Partition]) -> None:
    """Make ``partitions`` in the session's transaction."""
    for partition in partitions:
        for statement in create_statements(partition):
            await session.execute(text(statement))


async def lock_partitioning(session: AsyncSession) -> None:
    """Take the transaction's turn at making partitions (an advisory lock, held until it ends)."""
    await session.execute(select(func.pg_advisory_xact_lock(_CREATE_LOCK)))


async def ensure_partitions(session: AsyncSession, times: Iterable[datetime], interval: Interval) -> int:
    """Make sure a partition takes each of ``times`` (``received_at`` values); return how many were made.

    Nothing is read when the connection already knows partitions holding them all. A missing
    one is made in this transaction, under :func:`lock_partitioning`, after reading again which
    exist (another ingest may have just made it).
    """
    info = await _info(session)
    known: list[Partition] = info.get(_PARTITIONS) or []
    missing = sorted({at for at in times if holding(known, at) is None})
    if not missing:
        return 0
    known = await read_partitions(session)
    if all(holding(known, at) for at in missing):
        info[_PARTITIONS] = known
        return 0
    await lock_partitioning(session)
    known, made = await read_partitions(session), []
    for at in missing:
        if holding(known, at) is None:
            made.append(slot(at, interval, known))
            known = sorted([*known, made[-1]])
    await create_partitions(session, made)
    info[_PARTITIONS] = known
    return len(made)


async def delete_handler_runs_of(session: AsyncSession, name: str) -> int:
    """Delete the handler runs of the events in partition ``name`` (no foreign key does it for them).

    Found by the partition's ``seq`` range, then checked one by one against it: the work follows
    the runs, not the partition's rows.
    """
    table = table_name(name)
    result = await session.execute(
        text(
            "DELETE FROM handler_runs h"  # noqa: S608 - a checked partition name
            f" WHERE h.event_seq BETWEEN (SELECT min(seq) FROM {table}) AND (SELECT max(seq) FROM {table})"
            f" AND EXISTS (SELECT 1 FROM {table} e WHERE e.seq = h.event_seq)"
        )
    )
    return int(cast(CursorResult[Any], result).rowcount)


async def received_range(
    session: AsyncSession | AsyncConnection, name: str
) -> tuple[datetime, datetime] | None:
    """The first and last ``received_at`` of the (detached) partition ``name``; None when it is empty."""
    table = table_name(name)
    row = (await session.execute(text(f"SELECT min(received_at), max(received_at) FROM {table}"))).one()  # noqa: S608
    return None if row[0] is None else (row[0], row[1])


async def delete_keys_chunk(session: AsyncSession, first: datetime, last: datetime, limit: int) -> int:
    """Delete at most ``limit`` identities received from ``first`` to ``last`` (both in); return how many.

    A partition's rows are exactly the events received within its bounds, and a key keeps its
    event's ``received_at``: so these are the keys of a detached partition's rows, found along
    ``ix_event_keys_received_at`` and deleted by their row address, with no lookup by identity (an
    identity stored again since has a later time and stays).
    """
    result = await session.execute(
        text(
            "DELETE FROM event_keys WHERE ctid = ANY(ARRAY(SELECT ctid FROM event_keys"
            " WHERE received_at >= :first AND received_at <= :last LIMIT :limit))"
        ),
        {"first": first, "last": last, "limit": limit},
    )
    return int(cast(CursorResult[Any], result).rowcount)


async def drop_table(session: AsyncSession, name: str) -> None:
    """Drop the detached partition ``name``."""
    await session.execute(text(f"DROP TABLE {table_name(name)}"))


async def _autocommit(engine: AsyncEngine, statement: str) -> None:
    async with engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        await connection.execute(text(statement))


async def detach(engine: AsyncEngine, name: str) -> None:
    """``ALTER TABLE events DETACH PARTITION name CONCURRENTLY``, which must run outside a transaction.

    It waits for every transaction that could still see the partition (a running export, say);
    cut short, it leaves the partition pending (:func:`finalize_pending`).
    """
    await _autocommit(engine, f"ALTER TABLE events DETACH PARTITION {table_name(name)} CONCURRENTLY")


async def finalize_pending(engine: AsyncEngine) -> list[str]:
    """Complete every detach left pending; return the partitions it was done for."""
    async with engine.connect() as connection:
        pending = await pending_detaches(connection)
    for name in pending:
        await _autocommit(engine, f"ALTER TABLE events DETACH PARTITION {table_name(name)} FINALIZE")
    return pending


async def delete_legacy_chunk(
    session: AsyncSession, cutoff: datetime, limit: int, up_to_seq: int | None
) -> int:
    """Delete at most ``limit`` of the oldest rows (by ``seq``) received before ``cutoff``, with their
    keys and handler runs, in one statement; return how many events went.

    For the rows of a converted table (:data:`~worker.domain.partitions.LEGACY`) while the partition
    holding them is not wholly past retention: the chunked delete of an unpartitioned table.
    ``up_to_seq`` spares rows above it (those an export that ran first did not see).
    """
    spare = "" if up_to_seq is None else " AND seq <= :up_to"
    row = (
        await session.execute(
            text(
                "WITH chunk AS (SELECT seq, received_at FROM events"  # noqa: S608 - constants only
                f" WHERE received_at < :cutoff{spare} ORDER BY seq LIMIT :limit),"
                " gone AS (DELETE FROM events e USING chunk c"
                " WHERE e.seq = c.seq AND e.received_at = c.received_at"
                " RETURNING e.seq, e.source, e.event_id, e.received_at),"
                " keys AS (DELETE FROM event_keys k USING gone g WHERE k.source = g.source"
                " AND k.event_id = g.event_id AND k.received_at = g.received_at RETURNING 1),"
                " runs AS (DELETE FROM handler_runs h USING gone g WHERE h.event_seq = g.seq RETURNING 1)"
                " SELECT (SELECT count(*) FROM gone) AS events, (SELECT count(*) FROM keys) AS keys,"
                " (SELECT count(*) FROM runs) AS runs"
            ),
            {"cutoff": cutoff, "limit": limit, **({} if up_to_seq is None else {"up_to": up_to_seq})},
        )
    ).one()
    return int(row.events)


async def stored_rows(session: AsyncSession | AsyncConnection) -> int:
    """About how many rows ``events`` holds: the planner's estimate, or 1 without one and with rows."""
    estimate = await session.scalar(
        text("SELECT reltuples::bigint FROM pg_class WHERE oid = to_regclass('events')")
    )
    if estimate is not None and estimate > 0:
        return int(estimate)
    return int(bool(await session.scalar(text("SELECT EXISTS (SELECT 1 FROM events)"))))
