"""The engine and its sessions: built from settings by the worker's start-up hook, never at import.

Every connection is tagged with the worker's application name (PostgreSQL
``application_name``, MySQL/MariaDB connection attribute ``program_name``) so the
server's own views show who holds it. While a job's transaction runs on
PostgreSQL, the tag also names the job (``SET LOCAL`` through ``set_config``). With tracing on,
every engine's statements are spans (:meth:`worker.tracing.hooks.Tracing.instrument_engine`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import event, func, select
from sqlalchemy.engine import Connection, ExceptionContext, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.pool import ConnectionPoolEntry

from worker.config import Settings
from worker.constants import MAX_APPLICATION_NAME
from worker.db.connect import driver_options, watch_connects
from worker.db.failures import is_asyncpg_out_of_step, unannounced_pooler
from worker.db.sql import statements
from worker.errors import ConfigError
from worker.protocol.serialization import deserialize
from worker.tracing import hooks


def _json_dumps(value: Any) -> str:
    """JSON for the database's JSON columns: orjson, or the stdlib for what orjson refuses.

    orjson refuses integers beyond 64 bits, which a valid event may carry (the stdlib decoder,
    used for payloads orjson cannot read, keeps them exact): without the fallback such an event
    failed its whole job on every try.
    """
    try:
        return orjson.dumps(value).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _connect_args(driver: str, settings: Settings) -> dict[str, Any]:
    """Per-driver connection arguments that tag the connection with our name."""
    name = settings.connection_name
    if driver == "asyncpg":
        return {"server_settings": {"application_name": name}}
    if driver in {"psycopg", "psycopg_async"}:
        return {"application_name": name}
    if driver in {"aiomysql", "asyncmy"}:
        return {"program_name": name}
    if driver == "aiosqlite":
        return {"timeout": settings.sqlite_busy_timeout_ms / 1000}
    return {}


def _pooler_connect_args(driver: str, pooler: str) -> dict[str, Any]:
    """Connection arguments a driver needs behind a transaction pooler: no prepared statement kept.

    asyncpg: no statement cache (its FAQ's PgBouncer recipe). Every statement it prepares is then
    unnamed, SQLAlchemy's too (``prepare()`` without a name), and parsed again with each
    execution in the same round trip: nothing is left on the server connection for the next
    client to meet, and nothing piles up there. (SQLAlchemy's recipe, unique names through
    ``prepared_statement_name_func``, would leave a statement behind per execution until
    PgBouncer discarded them; asyncpg's default names, ``__asyncpg_stmt_<n>__`` counted from 1 in
    every process, clash with another client's on the same server connection.) SQLAlchemy may keep
    caching what a statement's Describe said. psycopg: never prepare (``prepare_threshold=None``).
    """
    if pooler != "transaction":
        return {}
    if driver == "asyncpg":
        return {"statement_cache_size": 0}
    if driver in {"psycopg", "psycopg_async"}:
        return {"prepare_threshold": None}
    return {}


def _pooler_unannounced(context: ExceptionContext) -> None:
    """Raise a prepared-statement clash as one line naming EVENTWORKER_DB_POOLER.

    eventworker never names a statement itself: a statement of this client that already exists,
    or one that vanished, means another client's statements share the server connection, i.e.
    a transaction pooler the settings do not know about (:func:`~worker.db.failures.pooler_mismatch`).
    """
    error = unannounced_pooler(context.original_exception)
    if error is not None:
        raise error from None


def _sqlite_pragmas(busy_timeout_ms: int) -> Any:
    def on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        cursor = dbapi_connection.cursor()
        # WAL lets readers run beside the one writer; the busy timeout makes writers queue, not fail.
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # Off by default; without it ON DELETE CASCADE (a deleted event's handler runs) does nothing.
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    return on_connect


def make_engine(settings: Settings, *, replica: bool = False) -> AsyncEngine:
    """Create the worker's engine: pool sized from settings, connections tagged, JSON through orjson.

    ``replica``: an engine on the read replica (``DATABASE_READ_URL``) instead, for reads only.
    """
    setting = "DATABASE_READ_URL" if replica else "DATABASE_URL"
    configured = settings.database_read_url if replica else settings.database_url
    if configured is None:
        raise ConfigError(setting, "is not set")
    url = make_url(configured)
    driver = url.get_driver_name()
    options = driver_options(url, settings.db_connect_timeout)  # TLS parameters and timeout, per driver
    pool_args: dict[str, Any] = {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_timeout": settings.db_pool_timeout,
    }
    if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
        pool_args = {}  # an in-memory SQLite database lives in its single connection
    engine = create_async_engine(
        options.url,
        pool_pre_ping=settings.db_pool_pre_ping,
        hide_parameters=True,  # errors must not carry event payloads (or anything secret) into logs
        connect_args={
            **_connect_args(driver, settings),
            **_pooler_connect_args(driver, settings.db_pooler),
            **options.connect_args,
        },
        json_serializer=_json_dumps,
        json_deserializer=deserialize,  # exact integers beyond 64 bits (orjson reads them as floats)
        **pool_args,
    )
    if url.get_backend_name() == "postgresql":
        watch_connects(engine, url, setting)
    if driver == "aiosqlite":
        event.listen(engine.sync_engine, "connect", _sqlite_pragmas(settings.sqlite_busy_timeout_ms))
    if driver == "asyncpg":
        if settings.db_pooler != "transaction" and not replica:  # the ingest COPY's staging table
            event.listen(engine.sync_engine, "connect", statements.create_stage)
        event.listen(engine.sync_engine, "handle_error", _asyncpg_out_of_step_is_a_disconnect)
    if url.get_backend_name() == "postgresql" and settings.db_pooler != "transaction":
        event.listen(engine.sync_engine, "handle_error", _pooler_unannounced)
    if hooks.ACTIVE is not None:
        hooks.ACTIVE.instrument_engine(engine.sync_engine)
    return engine


def _asyncpg_out_of_step_is_a_disconnect(context: ExceptionContext) -> None:
    """Call a connection whose asyncpg protocol is out of step with the server disconnected.

    The server ending a connection (restart, failover, ``pg_terminate_backend``) sends its FATAL
    message, then closes the socket. A statement or pre-ping sent between the two reads can fail
    with asyncpg's ``InternalClientError`` while ``is_closed()`` still says no; SQLAlchemy then
    neither throws the connection away nor marks the error as a lost connection (a CI run logged
    such a job retry as ``unexpected``). Such a connection can never be used again: invalidating
    it costs one reconnect.
    """
    if is_asyncpg_out_of_step(context.original_exception):
        context.is_disconnect = True


def job_application_name(base: str, job_name: str) -> str:
    """``<job>@<base>``, cut to the bytes PostgreSQL keeps."""
    return f"{job_name}@{base}".encode()[:MAX_APPLICATION_NAME].decode(errors="ignore")


#: ``Session.info`` key holding the application_name a session's transaction is to carry.
_TAG = "eventworker_tag"
#: ``Session.info`` key set once a session has begun a transaction (and so has something to close).
_BEGUN = "eventworker_begun"


class JobSession(Session):
    """The sessions :class:`Database` opens: tag their connection when they first take one."""


@event.listens_for(JobSession, "after_begin")
def _tag_transaction(session: Session, _transaction: SessionTransaction, connection: Connection) -> None:
    """Note the session began; ``SET LOCAL application_name`` for its transaction, if one is asked for.

    Runs when the transaction takes its connection (its first statement), so an unused session
    costs nothing; ``set_config(..., true)`` lasts until the transaction ends.
    """
    session.info[_BEGUN] = True
    tag = session.info.get(_TAG)
    if tag is not None:
        connection.execute(select(func.set_config("application_name", tag, True)))


@dataclass(frozen=True, slots=True)
class Database:
    """The worker's engine and session factory, with the one way jobs open a transaction."""

    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    application_name: str
    tag_transactions: bool = True
    #: SQLite has one writer at a time: this process queues its own transactions instead of
    #: waiting on the file lock (other processes still wait up to the busy timeout).
    _sqlite_writer: asyncio.Lock = field(default_factory=asyncio.Lock, compare=False, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings, *, replica: bool = False) -> Database:
        """Build the engine and an ``async_sessionmaker(engine, expire_on_commit=False)``.

        ``replica``: on the read replica (``DATABASE_READ_URL``), for reads only.
        """
        engine = make_engine(settings, replica=replica)
        return cls(
            engine=engine,
            sessionmaker=async_sessionmaker(engine, expire_on_commit=False, sync_session_class=JobSession),
            application_name=settings.connection_name,
            tag_transactions=settings.tag_job_transactions,
        )

    @property
    def dialect(self) -> str:
        """The backend: postgresql, mysql or sqlite."""
        return self.engine.dialect.name

    @asynccontextmanager
    async def transaction(
        self, job_name: str | None = None, isolation_level: str | None = None
    ) -> AsyncIterator[AsyncSession]:
        """A short-lived session in one transaction: committed on success, rolled back on error, closed after.

        The connection is taken from the pool at the first statement, not before (a job that turns
        out to have nothing to do costs no round trip). On PostgreSQL the connection's
        application_name then names the job for the transaction's duration.
        ``isolation_level`` (e.g. ``"REPEATABLE READ"``) holds for this transaction only: the pool
        gives the connection its default back afterwards.
        """
        if self.dialect == "sqlite":
            async with self._sqlite_writer, self._session(None, isolation_level) as session:
                yield session
            return
        tag = None
        if job_name and self.tag_transactions and self.dialect == "postgresql":
            tag = job_application_name(self.application_name, job_name)
        async with self._session(tag, isolation_level) as session:
            yield session

    @asynccontextmanager
    async def _session(self, tag: str | None, isolation_level: str | None) -> AsyncIterator[AsyncSession]:
        """The session of :meth:`transaction`, begun by its first statement (autobegin).

        A session that never ran a statement has nothing to commit, roll back or give back: it is
        dropped without a call into SQLAlchemy's greenlet bridge (three of them, about 0.1 ms, was
        most of what a job that touches no table cost).
        """
        session = self.sessionmaker()
        if tag is not None:
            session.sync_session.info[_TAG] = tag
        try:
            if isolation_level is not None:
                # Set before the first statement: a transaction's level cannot change once it has queried.
                await session.connection(execution_options={"isolation_level": isolation_level})
            yield session
            if session.in_transaction():
                await session.commit()
        finally:
            if session.sync_session.info.get(_BEGUN):
                await session.close()  # rolls back what was not committed, returns the connection

    async def dispose(self) -> None:
        """Close every pooled connection."""
        await self.engine.dispose()
