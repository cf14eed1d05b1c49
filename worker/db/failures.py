"""Driver exceptions mapped to eventworker's error tree, whichever driver raised them.

A unique-key violation is a duplicate, not a failure. A connection error (refused,
dropped, server shutting down, SQLite file unopenable or locked) is worth a retry
with back-off. A missing table or column most likely means a schema that was never
migrated (:func:`worker.db.schema.behind_error` checks). Anything else is "unexpected":
also retried, but reported as such.
"""

from __future__ import annotations

import asyncpg
from sqlalchemy import exc as sa_exc

from worker.errors import ConfigError, DatabaseUnavailable

#: PostgreSQL SQLSTATEs: unique violation; and those that mean "connection gone or refused".
_PG_UNIQUE = "23505"
_PG_CONNECTION_CLASS = "08"
_PG_UNAVAILABLE = frozenset({"57P01", "57P02", "57P03", "53300"})  # shutdown, crash, starting, too many
#: SQLSTATE 55000 is "object not in prerequisite state" in general; when connecting, with this message,
#: it means the database refuses connections for now (``ALTER DATABASE ... ALLOW_CONNECTIONS false``).
_PG_NOT_ACCEPTING = ("55000", "not currently accepting connections")
#: MySQL/MariaDB error numbers: duplicate key; and client/server errors that mean "no connection".
_MYSQL_DUPLICATE_KEY = 1062
_MYSQL_UNAVAILABLE = frozenset({1040, 1053, 1927, 2002, 2003, 2005, 2006, 2013, 2055, 4031})
#: SQLite messages that mean the file cannot be used right now (not a bad statement).
_SQLITE_UNAVAILABLE = ("unable to open database file", "database is locked", "disk i/o error")


def _sqlstate(orig: BaseException | None) -> str | None:
    value = getattr(orig, "sqlstate", None) or getattr(orig, "pgcode", None)
    return str(value) if value else None


def _mysql_errno(orig: BaseException | None) -> int | None:
    args = getattr(orig, "args", ())
    return args[0] if args and isinstance(args[0], int) else None


def _pg_unavailable(orig: BaseException | None, sqlstate: str) -> bool:
    if sqlstate.startswith(_PG_CONNECTION_CLASS) or sqlstate in _PG_UNAVAILABLE:
        return True
    code, message = _PG_NOT_ACCEPTING
    return sqlstate == code and message in str(orig)


def _operational_is_connection(exc: sa_exc.OperationalError) -> bool:
    orig = exc.orig
    sqlstate = _sqlstate(orig)
    if sqlstate is not None:
        return _pg_unavailable(orig, sqlstate)
    errno = _mysql_errno(orig)
    if errno is not None:
        return errno in _MYSQL_UNAVAILABLE
    message = str(orig).lower()
    if type(orig).__module__.startswith("sqlite3") or "sqlite" in type(orig).__module__:
        return any(text in message for text in _SQLITE_UNAVAILABLE)
    return True  # an operational error with no code: the driver could not talk to the server


#: asyncpg, asked for an operation while its protocol is still in another: ``cannot switch to state
#: 11; another operation (2) is in progress`` (2: consuming an error). The server's FATAL
#: "terminating connection" leaves it there until the socket's end is read; nothing can follow.
_ASYNCPG_OUT_OF_STEP = "cannot switch to state"
#: asyncpg's InterfaceError texts for a connection already closed (a statement, a rollback).
_ASYNCPG_CLOSED = ("connection is closed", "underlying connection is closed")


def _driver_exception(exc: BaseException) -> BaseException:
    """The driver's own exception behind ``exc``.

    SQLAlchemy wraps a DBAPI error in ``exc.orig``; for asyncpg, ``orig`` is an emulated DBAPI
    error whose own ``orig`` is asyncpg's. The ingest COPY, sent to asyncpg directly, raises
    asyncpg's exceptions unwrapped.
    """
    orig: BaseException | None = exc.orig if isinstance(exc, sa_exc.DBAPIError) else exc
    if isinstance(orig, sa_exc.EmulatedDBAPIException) and orig.orig is not None:
        return orig.orig
    return orig if orig is not None else exc


def is_asyncpg_out_of_step(exc: BaseException) -> bool:
    """True when ``exc`` is asyncpg's protocol out of step with the server: the connection is dead.

    Its ``is_closed()`` can still say no, so SQLAlchemy does not always treat it as a disconnect.
    """
    driver = _driver_exception(exc)
    return isinstance(driver, asyncpg.exceptions.InternalClientError) and _ASYNCPG_OUT_OF_STEP in str(driver)


def _driver_connection_lost(driver: BaseException) -> bool:
    """A driver exception (SQLAlchemy's wrapping aside) that means the connection is gone."""
    if isinstance(driver, asyncpg.exceptions.InterfaceError):
        return any(text in str(driver) for text in _ASYNCPG_CLOSED)
    sqlstate = _sqlstate(driver)  # asyncpg's PostgresError (e.g. 57P01 from the COPY), psycopg's
    return sqlstate is not None and _pg_unavailable(driver, sqlstate)


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` means the database is unreachable or dropped us (worth a retry)."""
    if isinstance(exc, DatabaseUnavailable | ConnectionError | TimeoutError | OSError):
        return True
    if is_asyncpg_out_of_step(exc):
        return True
    if not isinstance(exc, sa_exc.SQLAlchemyError):
        return _driver_connection_lost(exc)  # raised by the driver straight to us (the ingest COPY)
    if isinstance(exc, sa_exc.TimeoutError | sa_exc.DisconnectionError | sa_exc.InterfaceError):
        return True  # pool exhausted for pool_timeout seconds; connection unusable
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    if isinstance(exc, sa_exc.OperationalError):
        return _operational_is_connection(exc)
    if isinstance(exc, sa_exc.DBAPIError):
        # asyncpg's errors reach SQLAlchemy as plain DBAPIError: its SQLSTATE still says what happened.
        sqlstate = _sqlstate(exc.orig)
        return sqlstate is not None and _pg_unavailable(exc.orig, sqlstate)
    return False


def is_unique_violation(exc: BaseException) -> bool:
    """True when ``exc`` is a unique-key violation (a duplicate, not a failure)."""
    if not isinstance(exc, sa_exc.IntegrityError):
        return False
    orig = exc.orig
    if _sqlstate(orig) == _PG_UNIQUE or _mysql_errno(orig) == _MYSQL_DUPLICATE_KEY:
        return True
    return "UNIQUE constraint failed" in str(orig)


#: A statement named a table or a column the database does not have. SQLSTATEs: PostgreSQL's
#: undefined_table and undefined_column, and the standard's "base table not found" and "column not
#: found" (asyncmy gives MySQL's); MySQL/MariaDB error numbers ER_NO_SUCH_TABLE and ER_BAD_FIELD_ERROR
#: (aiomysql gives only those); SQLite's messages.
_UNDEFINED_SQLSTATES = frozenset({"42P01", "42703", "42S02", "42S22"})
_MYSQL_UNDEFINED = frozenset({1146, 1054})
_SQLITE_UNDEFINED = ("no such table", "no such column")


def is_undefined_object(exc: BaseException) -> bool:
    """True when ``exc`` says a table or column does not exist, whichever driver raised it.

    Also for asyncpg's own exception, which the export's COPY raises unwrapped.
    """
    driver = _driver_exception(exc)
    sqlstate = _sqlstate(driver)
    if sqlstate is not None:
        return sqlstate in _UNDEFINED_SQLSTATES
    if not isinstance(exc, sa_exc.DBAPIError):
        return False
    errno = _mysql_errno(driver)
    if errno is not None:
        return errno in _MYSQL_UNDEFINED
    message = str(driver).lower()
    return any(text in message for text in _SQLITE_UNDEFINED)


#: PostgreSQL SQLSTATEs of a prepared statement that already exists (duplicate_prepared_statement) or
#: does not (invalid_sql_statement_name).
_PG_PREPARED_STATEMENT_CLASH = frozenset({"42P05", "26000"})


def pooler_mismatch(exc: BaseException) -> str | None:
    """The server's message when ``exc`` is a prepared statement that exists already, or no longer.

    eventworker names no statement itself; its drivers do (asyncpg ``__asyncpg_stmt_<n>__``,
    counting per process, psycopg ``_pg3_<n>``, per connection). Such a clash means the server
    connection is shared with other clients between transactions: a transaction pooler
    (PgBouncer's ``pool_mode = transaction``) that the settings do not announce. None for
    anything else.
    """
    driver = _driver_exception(exc)
    if _sqlstate(driver) not in _PG_PREPARED_STATEMENT_CLASH or "prepared statement" not in str(driver):
        return None
    return str(driver).strip().splitlines()[0]


def unannounced_pooler(exc: BaseException) -> ConfigError | None:
    """The one-line error naming ``EVENTWORKER_DB_POOLER`` when ``exc`` is :func:`pooler_mismatch`'s."""
    problem = pooler_mismatch(exc)
    if problem is None:
        return None
    return ConfigError(
        "EVENTWORKER_DB_POOLER",
        f"the server says {problem!r}: DATABASE_URL reaches PostgreSQL through a transaction pooler"
        " (PgBouncer's pool_mode=transaction, a cloud provider's pooler);"
        " set EVENTWORKER_DB_POOLER=transaction",
    )


#: PostgreSQL SQLSTATE: a REPEATABLE READ transaction met a row changed after its snapshot.
_PG_SERIALIZATION_FAILURE = "40001"


def is_serialization_failure(exc: BaseException) -> bool:
    """True when ``exc`` says another transaction changed what this one read (PostgreSQL 40001)."""
    return isinstance(exc, sa_exc.DBAPIError) and _sqlstate(exc.orig) == _PG_SERIALIZATION_FAILURE


#: PostgreSQL SQLSTATEs that mean ``events`` is not laid out as the connection took it to be: an
#: ``ON CONFLICT`` target no unique index matches (invalid_column_reference: the table was partitioned
#: meanwhile) and a row no partition takes (check_violation, "no partition of relation ... found").
_PG_LAYOUT_CHANGED = frozenset({"42P10", "23514"})


def is_layout_change(exc: BaseException) -> bool:
    """True when ``exc`` says the events table's layout (partitioned or not, its partitions) changed."""
    return _sqlstate(_driver_exception(exc)) in _PG_LAYOUT_CHANGED
