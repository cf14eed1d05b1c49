"""Where the databases differ, for every module that must know: which one it talks to, and how to
store a row exactly once on each.

eventworker runs on PostgreSQL, MySQL/MariaDB and SQLite, which SQLAlchemy names ``postgresql``,
``mysql`` (``mariadb`` through the mariadb driver) and ``sqlite``:

- :func:`dialect_name`: the name of the database a session talks to, for the modules that build
  their statements differently on each.
- :data:`SNAPSHOT_ISOLATION`: the isolation level under which one transaction reads one snapshot.
- :func:`insert_ignoring_duplicates`: the idempotent insert that storing exactly once rests on.
  PostgreSQL and SQLite say ``INSERT ... ON CONFLICT DO NOTHING``, MySQL and MariaDB
  ``INSERT IGNORE``; events, dead letters, handler runs and the rollups checkpoint all go through it.

A difference that belongs to one statement stays beside that statement, branching on
:func:`dialect_name`: the report's ``GROUPING SETS`` and lag arithmetic (``worker.db.sql.report_sql``),
the rollups' buckets, horizon and upsert (``worker.db.sql.rollup_sql``), the COPY fast paths
(``worker.db.sql.statements``, ``worker.db.sql.export_copy``), the stored-time conversions
(``worker.db.types``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import Table, insert
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession

#: The isolation that reads one snapshot for a whole transaction (PostgreSQL defaults to READ
#: COMMITTED; MySQL/MariaDB default to this but a server may be configured otherwise). SQLite's
#: single writer, or a single SELECT's one WAL snapshot, needs none.
SNAPSHOT_ISOLATION = {"postgresql": "REPEATABLE READ", "mysql": "REPEATABLE READ"}


def dialect_name(session: AsyncSession) -> str:
    """The SQLAlchemy dialect name of the database ``session`` talks to (``postgresql``, ``sqlite``...)."""
    return session.get_bind().dialect.name


async def insert_ignoring_duplicates(
    session: AsyncSession, table: Table, rows: Sequence[Mapping[str, Any]], unique: Sequence[str]
) -> int:
    """Insert ``rows`` in bulk, skipping any whose ``unique`` key is already stored; return how many were new.

    The count comes from the statement itself (RETURNING rows or the affected-row count),
    not from extra queries. Safe when another transaction inserts the same keys at once.
    """
    if not rows:
        return 0
    dialect = dialect_name(session)
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
