"""Driver exceptions mapped to eventworker's error tree, whichever driver raised them."""

from __future__ import annotations

import asyncio

from sqlalchemy import exc as sa_exc

from worker.errors import DatabaseUnavailable

#: SQLSTATE / MySQL error numbers for a unique-key violation.
_PG_UNIQUE = "23505"
_MYSQL_DUPLICATE_KEY = 1062


def is_connection_error(exc: BaseException) -> bool:
    """True when ``exc`` means the database is unreachable or dropped us (worth a retry)."""
    if isinstance(exc, DatabaseUnavailable):
        return True
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(
        exc,
        sa_exc.OperationalError
        | sa_exc.InterfaceError
        | sa_exc.TimeoutError  # pool exhausted for pool_timeout seconds
        | sa_exc.DisconnectionError
        | ConnectionError
        | asyncio.TimeoutError
        | OSError,
    )


def is_unique_violation(exc: BaseException) -> bool:
    """True when ``exc`` is a unique-key violation (a duplicate, not a failure)."""
    if not isinstance(exc, sa_exc.IntegrityError):
        return False
    orig = exc.orig
    if getattr(orig, "sqlstate", None) == _PG_UNIQUE or getattr(orig, "pgcode", None) == _PG_UNIQUE:
        return True
    args = getattr(orig, "args", ())
    if args and args[0] == _MYSQL_DUPLICATE_KEY:
        return True
    return "UNIQUE constraint failed" in str(orig)
