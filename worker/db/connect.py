"""Opening a PostgreSQL connection: TLS as the URL says, several hosts, a bounded wait, and one clear
line when the server refuses.

Hosting platforms hand out libpq's URLs (``postgres://u:p@host/db?sslmode=verify-full&sslrootcert=ca.pem``).
SQLAlchemy passes a URL's query to the driver as keyword arguments: psycopg hands them to libpq,
which knows them all, but asyncpg takes libpq's TLS parameters only inside a DSN and refuses them
as keywords. :func:`driver_options` moves them, for asyncpg, into a DSN holding only them, which
asyncpg reads exactly as libpq would (``sslmode=require`` encrypts without checking the
certificate, ``verify-ca`` checks it against ``sslrootcert``, ``verify-full`` the host name too).

A URL may list several hosts (``?host=h1:5432&host=h2:5433``, or libpq's ``h1:5432,h2:5433``, which
:func:`worker.config.normalize_database_url` rewrites to it) with ``target_session_attrs=read-write``:
each connect then takes the first host that is up and is a primary, so after a failover new
connections find the promoted standby. libpq (psycopg) gives each host ``connect_timeout`` seconds;
asyncpg's ``timeout`` bounds all hosts together, so a first host that drops packets would use it
up and the others would never be tried. :func:`watch_connects` hooks the engine's connects: for
asyncpg it tries the hosts one at a time, each with the whole ``EVENTWORKER_DB_CONNECT_TIMEOUT``,
and a host that does not answer in time is :class:`~worker.errors.DatabaseUnavailable` (retried
without using up a job's try), not a bare ``TimeoutError``.

The same hook turns a refusal that no retry can fix (the server's certificate, TLS the server
demands or refuses, a failed authentication) into one :class:`~worker.errors.ConfigError` naming
the URL's variable, instead of a driver traceback or 30 s of start-up retries.
"""

from __future__ import annotations

import math
import ssl
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
from worker.errors import ConfigError, DatabaseUnavailable

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


def driver_options(url: URL, connect_timeout: float) -> DriverOptions:
    """``url`` with what its driver cannot take as keywords moved into connection arguments, and the
    connect timeout (``connect_timeout`` in the URL wins over the setting) as the driver takes it."""
    driver = url.get_driver_name()
    if url.get_backend_name() != "postgresql":
        return DriverOptions(url, {})
    if driver != "asyncpg":  # libpq: whole seconds, at least 2 (libpq rounds 1 up to 2 itself)
        given = "connect_timeout" in url.query
        return DriverOptions(url, {} if given else {"connect_timeout": max(2, math.ceil(connect_timeout))})
    query = dict(url.query)
    tls = {name: query.pop(name) for name in TLS_PARAMETERS if name in query}
    args: dict[str, Any] = {"timeout": float(str(query.pop("connect_timeout", connect_timeout)))}
    if tls:  # asyncpg lets its keywords (host, port, user, ...) win over the DSN: the DSN adds only these
        args["dsn"] = "postgresql://?" + urlencode(tls)
    return DriverOptions(url.set(query=query), args)


def refusal(error: BaseException) -> str | None:
    """Why the server (or its certificate) refused the connection, when another try would not help."""
    exc = _driver_error(error)
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


def watch_connects(engine: AsyncEngine, url: URL, setting: str) -> None:
    """Hook every connect of ``engine``: asyncpg's hosts one at a time, each with its own timeout; a
    host that does not answer, or no host at all, is DatabaseUnavailable; a refusal is one ConfigError
    naming ``setting``."""
    event.listen(engine.sync_engine, "do_connect", _Connector(url, setting))


class _Connector:
    """SQLAlchemy's ``do_connect`` hook: makes the driver's connection itself and returns it."""

    def __init__(self, url: URL, setting: str) -> None:
        self.url = url
        self.setting = setting
        self.shown = unquote(redact_url(url))  # sslrootcert=/etc/ca.pem, not %2Fetc%2Fca.pem

    def __call__(self, dialect: Dialect, _record: ConnectionPoolEntry, cargs: Any, cparams: Any) -> Any:
        try:
            hosts = cparams.get("host")
            if dialect.driver == "asyncpg" and isinstance(hosts, list) and len(hosts) > 1:
                return self._each_host(dialect, cargs, cparams)
            return self._one(dialect, cargs, cparams)
        except (ConfigError, DatabaseUnavailable):
            raise
        except Exception as exc:
            reason = refusal(exc)
            if reason is None:
                raise
            raise ConfigError(self.setting, f"{self.shown}: refused: {reason}{_tls_hint(reason)}") from exc

    def _one(self, dialect: Dialect, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except Exception as exc:
            if not isinstance(_driver_error(exc), TimeoutError):  # asyncpg's: a host that drops packets
                raise
            where = f"{cparams.get('host')}:{cparams.get('port')}"
            raise DatabaseUnavailable(f"{self.setting}: {where}: {_no_answer(cparams)}") from exc

    def _each_host(self, dialect: Dialect, cargs: Any, cparams: Any) -> Any:
        """asyncpg's own loop over the hosts, as libpq does it: each host has the whole timeout."""
        wanted = str(cparams.get("target_session_attrs") or "any")
        # prefer-standby: a standby if one is up, else any host (libpq's order).
        passes = ["standby", "any"] if wanted == "prefer-standby" else [wanted]
        failures: list[str] = []
        for attrs in passes:
            for host, port in zip(cparams["host"], cparams["port"], strict=True):
                one = {**cparams, "host": host, "port": port, "target_session_attrs": attrs}
                try:
                    return dialect.connect(*cargs, **one)
                except Exception as exc:
                    if not _next_host(exc):
                        raise
                    failures.append(f"{host}:{port} {_why(exc, one)}")
        raise DatabaseUnavailable(f"{self.setting}: no host would do ({wanted}): {'; '.join(failures)}")


def _driver_error(error: BaseException) -> BaseException:
    """asyncpg's exception behind SQLAlchemy's emulated DBAPI error (its wrapping of asyncpg's errors)."""
    if isinstance(error, EmulatedDBAPIException) and error.orig is not None:
        return error.orig
    return error


def _next_host(error: BaseException) -> bool:
    """Whether asyncpg (like libpq) goes on to the next host after ``error``: the host is down or
    unreachable, starting up or shutting down, or not what ``target_session_attrs`` asks for."""
    exc = _driver_error(error)
    next_host = (OSError, asyncpg.CannotConnectNowError, asyncpg.TargetServerAttributeNotMatched)
    return isinstance(exc, next_host) and refusal(exc) is None


def _no_answer(cparams: Any) -> str:
    return f"no answer within {float(cparams.get('timeout') or 0):g} s (EVENTWORKER_DB_CONNECT_TIMEOUT)"


def _why(error: BaseException, cparams: Any) -> str:
    exc = _driver_error(error)
    if isinstance(exc, TimeoutError):
        return _no_answer(cparams)
    if isinstance(exc, asyncpg.TargetServerAttributeNotMatched):
        return f"does not match target_session_attrs={cparams.get('target_session_attrs')}"
    return _one_line(exc)
