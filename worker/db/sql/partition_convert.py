"""Turning PostgreSQL's ``events`` into the partitioned table (:mod:`worker.db.sql.partition_sql`).

Two ways in, one set of statements (:func:`swap_statements`):

- **A new database**: migration ``0003`` finds ``events`` empty and, unless
  ``EVENTWORKER_PARTITION_INTERVAL=none``, replaces it in its own transaction.
- **An existing table** (``eventworker partition``, :func:`convert`): its rows are not copied.
  The table becomes the first partition, :data:`~worker.domain.partitions.LEGACY`, holding
  everything received before a cut-over time (the first interval boundary at least an hour
  ahead), and the partitions of the interval follow from there. Ingestion goes on while it runs
  but for one short transaction at the end:

  1. a ``CHECK (received_at < cutover)`` is added ``NOT VALID`` and then validated (a scan under
     SHARE UPDATE EXCLUSIVE, which lets inserts run), so that attaching needs no scan;
  2. ``event_keys`` is filled from one snapshot (``CREATE TABLE AS``), then keyed (an index build
     on a table no one else uses yet); the snapshot's ``xmin`` says which rows it may have missed;
  3. the swap, one transaction: ``LOCK events`` (waiting at most ``lock_timeout``, then trying
     again, so that a long export never has ingestion queued behind the lock), the keys of the
     rows stored since step 2 (by ``txid``), the renames, the new partitioned ``events`` with the
     identity sequence carried on, the old table attached as a partition, the foreign key of
     ``handler_runs`` dropped (PostgreSQL cannot keep one to a partitioned table's ``seq``), the
     partitions ahead made.

  Workers keep running; a job whose connection still took ``events`` for one table fails its
  statement once and is retried (:func:`worker.db.sql.partition_sql.forget`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from worker.db.sql.partition_sql import COMMENT_PREFIX, create_statements, read_layout, read_partitions
from worker.domain.partitions import LEGACY, Interval, Partition, ahead, cutover

#: The old table's constraints and indexes, renamed for the partition it becomes.
_RENAMED: Final = (
    ("CONSTRAINT", "pk_events", "pk_events_legacy"),
    ("INDEX", "uq_events_source_event_id", "uq_events_legacy_source_event_id"),
    ("INDEX", "ix_events_type_time", "ix_events_legacy_type_time"),
    ("INDEX", "ix_events_received_at", "ix_events_legacy_received_at"),
    ("INDEX", "ix_events_txid", "ix_events_legacy_txid"),
    ("SEQUENCE", "events_seq_seq", "events_legacy_seq_seq"),
)
#: The indexes of the partitioned table, made on every partition (the identity is in ``event_keys``).
PARTITIONED_INDEXES: Final = (
    "CREATE INDEX ix_events_type_time ON events (type, time)",
    "CREATE INDEX ix_events_received_at ON events (received_at)",
    "CREATE INDEX ix_events_txid ON events (txid)",
)
_CHECK: Final = "ck_events_legacy_received_at"
_FOREIGN_KEY: Final = "fk_handler_runs_event_seq_events"
_KEYS_FROM_LEGACY: Final = "CREATE TABLE event_keys AS SELECT source, event_id, received_at FROM {source}"
_KEYS_CONSTRAINTS: Final = (
    "ALTER TABLE event_keys ALTER COLUMN source SET NOT NULL, ALTER COLUMN event_id SET NOT NULL,"
    " ALTER COLUMN received_at SET NOT NULL",
    "ALTER TABLE event_keys ADD CONSTRAINT pk_event_keys PRIMARY KEY (source, event_id)",
    # Retention deletes a dropped partition's identities by their time (partition_sql.delete_keys_chunk).
    "CREATE INDEX ix_event_keys_received_at ON event_keys (received_at)",
)
#: How long the swap waits for its lock before letting go and trying again, and how often it tries.
SWAP_LOCK_TIMEOUT: Final = "5s"
SWAP_TRIES: Final = 60


def _rename(kind: str, old: str, new: str) -> str:
    if kind == "CONSTRAINT":
        return f"ALTER TABLE events_legacy RENAME CONSTRAINT {old} TO {new}"
    return f"ALTER {kind} {old} RENAME TO {new}"


def swap_statements(
    interval: Interval, partitions: list[Partition], legacy: Partition | None, *, fill_keys: bool
) -> list[str]:
    """The one transaction that replaces the unpartitioned ``events`` (locked first, by the caller).

    ``legacy``: the old table's rows stay as this partition (None: the table is empty and goes).
    ``fill_keys``: make ``event_keys`` here, from the old table (empty, or nothing writing to it).
    """
    statements = ["ALTER TABLE events RENAME TO events_legacy"]
    statements += [_rename(*names) for names in _RENAMED]
    statements += [
        "CREATE TABLE events (LIKE events_legacy INCLUDING DEFAULTS INCLUDING IDENTITY INCLUDING COMMENTS)"
        " PARTITION BY RANGE (received_at)",
        "SELECT setval(pg_get_serial_sequence('events', 'seq'), max(seq))"
        " FROM events_legacy HAVING count(*) > 0",
        *PARTITIONED_INDEXES,
        f"ALTER TABLE handler_runs DROP CONSTRAINT IF EXISTS {_FOREIGN_KEY}",
    ]
    if fill_keys:
        statements += [_KEYS_FROM_LEGACY.format(source="events_legacy"), *_KEYS_CONSTRAINTS]
    if legacy is None:
        statements.append("DROP TABLE events_legacy")
    else:
        statements += [
            "ALTER TABLE events_legacy ALTER COLUMN seq DROP IDENTITY",
            f"ALTER TABLE events ATTACH PARTITION {LEGACY}"
            f" FOR VALUES FROM (MINVALUE) TO ('{legacy.upper.isoformat()}')",
            f"ALTER TABLE events_legacy DROP CONSTRAINT IF EXISTS {_CHECK}",
        ]
    statements.append(f"COMMENT ON TABLE events IS '{COMMENT_PREFIX}{interval}'")
    for partition in partitions:
        statements += create_statements(partition)
    return statements


def new_database_statements(interval: Interval, now: datetime, count: int) -> list[str]:
    """What migration 0003 runs on an empty ``events``: the partitioned table and its first partitions."""
    return swap_statements(interval, ahead(now, interval, count, []), None, fill_keys=True)


@dataclass
class Conversion:
    """What :func:`convert` did, step by step, with the seconds each took."""

    rows: int = 0
    cutover: datetime | None = None
    partitions: list[str] = field(default_factory=list)
    steps: dict[str, float] = field(default_factory=dict)
    already: bool = False


async def _autocommit(engine: AsyncEngine, *statements: str) -> None:
    async with engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="AUTOCOMMIT")
        for statement in statements:
            await connection.execute(text(statement))


async def _run(connection: AsyncConnection, statements: list[str]) -> None:
    for statement in statements:
        await connection.execute(text(statement))


class _Steps:
    def __init__(self, report: Conversion, say: Callable[[str], None]) -> None:
        self.report, self.say, self.started = report, say, time.perf_counter()

    def done(self, name: str) -> None:
        now = time.perf_counter()
        self.report.steps[name] = round(now - self.started, 3)
        self.say(f"{name}: {now - self.started:.2f}s")
        self.started = now


async def _already(
    engine: AsyncEngine, interval: Interval, count: int, now: datetime, report: Conversion
) -> None:
    """``events`` is partitioned: record ``interval`` for the partitions to come and make those ahead."""
    async with engine.begin() as connection:
        await connection.execute(text(f"COMMENT ON TABLE events IS '{COMMENT_PREFIX}{interval}'"))
        await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": 0x65_77_70_61_72_74})
        made = ahead(now, interval, count, await read_partitions(connection))
        for partition in made:
            await _run(connection, create_statements(partition))
    report.already, report.partitions = True, [partition.name for partition in made]


async def convert(
    engine: AsyncEngine, interval: Interval, count: int, now: datetime, say: Callable[[str], None]
) -> Conversion:
    """Partition ``events`` by ``interval`` (see the module docstring), ``count`` intervals made ahead."""
    report = Conversion()
    async with engine.connect() as connection:
        shape = await read_layout(connection)
        if not shape.partitioned:
            report.rows = int((await connection.execute(text("SELECT count(*) FROM events"))).scalar_one())
    if shape.partitioned:
        await _already(engine, interval, count, now, report)
        return report
    steps = _Steps(report, say)
    await _autocommit(
        engine, "DROP TABLE IF EXISTS event_keys", f"ALTER TABLE events DROP CONSTRAINT IF EXISTS {_CHECK}"
    )
    legacy = None
    if report.rows:
        report.cutover = cutover(now, interval)
        legacy = Partition(upper=report.cutover, lower=None, name=LEGACY)
        await _autocommit(
            engine,
            f"ALTER TABLE events ADD CONSTRAINT {_CHECK}"
            f" CHECK (received_at < '{report.cutover.isoformat()}') NOT VALID",
        )
        await _autocommit(engine, f"ALTER TABLE events VALIDATE CONSTRAINT {_CHECK}")
        steps.done("check constraint validated")
    fill_xmin = await _fill_keys(engine)
    steps.done(f"{report.rows:,} identities copied to event_keys")
    await _autocommit(engine, *_KEYS_CONSTRAINTS)
    steps.done("event_keys keyed")
    partitions = ahead(now, interval, count, [] if legacy is None else [legacy])
    await _swap(engine, swap_statements(interval, partitions, legacy, fill_keys=False), fill_xmin)
    steps.done("swapped")
    report.partitions = [partition.name for partition in partitions]
    return report


async def _fill_keys(engine: AsyncEngine) -> int:
    """Copy every identity into a new ``event_keys`` from one snapshot; return the snapshot's xmin."""
    async with engine.connect() as connection:
        connection = await connection.execution_options(isolation_level="REPEATABLE READ")
        async with connection.begin():
            xmin = (
                await connection.execute(text("SELECT pg_snapshot_xmin(pg_current_snapshot())::text"))
            ).scalar_one()
            await connection.execute(text(_KEYS_FROM_LEGACY.format(source="events")))
    return int(xmin)


async def _swap(engine: AsyncEngine, statements: list[str], fill_xmin: int) -> None:
    """Lock ``events`` (a few seconds at most, then let go and try again), catch up the keys, swap."""
    for attempt in range(SWAP_TRIES):
        try:
            async with engine.begin() as connection:
                await connection.execute(text(f"SET LOCAL lock_timeout = '{SWAP_LOCK_TIMEOUT}'"))
                await connection.execute(text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
                await connection.execute(
                    text(
                        "INSERT INTO event_keys (source, event_id, received_at)"
                        " SELECT source, event_id, received_at FROM events WHERE txid >= :xmin"
                        " ON CONFLICT (source, event_id) DO NOTHING"
                    ),
                    {"xmin": fill_xmin},
                )
                await connection.execute(text("SET LOCAL lock_timeout = 0"))
                await _run(connection, statements)
            return
        except DBAPIError as exc:
            if "lock timeout" not in str(exc.orig) or attempt == SWAP_TRIES - 1:
                raise
            await asyncio.sleep(1)
