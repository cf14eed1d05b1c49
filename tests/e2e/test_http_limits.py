"""What keeps producers from filling Redis: rate limits shared by several ``serve`` processes, the queue
depth bound, both with Retry-After; client addresses from X-Forwarded-For only through trusted
proxies; and the CloudEvents webhook handshake for allowed origins only."""

from __future__ import annotations

from typing import Any

import httpx
import orjson
import pytest
import redis.asyncio as aioredis
from conftest import pg_database_url
from httpserve import ServeProcess, producers_file
from support import process_env

pytestmark = pytest.mark.e2e

BATCH = {"content-type": "application/cloudevents-batch+json"}


def batch(n: int, source: str = "/shop/x", start: int = 0) -> bytes:
    return orjson.dumps(
        [{"specversion": "1.0", "id": f"e-{start + i}", "source": source, "type": "t"} for i in range(n)]
    )


async def post(url: str, **options: Any) -> httpx.Response:
    async with httpx.AsyncClient(timeout=30) as client:
        return await client.post(url + "/events", **options)


@pytest.fixture
def env(pg_database, redis_url, queue_name) -> dict[str, str]:
    return process_env(
        DATABASE_URL=pg_database_url(pg_database), REDIS_URL=redis_url, EVENTWORKER_QUEUE_NAME=queue_name
    )


@pytest.fixture
async def clean_rate_keys(redis_url):
    """The rate-limit counters are global to the Redis database: remove this test's afterwards."""
    yield
    client = aioredis.from_url(redis_url)
    try:
        keys = [key async for key in client.scan_iter("eventworker:http-rate:*")]
        if keys:
            await client.delete(*keys)
    finally:
        await client.aclose()


async def test_a_producers_rate_limit_holds_across_two_serve_processes(env, tmp_path, clean_rate_keys):
    """A budget of 100 events: 60 through one process, then 60 through the other: the second gets 429."""
    tokens = producers_file(tmp_path / "producers.json", {"shop-rate": ["/shop/"]})
    limited = {
        **env,
        "EVENTWORKER_PRODUCERS_FILE": str(tmp_path / "producers.json"),
        "EVENTWORKER_HTTP_RATE_LIMIT": "100",
        "EVENTWORKER_HTTP_RATE_WINDOW": "3600",
    }
    first, second = (ServeProcess(limited, tmp_path / f"serve-{n}.log") for n in range(2))
    headers = {**BATCH, "authorization": f"Bearer {tokens['shop-rate']}"}
    try:
        assert (await post(first.url, content=batch(60), headers=headers)).status_code == 202
        refused = await post(second.url, content=batch(60, start=60), headers=headers)
        assert refused.status_code == 429, refused.text
        assert 1 <= int(refused.headers["retry-after"]) <= 3600
        assert refused.json()["retry_after"] == int(refused.headers["retry-after"])
        assert refused.json()["limit"] == 100
        # The refused 60 were given back: 40 more still fit, through either process.
        assert (await post(second.url, content=batch(40, start=120), headers=headers)).status_code == 202
        assert (await post(first.url, content=batch(1, start=160), headers=headers)).status_code == 429
        too_big = await post(first.url, content=batch(101, start=200), headers=headers)
        assert too_big.status_code == 413  # could never pass: smaller batches, not a wait
    finally:
        assert first.stop() == 0
        assert second.stop() == 0


async def test_a_full_queue_refuses_with_503_and_retry_after(env, tmp_path, redis_url, queue_name):
    """At EVENTWORKER_HTTP_MAX_QUEUE_DEPTH jobs waiting, producers are told to come back in 5 s."""
    serve = ServeProcess({**env, "EVENTWORKER_HTTP_MAX_QUEUE_DEPTH": "2"}, tmp_path / "serve.log")
    try:
        for n in range(2):
            assert (await post(serve.url, content=batch(1, start=n), headers=BATCH)).status_code == 202
        full = await post(serve.url, content=batch(1, start=9), headers=BATCH)
        assert full.status_code == 503, full.text
        assert full.headers["retry-after"] == "5"
        assert full.json()["type"] == "urn:eventworker:problem:queue-full"
        client = aioredis.from_url(redis_url)
        try:
            assert await client.zcard(queue_name) == 2
        finally:
            await client.aclose()
    finally:
        assert serve.stop() == 0


async def test_forwarded_for_counts_per_client_only_behind_a_trusted_proxy(env, tmp_path, clean_rate_keys):
    """Without a producers file each client address has a budget; X-Forwarded-For counts from a proxy only."""
    limits = {"EVENTWORKER_HTTP_RATE_LIMIT": "10", "EVENTWORKER_HTTP_RATE_WINDOW": "3600"}
    trusting = ServeProcess(
        {**env, **limits, "EVENTWORKER_HTTP_TRUSTED_PROXIES": "127.0.0.0/8"}, tmp_path / "a.log"
    )
    try:
        for client in ("198.51.100.1", "198.51.100.2"):
            forwarded = {**BATCH, "x-forwarded-for": f"203.0.113.9, {client}"}
            assert (await post(trusting.url, content=batch(10), headers=forwarded)).status_code == 202
            assert (await post(trusting.url, content=batch(1), headers=forwarded)).status_code == 429
    finally:
        assert trusting.stop() == 0
    distrusting = ServeProcess({**env, **limits}, tmp_path / "b.log")
    try:
        spoofed = {**BATCH, "x-forwarded-for": "198.51.100.3"}
        assert (await post(distrusting.url, content=batch(10), headers=spoofed)).status_code == 202
        other = {**BATCH, "x-forwarded-for": "198.51.100.4"}  # ignored: the same address, 127.0.0.1, spent
        assert (await post(distrusting.url, content=batch(1), headers=other)).status_code == 429
    finally:
        assert distrusting.stop() == 0


def test_the_webhook_handshake_answers_allowed_origins_only(env, tmp_path):
    """OPTIONS with WebHook-Request-Origin: the origin echoed when allowed, 403 when not."""
    serve = ServeProcess(
        {**env, "EVENTWORKER_HTTP_WEBHOOK_ORIGINS": "eventgrid.example,router.example"}, tmp_path / "s.log"
    )
    try:
        allowed = httpx.options(
            serve.url + "/events",
            headers={"WebHook-Request-Origin": "eventgrid.example", "WebHook-Request-Rate": "120"},
        )
        assert allowed.status_code == 200
        assert allowed.headers["webhook-allowed-origin"] == "eventgrid.example"
        assert allowed.headers["webhook-allowed-rate"] == str(10_000 * 60)
        assert "POST" in allowed.headers["allow"]
        refused = httpx.options(serve.url + "/events", headers={"WebHook-Request-Origin": "evil.example"})
        assert refused.status_code == 403
        assert "webhook-allowed-origin" not in refused.headers
        assert httpx.options(serve.url + "/events").status_code == 204
    finally:
        assert serve.stop() == 0


async def test_with_enqueue_replicas_a_202_means_a_replica_has_the_job(env, tmp_path, sentinel_group):
    """EVENTWORKER_ENQUEUE_REPLICAS=1: through Sentinel (two replicas) 202, and the job is on a replica;
    on a Redis without replicas the events are refused with 503, never reported as taken."""
    replicated = {**env, "REDIS_URL": sentinel_group.url(), "EVENTWORKER_ENQUEUE_REPLICAS": "1"}
    serve = ServeProcess(replicated, tmp_path / "replicated.log")
    try:
        taken = await post(serve.url, content=batch(3), headers=BATCH)
        assert taken.status_code == 202, taken.text
        job_id = taken.json()["job_id"]
        replicas = [node.client() for node in sentinel_group.replicas()]
        try:  # WAIT counted one before the answer: no polling
            assert any(replica.exists(f"arq:job:{job_id}") for replica in replicas)
        finally:
            for replica in replicas:
                replica.close()
    finally:
        assert serve.stop() == 0
    alone = {**env, "EVENTWORKER_ENQUEUE_REPLICAS": "1", "EVENTWORKER_ENQUEUE_REPLICA_TIMEOUT": "0.1"}
    serve = ServeProcess(alone, tmp_path / "alone.log")
    try:
        refused = await post(serve.url, content=batch(3, start=10), headers=BATCH)
        assert refused.status_code == 503, refused.text
        assert refused.headers["retry-after"] == "5"
        assert "send them again" in refused.json()["detail"]
    finally:
        assert serve.stop() == 0
