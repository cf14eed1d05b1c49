"""Opening a PostgreSQL connection: TLS as the URL says, and one clear line when the server refuses.

Hosting platforms hand out libpq's URLs (``postgres://u:p@host/db?sslmode=verify-full&sslrootcert=ca.pem``).
SQLAlchemy passes a URL's query to the driver as keyword arguments: psycopg hands them to libpq,
which knows them all, but asyncpg takes libpq's TLS parameters only inside a DSN and refuses them
as keywords. :func:`driver_options` moves them, for asyncpg, into a DSN holding only them, which
asyncpg reads exactly as libpq would (``sslmode=require`` encrypts without checking the
certificate, ``verify-ca`` checks it against ``sslrootcert``, ``verify-full`` the host name too).

:func:`explain_refusals` hooks the engine's connects: a refusal that no retry can fix (the
server's certificate, TLS the server demands or refuses, a failed authentication) becomes one
:class:`~worker.errors.ConfigError` naming the URL's variable, instead of a driver traceback or
30 s of start-up retries.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlencode

import asyncpg
from sqlalchemy import event
from sqlalchemy.engine import URL, Dialect
from sqlalchemy.exc import EmulatedDBAPIException
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import ConnectionPoolEntry

from worker.config import redact_url
from worker.errors import ConfigError

#: libpq's TLS parameters, as a URL's query carries them.
TLS_PARAMETERS = (
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "sslpassword",
    "sslcrl",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
)
#: SQLSTATE class 28: the server refused who or how we connect (pg_hba.conf, password).
_PG_AUTHORIZATION_CLASS = "28"
#: Words of libpq's messages (through psycopg, which gives no SQLSTATE for a failed connect) that
#: mean the same: TLS or authentication, not the network.
_LIBPQ_REFUSALS = (
    "no pg_hba.conf entry",
    "authentication failed",
    "certificate",
    "ssl",
    "does not match host name",
)


@dataclass(frozen=True, slots=True)
class DriverOptions:
    """What to build the engine from: the URL as the driver can take it, and connection arguments."""

    url: URL
    connect_args: dict[str, Any]


def driver_options(url: URL) -> DriverOptions:
    """``url`` with what its driver cannot take as keywords moved into connection arguments."""
    if url.get_driver_name() != "asyncpg":
        return DriverOptions(url, {})
    query = dict(url.query)
    tls = {name: query.pop(name) for name in TLS_PARAMETERS if name in query}
    if not tls:
        return DriverOptions(url, {})
    # asyncpg lets its keywords (host, port, user, ...) win over the DSN: the DSN adds only these.
    return DriverOptions(url.set(query=query), {"dsn": "postgresql://?" + urlencode(tls)})


def refusal(error: BaseException) -> str | None:
    """Why the server (or its certificate) refused the connection, when another try would not help."""
    # SQLAlchemy wraps asyncpg's own errors at connect in its emulated DBAPI errors.
    exc = error.orig if isinstance(error, EmulatedDBAPIException) and error.orig is not None else error
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"the server's TLS certificate was refused: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        return f"TLS failed: {exc.reason or exc}"
    if isinstance(exc, asyncpg.ClientConfigurationError):  # e.g. no root certificate for verify-full
        return _one_line(exc)
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(getattr(exc, "sqlstate", "") or "")
        return _one_line(exc) if sqlstate.startswith(_PG_AUTHORIZATION_CLASS) else None
    if isinstance(exc, ConnectionError) and "ssl" in str(exc).lower():  # asyncpg: no TLS on the server
        return _one_line(exc)
    if type(exc).__module__.startswith("psycopg") and type(exc).__name__ == "OperationalError":
        text = str(exc).lower()
        return _one_line(exc) if any(words in text for words in _LIBPQ_REFUSALS) else None
    return None


def _one_line(exc: BaseException) -> str:
    """The lines of a driver's message joined into one (libpq writes one per host it tried)."""
    lines = [line.strip(" -") for line in str(exc).splitlines() if line.strip(" -")]
    return "; ".join(lines) or type(exc).__name__


def _tls_hint(reason: str) -> str:
    """What to change in the URL for the refusals whose fix is known."""
    if "no encryption" in reason:
        return " (the server accepts only TLS: add ?sslmode=require, or verify-full with sslrootcert=)"
    if "mismatch" in reason or "does not match host name" in reason:
        return " (verify-full checks the host name: connect by a name the certificate has, or use verify-ca)"
    return ""


def explain_refusals(engine: AsyncEngine, url: URL, setting: str) -> None:
    """Make every connect of ``engine`` raise a refusal as one ConfigError naming ``setting``."""
    event.listen(engine.sync_engine, "do_connect", _explaining(url, setting))


def _explaining(url: URL, setting: str) -> Callable[[Dialect, ConnectionPoolEntry, Any, Any], Any]:
    shown = unquote(redact_url(url))  # sslrootcert=/etc/ca.pem, not %2Fetc%2Fca.pem

    def connect(dialect: Dialect, _record: ConnectionPoolEntry, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            reason = refusal(exc)
            if reason is None:
                raise
            raise ConfigError(setting, f"{shown}: refused: {reason}{_tls_hint(reason)}") from exc

    return connect
