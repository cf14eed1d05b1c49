"""Driver exceptions, whichever driver raised them, mapped to duplicate / unreachable / other."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy import exc as sa_exc
from sqlalchemy import insert, text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

from worker.db.failures import is_connection_error, is_unique_violation
from worker.db.models import Event
from worker.errors import DatabaseUnavailable, PermanentError


class DriverError(Exception):
    """Stands in for a DBAPI exception carrying a SQLSTATE the way asyncpg/psycopg/psycopg2 do."""

    def __init__(self, *args: object, sqlstate: str | None = None, pgcode: str | None = None) -> None:
        super().__init__(*args)
        if sqlstate is not None:
            self.sqlstate = sqlstate
        if pgcode is not None:
            self.pgcode = pgcode


#: What asyncpg says when asked for an operation while still consuming the server's FATAL error.
OUT_OF_STEP = "cannot switch to state 11; another operation (2) is in progress"
ClientError = asyncpg.exceptions.InternalClientError


def emulated(orig: Exception) -> Exception:
    """asyncpg's ``orig`` as SQLAlchemy's asyncpg dialect hands it on (its emulated DBAPI error)."""
    return AsyncAdapt_asyncpg_dbapi.InternalClientError(str(orig), orig)


def integrity(orig: BaseException) -> sa_exc.IntegrityError:
    return sa_exc.IntegrityError("INSERT INTO events ...", {}, orig)


def operational(orig: BaseException) -> sa_exc.OperationalError:
    return sa_exc.OperationalError("INSERT INTO events ...", {}, orig)


def dbapi(orig: BaseException) -> sa_exc.DBAPIError:
    return sa_exc.DBAPIError("INSERT INTO events ...", {}, orig)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (integrity(DriverError("duplicate key value", sqlstate="23505")), True),  # asyncpg, psycopg 3
        (integrity(DriverError("duplicate key value", pgcode="23505")), True),  # psycopg2
        (integrity(DriverError(1062, "Duplicate entry '/s-1' for key 'uq_events_source_event_id'")), True),
        (integrity(DriverError("UNIQUE constraint failed: events.source, events.event_id")), True),
        (integrity(sqlite3.IntegrityError("UNIQUE constraint failed: dead_letters.job_id")), True),
        (integrity(DriverError("duplicate key value", sqlstate=23505)), True),  # a code given as a number
        (integrity(DriverError("foreign key violation", sqlstate="23503")), False),
        (integrity(DriverError("null value", sqlstate="23502")), False),
        (integrity(DriverError(1452, "Cannot add or update a child row")), False),
        (integrity(DriverError("NOT NULL constraint failed: events.type")), False),
        (integrity(DriverError()), False),
        (sa_exc.OperationalError("INSERT", {}, DriverError("x", sqlstate="23505")), False),
        (ValueError("UNIQUE constraint failed: events.source"), False),
    ],
)
def test_is_unique_violation(exc, expected):
    """A unique-key violation is recognised by SQLSTATE 23505, MySQL 1062 or SQLite's message, only."""
    assert is_unique_violation(exc) is expected


async def test_is_unique_violation_on_a_real_sqlite_error(db):
    """The exception SQLite actually raises for a repeated (source, event_id) is a unique violation."""
    row = {
        "source": "/s",
        "event_id": "1",
        "type": "t",
        "specversion": "1.0",
        "received_at": datetime.now(UTC),
    }
    with pytest.raises(sa_exc.IntegrityError) as caught:
        async with db.transaction() as session:
            await session.execute(insert(Event), [row, row])
    assert is_unique_violation(caught.value)
    assert not is_connection_error(caught.value)


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (sa_exc.OperationalError("x", {}, Exception()), True),
        # PostgreSQL: connection exception class 08, shutdown/crash/starting/too many connections.
        (operational(DriverError("connection failure", sqlstate="08006")), True),
        (operational(DriverError("could not connect", sqlstate="08001")), True),
        (operational(DriverError("terminating connection", sqlstate="57P01")), True),
        (operational(DriverError("the database system is starting up", sqlstate="57P03")), True),
        (operational(DriverError("too many connections", sqlstate="53300")), True),
        (operational(DriverError("terminating connection", pgcode="57P01")), True),  # psycopg2
        (
            operational(DriverError('database "x" is not currently accepting connections', sqlstate="55000")),
            True,
        ),
        (operational(DriverError("lock not held", sqlstate="55000")), False),
        # asyncpg's errors arrive as plain DBAPIError: judged by SQLSTATE all the same.
        (dbapi(DriverError("terminating connection due to administrator command", sqlstate="57P01")), True),
        (dbapi(DriverError('database "x" is not currently accepting connections', sqlstate="55000")), True),
        (dbapi(DriverError("canceling statement due to statement timeout", sqlstate="57014")), False),
        (dbapi(DriverError("invalid input syntax", sqlstate="22P02")), False),
        (operational(DriverError("deadlock detected", sqlstate="40P01")), False),
        (operational(DriverError("canceling statement due to statement timeout", sqlstate="57014")), False),
        # MySQL/MariaDB client and server error numbers.
        (operational(DriverError(2003, "Can't connect to MySQL server")), True),
        (operational(DriverError(2013, "Lost connection to MySQL server during query")), True),
        (operational(DriverError(1040, "Too many connections")), True),
        (operational(DriverError(1213, "Deadlock found when trying to get lock")), False),
        (operational(DriverError(1205, "Lock wait timeout exceeded")), False),
        # SQLite: the file cannot be used right now, versus a bad statement.
        (operational(sqlite3.OperationalError("unable to open database file")), True),
        (operational(sqlite3.OperationalError("database is locked")), True),
        (operational(sqlite3.OperationalError("disk I/O error")), True),
        (operational(sqlite3.OperationalError("no such table: events")), False),
        (sa_exc.InterfaceError("x", {}, Exception("connection is closed")), True),
        # asyncpg's own exceptions: wrapped twice by SQLAlchemy, or raw from the ingest COPY.
        (sa_exc.InternalError("x", {}, emulated(ClientError(OUT_OF_STEP))), True),
        (
            sa_exc.InternalError(
                "x", {}, emulated(ClientError('cannot switch to state 12; protocol is in the "failed" state'))
            ),
            True,
        ),
        (
            sa_exc.InternalError("x", {}, emulated(ClientError("unknown error in protocol implementation"))),
            False,
        ),
        (ClientError(OUT_OF_STEP), True),
        (ClientError("unknown error in protocol implementation"), False),
        (
            asyncpg.exceptions.ConnectionDoesNotExistError(
                "connection was closed in the middle of operation"
            ),
            True,
        ),
        (asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"), True),
        (
            asyncpg.exceptions.InterfaceError(
                "cannot call Transaction.rollback(): the underlying connection is closed"
            ),
            True,
        ),
        (asyncpg.exceptions.InterfaceError("connection is closed"), True),
        (
            asyncpg.exceptions.InterfaceError("cannot perform operation: another operation is in progress"),
            False,
        ),
        (asyncpg.exceptions.UniqueViolationError("duplicate key value"), False),
        (asyncpg.exceptions.QueryCanceledError("canceling statement due to statement timeout"), False),
        (asyncpg.exceptions.DataError("invalid input for query argument"), False),
        (sa_exc.TimeoutError("QueuePool limit of size 5 overflow 5 reached"), True),
        (sa_exc.DisconnectionError("server closed the connection"), True),
        (sa_exc.ProgrammingError("x", {}, Exception(), connection_invalidated=True), True),
        (ConnectionRefusedError(111, "Connection refused"), True),
        (ConnectionResetError(104, "Connection reset by peer"), True),
        (OSError(113, "No route to host"), True),
        (TimeoutError(), True),
        (DatabaseUnavailable("down"), True),
        (sa_exc.ProgrammingError("x", {}, Exception("syntax error")), False),
        (sa_exc.IntegrityError("x", {}, Exception("UNIQUE constraint failed")), False),
        (sa_exc.DataError("x", {}, Exception("value too long")), False),
        (PermanentError(), False),
        (ValueError(), False),
        (RuntimeError("connection"), False),
    ],
)
def test_is_connection_error(exc, expected):
    """Unreachable, dropped or refused connections and pool timeouts are connection errors, nothing else.

    An OperationalError is judged by its driver's code: deadlocks and statement timeouts are not outages.
    """
    assert is_connection_error(exc) is expected


async def test_is_connection_error_on_a_real_sqlite_error(unreachable_db):
    """Failing to open a SQLite file (directory missing) is an OperationalError, so a connection error."""
    with pytest.raises(sa_exc.OperationalError) as caught:
        async with unreachable_db.transaction() as session:
            await session.execute(insert(Event), [{"source": "/s"}])
    assert is_connection_error(caught.value)


async def test_bad_statement_on_real_sqlite_is_not_a_connection_error(db):
    """SQLite's OperationalError for a missing table is a bad statement, not an outage."""
    with pytest.raises(sa_exc.OperationalError) as caught:
        async with db.transaction() as session:
            await session.execute(text("SELECT * FROM no_such_table"))
    assert "no such table" in str(caught.value.orig)
    assert not is_connection_error(caught.value)
