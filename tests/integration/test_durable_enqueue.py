"""durability="replicated": an enqueue returns once a replica holds the job, or fails; never in between.

Against real servers: the Sentinel group of ``tests/redis_servers.py`` (a primary with two replicas)
and the shared Redis on 6379, which has no replica at all.
"""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from arq.constants import job_key_prefix
from redis_servers import NODE_PASSWORD, SENTINEL_PASSWORD
from support import event, process_env, unique_source

from worker.errors import EnqueueError
from worker.protocol.producer import EventProducer

pytestmark = pytest.mark.integration


async def test_an_acknowledged_job_is_already_on_a_replica(sentinel_group):
    """When emit returns, a replica holds every job it returned (WAIT on the connection that wrote it)."""
    queue = f"q:{uuid.uuid4().hex}"
    async with EventProducer(
        sentinel_group.url(), queue_name=queue, durability="replicated", batch_size=10
    ) as p:
        job_ids = await p.emit([event(n, source=unique_source()) for n in range(100)])
    for job_id in job_ids:
        holders = 0
        for replica in sentinel_group.replicas():
            client = replica.client()
            try:
                holders += client.exists(job_key_prefix + job_id)
            finally:
                client.close()
        assert holders >= 1, f"no replica has {job_id}"


async def test_unconfirmed_jobs_are_never_reported_sent_and_resending_them_queues_once(sentinel_group):
    """No replica answering: EnqueueError after the tries, naming the replicas' silence; the jobs enqueued
    before are listed, the failed one is not. Sent again under its id once a replica is back: queued once."""
    queue = f"q:{uuid.uuid4().hex}"
    source = unique_source()
    options = {"durability": "replicated", "retries": 1, "retry_delay": 0.05, "replica_timeout": 0.3}
    async with EventProducer(sentinel_group.url(), queue_name=queue, batch_size=5, **options) as producer:
        first = await producer.emit([event(n, source=source) for n in range(5)])
        for replica in sentinel_group.replicas():
            replica.kill()
        batch = [event(n, source=source) for n in range(5, 10)]
        with pytest.raises(EnqueueError) as caught:
            await producer.emit([*[event(n, source=source) for n in range(10, 15)], *batch])
        error = caught.value
        assert "NotReplicated: 0 of 1 replica(s) acknowledged the job within 0.3 s" in str(error)
        assert "after 2 tries" in str(error)
        assert error.enqueued == []  # the first job of this emit was not confirmed either
        assert NODE_PASSWORD not in str(error)
        assert SENTINEL_PASSWORD not in str(error)
        on_primary = await producer.redis.zcard(queue)
        assert on_primary == 2  # the first emit's job, and the unconfirmed one, kept as written

        sentinel_group.heal()
        unconfirmed = [event(n, source=source) for n in range(10, 15)]
        assert await producer.emit_batch(unconfirmed, job_id=error.job_id) == error.job_id
        assert await producer.redis.zcard(queue) == 2  # kept, not written twice
        with pytest.raises(ValueError, match="already queued"):
            await producer.emit_batch(batch, job_id=first[0])


def test_enqueue_command_waits_for_replicas_when_told(tmp_path, sentinel_group):
    """`eventworker enqueue --replicas 1` against the group succeeds; EVENTWORKER_ENQUEUE_REPLICAS=1 against a
    Redis without replicas fails in one line and counts nothing as sent."""
    lines = "".join(f'{{"specversion": "1.0", "id": "{n}", "source": "/s", "type": "t"}}\n' for n in range(3))

    def enqueue(redis_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        environment = process_env(REDIS_URL=redis_url, EVENTWORKER_QUEUE_NAME=f"q:{uuid.uuid4().hex}", **env)
        return subprocess.run(
            [sys.executable, "-m", "worker", "enqueue", "-", *args],
            env=environment,
            input=lines,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    done = enqueue(sentinel_group.url(), "--replicas", "1")
    assert done.returncode == 0, done.stderr
    assert "3 events" in done.stdout

    lonely = enqueue(
        "redis://127.0.0.1:6379/15",
        EVENTWORKER_ENQUEUE_REPLICAS="1",
        EVENTWORKER_ENQUEUE_REPLICA_TIMEOUT="0.1",
    )
    assert lonely.returncode == 1
    assert "3 events" not in lonely.stdout  # nothing reported as sent
    last = lonely.stderr.strip().splitlines()[-1]
    assert last.startswith("eventworker: could not enqueue job ")
    assert "NotReplicated: 0 of 1 replica(s)" in last
