"""Soak: steady ingestion for a while; the worker's RSS and its connection count must not grow.

One ``eventworker run`` process with the throughput settings; this process sends events at a
steady ``rate`` (a job every 100 ms) for ``seconds`` and samples, every ``interval`` seconds, the
worker's RSS, the server connections open to the benchmark database and the queue depth. The
verdict compares the last quarter of the samples with the second (after warm-up): RSS within
10 % (and 10 MiB), no more connections than the pool allows, and a queue that keeps up.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from bench.common import (
    RESULTS,
    RUN_TAG,
    BenchDatabase,
    WorkerProcess,
    delete_keys,
    load,
    median,
    redis_client,
    rss_mib,
    worker_env,
)
from bench.events import Mix, generate

#: Pool size plus overflow (the defaults), the most connections one worker may open.
MAX_CONNECTIONS = 10


async def _produce(redis_url: str, queue: str, rate: float, seconds: float, mix: Mix) -> int:
    """Send ``rate`` events a second in jobs every 100 ms for ``seconds``; return how many were sent."""
    from worker.protocol.producer import EventProducer

    per_job = max(1, round(rate / 10))
    inputs = generate(int(rate * seconds) + per_job, mix, seed=99, prefix=f"{RUN_TAG}-soak")
    sent = 0
    async with EventProducer(redis_url, queue_name=queue) as producer:
        start = time.monotonic()
        for n in itertools.count():
            if time.monotonic() - start >= seconds:
                break
            delay = start + n * 0.1 - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            chunk = list(itertools.islice(inputs, per_job))
            await producer.emit_batch(chunk, job_id=f"{RUN_TAG}-soak-{n}")
            sent += len(chunk)
    return sent


def verdict(samples: list[dict[str, float]]) -> dict[str, Any]:
    """Growth between the second and the last quarter of the samples."""
    quarter = max(1, len(samples) // 4)
    early, late = samples[quarter : 2 * quarter] or samples[:1], samples[-quarter:]
    rss_early, rss_late = median(s["rss_mib"] for s in early), median(s["rss_mib"] for s in late)
    connections = max(s["connections"] for s in samples)
    growth = rss_late - rss_early
    return {
        "rss_mib_early": round(rss_early, 1),
        "rss_mib_late": round(rss_late, 1),
        "rss_growth_mib": round(growth, 1),
        "max_connections": int(connections),
        "connections_late": int(median(s["connections"] for s in late)),
        "max_queue_depth": int(max(s["queue"] for s in samples)),
        "no_growth": growth <= max(10.0, 0.10 * rss_early) and connections <= MAX_CONNECTIONS + 1,
    }


async def soak(
    db: BenchDatabase,
    redis_url: str,
    seconds: float,
    rate: float = 2000,
    interval: float = 5.0,
    **settings: Any,
) -> dict[str, Any]:
    """Run the soak and return its samples and verdict."""
    queue = f"{RUN_TAG}:soak"
    env = worker_env(db, redis_url, queue, health_check_interval=1, **settings)
    worker = WorkerProcess(env, RESULTS / "logs" / "soak-worker.log").start()
    client = redis_client(redis_url)
    samples: list[dict[str, float]] = []
    try:
        await worker.ready(redis_url, queue)
        producer = asyncio.create_task(_produce(redis_url, queue, rate, seconds, Mix()))
        started = time.monotonic()
        while not producer.done():
            samples.append(
                {
                    "t": round(time.monotonic() - started, 1),
                    "rss_mib": round(rss_mib(worker.pid), 1),
                    "connections": await db.connections(),
                    "queue": await client.zcard(queue),
                }
            )
            await asyncio.wait({producer}, timeout=interval)
        sent = producer.result()
    finally:
        worker.stop()
        await client.aclose()
        await delete_keys(redis_url, f"arq:*{RUN_TAG}-soak-*", f"*{queue}*")
    return {
        "seconds": seconds,
        "rate_events_per_s": rate,
        "events_sent": sent,
        "interval_s": interval,
        **verdict(samples),
        "samples": samples,
        "load": load(),
    }
