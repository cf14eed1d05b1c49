"""``eventworker serve`` as a process: it starts, answers its probes, and stops as a server should.

SIGTERM in the middle of a request lets it finish (the producer gets its 202 and the job is in
Redis), then the process exits 0 with its engine disposed; without a producers file it will not
listen beyond loopback, and says so.
"""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time

import httpx
import pytest
import redis.asyncio as aioredis
from conftest import pg_database_url
from httpserve import ServeProcess
from support import process_env

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(pg_database, redis_url, queue_name) -> dict[str, str]:
    return process_env(
        DATABASE_URL=pg_database_url(pg_database),
        REDIS_URL=redis_url,
        EVENTWORKER_QUEUE_NAME=queue_name,
        EVENTWORKER_SHUTDOWN_WAIT="20",
    )


async def test_sigterm_lets_the_request_in_flight_finish_then_exits_0(env, tmp_path, redis_url, queue_name):
    """A request whose body is still arriving when SIGTERM comes is answered 202; then exit 0."""
    serve = ServeProcess(env, tmp_path / "serve.log")
    try:
        async with httpx.AsyncClient(base_url=serve.url, timeout=30) as client:
            assert (await client.get("/readyz")).json() == {"status": "ready"}
            sent = asyncio.Event()

            async def slow_body():
                body = b'{"specversion":"1.0","id":"slow-1","source":"/slow","type":"t"}'
                for start in range(0, len(body), 16):
                    yield body[start : start + 16]
                    sent.set()
                    await asyncio.sleep(0.5)

            request = asyncio.create_task(
                client.post(
                    "/events", content=slow_body(), headers={"content-type": "application/cloudevents+json"}
                )
            )
            await sent.wait()
            await asyncio.sleep(0.3)
            serve.process.send_signal(signal.SIGTERM)
            started = time.monotonic()
            response = await request
        assert response.status_code == 202, response.text
        assert serve.stop() == 0, serve.output()
        assert time.monotonic() - started < 15
        job_id = response.json()["job_id"]
        client = aioredis.from_url(redis_url)
        try:
            assert await client.zscore(queue_name, job_id) is not None
            await client.delete(f"arq:job:{job_id}")
        finally:
            await client.aclose()
        assert "http.stopped" in serve.output()
    finally:
        serve.kill()


def test_without_a_producers_file_it_listens_on_loopback_only(env, tmp_path):
    """Asked for 0.0.0.0 without a producers file, serve binds 127.0.0.1 and says why."""
    serve = ServeProcess(env, tmp_path / "serve.log", "serve", "--host", "0.0.0.0")
    try:
        assert serve.url.startswith("http://127.0.0.1:")
        assert "no EVENTWORKER_PRODUCERS_FILE" in "".join(serve.lines)
        assert httpx.get(serve.url + "/healthz").json() == {"status": "alive"}
    finally:
        assert serve.stop() == 0, serve.output()


def test_a_bad_producers_file_ends_serve_with_one_line(env, tmp_path):
    """A producers file holding a token instead of its SHA-256 is named, with the problem; exit 2."""
    bad = tmp_path / "producers.json"
    bad.write_text('[{"name": "shop", "token_sha256": "secret-token", "sources": ["/shop/"]}]')
    done = subprocess.run(
        [sys.executable, "-m", "worker", "serve", "--port", "0"],
        env={**env, "EVENTWORKER_PRODUCERS_FILE": str(bad)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"eventworker: configuration error: EVENTWORKER_PRODUCERS_FILE: {bad}: producer 'shop': token_sha256"
        " must be 64 hex digits, the SHA-256 of the token (never the token)"
    ]
    assert "secret-token" not in done.stderr.replace(str(bad), "")
