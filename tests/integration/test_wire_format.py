"""The documented wire format: a producer in any language can enqueue with two Redis commands."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
import redis.asyncio as aioredis
from sqlalchemy import select
from support import count, event, results, run_worker

from worker.db.models import DeadLetter, Event

pytestmark = pytest.mark.integration


async def test_a_job_written_with_plain_redis_commands_is_ingested(settings, db):
    """SET arq:job:<id> <JSON> + ZADD <queue> <ms> <id>, as docs/producers.md shows, stores the events."""
    job_id = uuid.uuid4().hex
    now_ms = int(time.time() * 1000)
    payload = {"t": 1, "f": "ingest_events", "a": [[event(1), event(2)]], "k": {}, "et": now_ms}
    client = aioredis.from_url(settings.redis_url)
    try:
        await client.set(f"arq:job:{job_id}", orjson.dumps(payload), px=86_400_000, nx=True)
        await client.zadd(settings.queue_name, {job_id: now_ms})  # arq:queue unless configured
    finally:
        await client.aclose()
    await run_worker(settings)
    assert await results(settings, [job_id]) == [{"accepted": 2, "duplicates": 0, "rejected": 0}]
    assert await count(db, Event) == 2


async def test_numbers_are_stored_as_sent(settings, db):
    """Integers beyond 64 bits are stored exactly; a number no float holds gets its event refused, not nulled.

    Written as raw JSON, as a producer in another language would: 2**64 and a 30-digit integer
    come back from the database as the same integers; the event carrying 1E400 is a dead letter
    naming its data, and the events beside it are stored.
    """
    job_id = uuid.uuid4().hex
    big = {"u64_plus_1": 18446744073709551616, "i64_minus_1": -9223372036854775809, "long": 10**30 + 7}
    body = orjson.dumps([event(1, data={"small": 1})])[:-1]  # the list, left open
    body += b',{"specversion":"1.0","id":"big","source":"/tests","type":"t","data":' + (
        b'{"u64_plus_1":18446744073709551616,"i64_minus_1":-9223372036854775809,"long":1000000000000000000000000000007}}'
    )
    body += b',{"specversion":"1.0","id":"huge","source":"/tests","type":"t","data":{"x":1E400}}]'
    raw = b'{"t":1,"f":"ingest_events","a":[' + body + b'],"k":{},"et":%d}' % int(time.time() * 1000)
    client = aioredis.from_url(settings.redis_url)
    try:
        await client.set(f"arq:job:{job_id}", raw, px=86_400_000, nx=True)
        await client.zadd(settings.queue_name, {job_id: int(time.time() * 1000)})
    finally:
        await client.aclose()
    await run_worker(settings)
    assert await results(settings, [job_id]) == [{"accepted": 2, "duplicates": 0, "rejected": 1}]
    async with db.transaction() as session:
        stored = {e.event_id: e.data for e in (await session.scalars(select(Event))).all()}
        [dead] = (await session.scalars(select(DeadLetter))).all()
    assert stored == {"evt-1": {"small": 1}, "big": big}
    assert all(type(value) is int for value in stored["big"].values())
    assert dead.event_id == "huge"
    assert dead.position == 2
    assert "data" in orjson.dumps(dead.errors).decode()
    assert b"1E400" in dead.raw
