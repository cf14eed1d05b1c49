"""The documented wire format: a producer in any language can enqueue with two Redis commands."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
import redis.asyncio as aioredis
from support import count, event, results, run_worker

from worker.db.models import Event

pytestmark = pytest.mark.integration


async def test_a_job_written_with_plain_redis_commands_is_ingested(settings, db):
    """SET arq:job:<id> <JSON> + ZADD <queue> <ms> <id>, exactly as the README shows, stores the events."""
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
