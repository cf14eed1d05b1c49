"""Driver exceptions map to the same typed errors whichever driver raised them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import asyncpg
import pytest
from sqlalchemy import event, insert, make_url, text
from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi
from sqlalchemy.exc import DBAPIError

from worker.db.engine import Database
from worker.db.failures import is_connection_error, is_unique_violation
from worker.db.models import Event
from worker.runtime.retry import classify

pytestmark = pytest.mark.integration


def _row(event_id: str) -> dict:
    return {
        "source": "/s",
        "event_id": event_id,
        "type": "t",
        "specversion": "1.0",
        "received_at": datetime.now(UTC),
    }


async def test_a_unique_violation_is_recognised(db):
    """A plain INSERT of an existing identity raises what is_unique_violation calls a duplicate."""
    async with db.transaction() as session:
        await session.execute(insert(Event), [_row("dup")])
    with pytest.raises(DBAPIError) as caught:
        async with db.transaction() as session:
            await session.execute(insert(Event), [_row("dup")])
    assert is_unique_violation(caught.value)
    assert not is_connection_error(caught.value)


async def test_an_unreachable_database_is_a_connection_error(settings, unreachable_url):
    """Connecting where nothing listens raises what is_connection_error calls retryable."""
    down = Database.from_settings(settings.model_copy(update={"database_url": unreachable_url}))
    try:
        with pytest.raises((DBAPIError, OSError)) as caught:
            async with down.transaction() as session:
                await session.execute(text("SELECT 1"))
    finally:
        await down.dispose()
    assert is_connection_error(caught.value), repr(caught.value)
    assert classify(caught.value) in {"database_unavailable", "timeout"}
    assert not is_unique_violation(caught.value)


async def test_a_syntax_error_is_neither(db):
    """An ordinary SQL error is not mistaken for a duplicate or an outage."""
    with pytest.raises(DBAPIError) as caught:
        async with db.transaction() as session:
            await session.execute(text("SELEC 1"))
    assert not is_unique_violation(caught.value)
    assert classify(caught.value) == "unexpected"


class HeldEndProxy:
    """A TCP proxy to PostgreSQL that, once the server closes a connection, keeps the client's side open.

    A server ending a connection sends its FATAL message, then closes: holding the close back leaves
    the client in the moment between the two, which otherwise lasts one turn of the event loop.
    """

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.server_closed = asyncio.Event()
        self.release = asyncio.Event()
        self.server: asyncio.Server | None = None

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, OSError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*self.target)
        to_server = asyncio.create_task(self._pipe(client_reader, server_writer))
        await self._pipe(server_reader, client_writer)  # until the server closes
        self.server_closed.set()
        await self.release.wait()
        to_server.cancel()
        client_writer.close()
        server_writer.close()

    async def __aenter__(self) -> HeldEndProxy:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.release.set()
        assert self.server is not None
        self.server.close()

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])


async def _terminate(pg_url: str, pid: int) -> None:
    admin = await asyncpg.connect(make_url(pg_url).set(drivername="postgresql").render_as_string(False))
    try:
        assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
    finally:
        await admin.close()


@pytest.fixture
async def proxied_db(pg_settings) -> AsyncIterator[tuple[Database, HeldEndProxy]]:
    """The PostgreSQL test database through a :class:`HeldEndProxy`."""
    url = make_url(pg_settings.database_url)
    async with HeldEndProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        database = Database.from_settings(pg_settings.model_copy(update={"database_url": proxied}))
        yield database, proxy
        proxy.release.set()
        await database.dispose()


async def _statement_after_the_end(database: Database, proxy: HeldEndProxy, pg_url: str) -> None:
    """In one transaction: a statement, the server ends the connection, then another statement."""
    async with database.transaction() as session:
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
        await _terminate(pg_url, pid)
        await asyncio.wait_for(proxy.server_closed.wait(), 5)
        await asyncio.sleep(0.05)  # the FATAL message is read; the socket's end is held back
        await session.execute(text("SELECT 1"))


async def test_a_statement_after_the_server_ended_the_connection_is_a_connection_error(proxied_db, pg_url):
    """A statement sent between the server's FATAL and its close: database_unavailable, not unexpected."""
    database, proxy = proxied_db
    with pytest.raises(DBAPIError) as caught:
        await _statement_after_the_end(database, proxy, pg_url)
    assert "another operation" in str(caught.value.orig), repr(caught.value)  # asyncpg's InternalClientError
    assert caught.value.connection_invalidated
    assert classify(caught.value) == "database_unavailable"
    proxy.release.set()
    async with database.transaction() as session:  # the pool made a new connection
        assert await session.scalar(text("SELECT 1")) == 1


async def test_a_pooled_connection_the_server_ended_is_replaced_on_checkout(proxied_db, pg_url):
    """The pre-ping meets the half-closed connection, throws it away and connects anew: no error."""
    database, proxy = proxied_db
    async with database.transaction() as session:
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
    await _terminate(pg_url, pid)
    await asyncio.wait_for(proxy.server_closed.wait(), 5)
    await asyncio.sleep(0.05)
    async with database.transaction() as session:
        assert await session.scalar(text("SELECT pg_backend_pid()")) != pid


async def test_an_out_of_step_asyncpg_connection_is_thrown_away(pg_db):
    """asyncpg's "cannot switch to state" marks the connection lost even while is_closed() says no.

    The error is raised where asyncpg raises it, under a statement, on a connection that is in fact
    fine (so is_closed() is False): the engine must still drop it and classify the failure as an outage.
    """
    out_of_step = asyncpg.exceptions.InternalClientError(
        "cannot switch to state 11; another operation (2) is in progress"
    )

    def fail_marked(_conn, _cursor, statement, *_args) -> None:
        if "out_of_step" in statement:
            raise AsyncAdapt_asyncpg_dbapi.InternalClientError(str(out_of_step), out_of_step)

    event.listen(pg_db.engine.sync_engine, "before_cursor_execute", fail_marked)
    async with pg_db.transaction() as session:
        pid = await session.scalar(text("SELECT pg_backend_pid()"))
    with pytest.raises(DBAPIError) as caught:
        async with pg_db.transaction() as session:
            await session.execute(text("SELECT 'out_of_step'"))
    assert caught.value.connection_invalidated
    assert classify(caught.value) == "database_unavailable"
    async with pg_db.transaction() as session:
        assert await session.scalar(text("SELECT pg_backend_pid()")) != pid
