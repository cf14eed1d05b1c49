"""A connection lost during arq's claim of a job (WATCH ... EXEC) does not strand the job.

Redis may apply ``EXEC`` and lose only its reply. These tests put a TCP proxy between the
worker's pool and the real Redis that forwards ``EXEC`` and then cuts the connection before
the reply comes back, the moment a Redis restart can pick.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis
from arq.constants import in_progress_key_prefix
from redis.exceptions import WatchError

from worker.redis import worker_pool
from worker.serialization import deserialize

pytestmark = pytest.mark.integration

REDIS = ("127.0.0.1", 6379)


class CuttingProxy:
    """Forwards to Redis; with ``cut_after_exec`` set, drops the client after forwarding an EXEC."""

    def __init__(self) -> None:
        self.cut_after_exec = False
        self.cuts = 0
        self.server: asyncio.Server | None = None

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, muted: asyncio.Event, client: bool
    ) -> None:
        try:
            while data := await reader.read(65536):
                if client and self.cut_after_exec and b"EXEC" in data:
                    self.cut_after_exec = False
                    self.cuts += 1
                    muted.set()  # from here on no reply reaches the client
                    writer.write(data)
                    await writer.drain()
                    await asyncio.sleep(0.05)  # Redis applies it
                    return
                if muted.is_set():
                    return
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection(*REDIS)
        muted = asyncio.Event()
        to_server = asyncio.create_task(self._pipe(client_reader, server_writer, muted, client=True))
        to_client = asyncio.create_task(self._pipe(server_reader, client_writer, muted, client=False))
        await asyncio.wait([to_server, to_client], return_when=asyncio.FIRST_COMPLETED)
        for task in (to_server, to_client):
            task.cancel()
        client_writer.close()
        server_writer.close()

    @property
    def url(self) -> str:
        assert self.server is not None
        port = self.server.sockets[0].getsockname()[1]
        return f"redis://127.0.0.1:{port}/15"


@pytest.fixture
async def proxy() -> AsyncIterator[CuttingProxy]:
    proxy = CuttingProxy()
    proxy.server = await asyncio.start_server(proxy._handle, "127.0.0.1", 0)
    yield proxy
    proxy.server.close()


@pytest.fixture
async def direct() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(f"redis://{REDIS[0]}:{REDIS[1]}/15")
    yield client
    await client.aclose()


async def _claim(pool: aioredis.Redis, key: str) -> list[object]:
    """arq's claim of a job, as ``Worker.start_jobs`` writes it."""
    async with pool.pipeline(transaction=True) as pipe:
        await pipe.watch(key)
        assert not await pipe.exists(key)
        pipe.multi()
        pipe.psetex(key, 60_000, b"1")
        return await pipe.execute()  # type: ignore[no-any-return]


async def test_a_claim_applied_before_the_connection_dropped_counts_as_ours(proxy, direct):
    """EXEC applied, reply lost: the claim reads back as this worker's, and execute() succeeds."""
    pool = worker_pool(proxy.url, retry_window=5, job_deserializer=deserialize, queue_name="q")
    key = f"{in_progress_key_prefix}{uuid.uuid4().hex}"
    try:
        proxy.cut_after_exec = True
        assert await _claim(pool, key) == [True]
        assert proxy.cuts == 1
        assert (await direct.get(key)).startswith(b"1:")  # the claim's own value; arq only checks existence
        assert 0 < await direct.pttl(key) <= 60_000
    finally:
        await direct.delete(key)
        await pool.aclose()


async def test_a_claim_someone_else_holds_is_still_refused(proxy, direct):
    """If another worker's claim is there after the drop, WatchError tells arq the job is taken."""
    pool = worker_pool(proxy.url, retry_window=5, job_deserializer=deserialize, queue_name="q")
    key = f"{in_progress_key_prefix}{uuid.uuid4().hex}"
    try:
        async with pool.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            assert not await pipe.exists(key)
            await direct.psetex(key, 60_000, b"1")  # another worker claims it first
            pipe.multi()
            pipe.psetex(key, 60_000, b"1")
            proxy.cut_after_exec = True
            with pytest.raises(WatchError):
                await pipe.execute()
        assert proxy.cuts == 1
        assert await direct.get(key) == b"1"
    finally:
        await direct.delete(key)
        await pool.aclose()


async def test_other_transactions_are_left_as_redis_py_has_them(proxy, direct):
    """A watched transaction that is not a claim still raises WatchError when EXEC's reply is lost."""
    pool = worker_pool(proxy.url, retry_window=5, job_deserializer=deserialize, queue_name="q")
    key = f"ew-test:{uuid.uuid4().hex}"
    try:
        async with pool.pipeline(transaction=True) as pipe:
            await pipe.watch(key)
            pipe.multi()
            pipe.set(key, b"x")
            proxy.cut_after_exec = True
            with pytest.raises(WatchError):
                await pipe.execute()
        assert await direct.get(key) == b"x"  # applied all the same: only the reply was lost
    finally:
        await direct.delete(key)
        await pool.aclose()
