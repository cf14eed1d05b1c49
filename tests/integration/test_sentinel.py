"""REDIS_URL as a Sentinel URL: the producer, the worker's pool and the CLI find the primary through
the sentinels, and find the new one by themselves after a failover.

The servers are real: Debian's redis-server and redis-sentinel, one primary, two replicas and three
sentinels on loopback (``tests/redis_servers.py``), with passwords on the nodes and the sentinels.
The fault drills (tests/faults/test_sentinel_faults.py) do the same under load, with figures.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

import orjson
import pytest
from redis_servers import NODE_PASSWORD, SENTINEL_PASSWORD
from sqlalchemy import func, select
from support import event, process_env, run_worker, unique_source

from worker.config import load_settings
from worker.db.engine import Database
from worker.db.models import Event
from worker.protocol.producer import EventProducer
from worker.protocol.redis import connect

pytestmark = pytest.mark.integration


def cli(settings, *args: str, stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = process_env(
        DATABASE_URL=settings.database_url,
        REDIS_URL=settings.redis_url,
        EVENTWORKER_QUEUE_NAME=settings.queue_name,
        **env,
    )
    return subprocess.run(
        [sys.executable, "-m", "worker", *args],
        env=environment,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def stored(settings, source: str) -> int:
    db = Database.from_settings(settings)
    try:
        async with db.transaction() as session:
            query = select(func.count()).select_from(Event).where(Event.source == source)
            return int(await session.scalar(query) or 0)
    finally:
        await db.dispose()


async def test_producer_worker_and_cli_follow_the_primary_through_a_failover(pg_settings, sentinel_group):
    """Before and after the primary is SIGKILLed: enqueue, run the worker, `enqueue` and `status`.

    Nothing is told where the new primary is: each asks the sentinels again when its connection
    to the old one fails.
    """
    settings = load_settings(
        **{
            **pg_settings.model_dump(),
            "redis_url": sentinel_group.url(),
            "queue_name": f"q:{uuid.uuid4().hex}",
        }
    )
    source = unique_source()
    async with EventProducer(settings.redis_url, queue_name=settings.queue_name, retries=10) as producer:
        await producer.emit([event(n, source=source) for n in range(10)])
        await run_worker(settings)
        assert await stored(settings, source) == 10

        old = sentinel_group.kill_primary()
        killed = time.monotonic()
        await producer.emit([event(n, source=source) for n in range(10, 20)])  # rides out the failover
        followed_after = time.monotonic() - killed
    assert sentinel_group.primary() is not old
    await run_worker(settings)
    assert await stored(settings, source) == 20
    assert followed_after < 15, f"the producer took {followed_after:.1f} s to reach the new primary"

    lines = "".join(orjson.dumps(event(n, source=source)).decode() + "\n" for n in range(20, 25))
    sent = cli(settings, "enqueue", "-", stdin=lines)
    assert sent.returncode == 0, sent.stderr
    status = cli(settings, "status", "--json")
    assert status.returncode in (0, 1), status.stderr  # 1: no live worker, which status reports
    assert orjson.loads(status.stdout)["queue"]["waiting"] == 1  # the job `enqueue` just sent
    for output in (sent.stdout + sent.stderr, status.stdout + status.stderr):
        assert NODE_PASSWORD not in output
        assert SENTINEL_PASSWORD not in output


async def test_a_replica_demoted_under_a_connection_is_left_for_the_new_primary(sentinel_group):
    """SENTINEL FAILOVER leaves the old primary running: a client's open connections to it are dropped
    within a second or so and reopened to the new primary, rather than writing on into a server the
    sentinels are about to turn into a replica (and empty)."""
    redis = await connect(sentinel_group.url(), retry_window=30)
    try:
        await redis.set("ew:test:before", "1")
        old = sentinel_group.failover()
        sentinel_group.wait_promoted(old)
        deadline = time.monotonic() + 10
        while True:
            await redis.set("ew:test:after", "1")
            client = redis.connection_pool._available_connections[-1]  # the connection just used
            if client.port != old.port:
                break
            assert time.monotonic() < deadline, "the client still writes to the old primary"
            await asyncio.sleep(0.1)
        assert client.port == sentinel_group.primary().port
    finally:
        await redis.aclose(close_connection_pool=True)


def test_a_wrong_sentinel_password_fails_in_one_line_without_a_password(pg_settings, sentinel_group):
    """The sentinels refuse the client: `eventworker enqueue` says so in one line and shows no password."""
    wrong = sentinel_group.url().replace(SENTINEL_PASSWORD, "wrongSentinel-pw-9")
    settings = load_settings(**{**pg_settings.model_dump(), "redis_url": wrong})
    done = cli(settings, "enqueue", "-", stdin='{"specversion": "1.0"}\n')
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("eventworker: could not connect to Redis at redis+sentinel://:***@127.0.0.1:")
    assert "No master found" in last
    for secret in (NODE_PASSWORD, SENTINEL_PASSWORD, "wrongSentinel-pw-9"):
        assert secret not in done.stderr
