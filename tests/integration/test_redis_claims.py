"""A connection lost during arq's claim of a job (WATCH ... EXEC) does not strand the job.

Redis may apply ``EXEC`` and lose only its reply. These tests put a TCP proxy between the
worker's pool and the real Redis that forwards ``EXEC`` and then cuts the connection before
the reply comes back, the moment a Redis restart can pick.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis
from arq.constants import in_progress_key_prefix
from redis.exceptions import WatchError

from worker.protocol.redis import worker_pool
from worker.protocol.serialization import deserialize

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


@pytest.fixture
async def pool(proxy: CuttingProxy) -> AsyncIterator[aioredis.Redis]:
    """A worker's pool, connected through the proxy."""
    pool = worker_pool(proxy.url, retry_window=5, job_deserializer=deserialize, queue_name="q")
    yield pool
    await pool.aclose()


@pytest.fixture
async def key(direct: aioredis.Redis) -> AsyncIterator[str]:
    key = f"{in_progress_key_prefix}{uuid.uuid4().hex}"  # as arq names a job's claim
    yield key
    await direct.delete(key)


async def _exec_cut_off(
    pool: aioredis.Redis, proxy: CuttingProxy, key: str, command: str, before: Any = None
) -> list[object]:
    """WATCH ``key``, run ``before``, then MULTI ``command`` EXEC, the reply to EXEC lost on the way."""
    async with pool.pipeline(transaction=True) as pipe:
        await pipe.watch(key)
        assert not await pipe.exists(key)
        if before is not None:
            await before
        pipe.multi()
        if command == "claim":
            pipe.psetex(key, 60_000, b"1")  # arq's claim of a job, as Worker.start_jobs writes it
        else:
            pipe.set(key, b"x")
        proxy.cut_after_exec = True
        result = await pipe.execute()
    assert proxy.cuts == 1
    return result  # type: ignore[no-any-return]


async def test_a_claim_applied_before_the_connection_dropped_counts_as_ours(pool, proxy, direct, key):
    """EXEC applied, reply lost: the claim reads back as this worker's, and execute() succeeds."""
    assert await _exec_cut_off(pool, proxy, key, "claim") == [True]
    assert (await direct.get(key)).startswith(b"1:")  # the claim's own value; arq only checks existence
    assert 0 < await direct.pttl(key) <= 60_000


async def test_a_claim_someone_else_holds_is_still_refused(pool, proxy, direct, key):
    """If another worker's claim is there after the drop, WatchError tells arq the job is taken."""
    with pytest.raises(WatchError):
        await _exec_cut_off(pool, proxy, key, "claim", before=direct.psetex(key, 60_000, b"1"))
    assert proxy.cuts == 1
    assert await direct.get(key) == b"1"


async def test_other_transactions_are_left_as_redis_py_has_them(pool, proxy, direct):
    """A watched transaction that is not a claim still raises WatchError when EXEC's reply is lost."""
    key = f"ew-test:{uuid.uuid4().hex}"
    try:
        with pytest.raises(WatchError):
            await _exec_cut_off(pool, proxy, key, "set")
        assert proxy.cuts == 1
        assert await direct.get(key) == b"x"  # applied all the same: only the reply was lost
    finally:
        await direct.delete(key)
