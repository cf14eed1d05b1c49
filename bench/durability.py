"""What ``durability="replicated"`` costs: enqueue rate and end-to-end ingestion, against the default.

A Sentinel group of the benchmark's own (a primary, two replicas, three sentinels on loopback, from
``tests/redis_servers.py``) serves both ways in the same run, one after the other in each round: the
producer enqueues every batch while one worker process (following the primary through the Sentinel
URL) stores them. ``primary`` returns once the primary acknowledged a job; ``replicated`` once one of the two
replicas did too (``WAIT 1``). The figures: jobs and events enqueued per second, and events stored per
second end to end.
"""

from __future__ import annotations

import asyncio
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any, Literal

import orjson

from bench.common import RESULTS, RUN_TAG, BenchDatabase, delete_keys, load, median
from bench.events import batches
from bench.ingest import IngestOptions, _wait_empty, _worker, record_batches
from tests.redis_servers import NODE_PASSWORD, SentinelGroup

WAYS: tuple[Literal["primary", "replicated"], ...] = ("primary", "replicated")


async def _one(
    db: BenchDatabase,
    options: IngestOptions,
    direct_url: str,
    queue: str,
    batch_json: list[bytes],
    way: Literal["primary", "replicated"],
    run: int,
    expected: int,
) -> dict[str, float]:
    """Enqueue every batch with ``durability=way`` while the worker on ``queue`` stores them; the timings."""
    from worker.protocol.producer import EventProducer

    await db.empty()
    started = time.time()
    async with EventProducer(options.redis_url, queue_name=queue, durability=way) as producer:
        for n, chunk in enumerate(batch_json):
            await producer.emit_batch(orjson.loads(chunk), job_id=f"{RUN_TAG}-dur-{way}-{run}-{n}")
    enqueued = time.time()
    done = await _wait_empty(direct_url, queue, len(batch_json), 3600)
    stored = await db.count()
    if stored != expected:
        raise AssertionError(f"durability={way}: stored {stored} rows, expected {expected}")
    return {"enqueue_seconds": enqueued - started, "seconds": done - started}


async def _round(
    db: BenchDatabase,
    options: IngestOptions,
    direct_url: str,
    batch_json: list[bytes],
    run: int,
    expected: int,
) -> dict[str, dict[str, float]]:
    """Both ways one after the other, with one worker process (following the primary through Sentinel)."""
    queue = f"{RUN_TAG}:durability:{run}"
    worker = _worker(db, options, queue, RESULTS / "logs" / f"durability-{run}.log")
    try:
        await worker.ready(direct_url, queue)
        return {
            way: await _one(db, options, direct_url, queue, batch_json, way, run, expected) for way in WAYS
        }
    finally:
        worker.stop()
        await delete_keys(direct_url, f"arq:*{RUN_TAG}-dur-*-{run}-*", f"*{queue}*")


async def durability(db: BenchDatabase, options: IngestOptions) -> dict[str, Any]:
    """Both ways, ``options.runs`` rounds, each way once per round on a fresh table; medians."""
    batch_json = batches(options.events, options.batch_size, options.mix, seed=11, prefix=RUN_TAG)
    jobs = len(batch_json)
    expected = sum(len(rows) for rows in record_batches(batch_json))  # the mix repeats some events
    timings: dict[str, list[dict[str, float]]] = {way: [] for way in WAYS}
    with tempfile.TemporaryDirectory() as scratch:
        group = SentinelGroup(Path(scratch))
        await asyncio.to_thread(group.start)
        try:
            direct = f"redis://:{NODE_PASSWORD}@127.0.0.1:{group.primary_port()}/0"
            sentinel = dataclasses.replace(options, redis_url=group.url())
            for run in range(options.runs):
                for way, timing in (await _round(db, sentinel, direct, batch_json, run, expected)).items():
                    timings[way].append(timing)
        finally:
            group.stop()
    result: dict[str, Any] = {"events": options.events, "batch_size": options.batch_size, "jobs": jobs}
    for name, runs in timings.items():
        enqueue = median([t["enqueue_seconds"] for t in runs])
        total = median([t["seconds"] for t in runs])
        result[name] = {
            "enqueue_jobs_per_s": round(jobs / enqueue),
            "enqueue_events_per_s": round(options.events / enqueue),
            "end_to_end_events_per_s": round(options.events / total),
            "runs": [{k: round(v, 3) for k, v in t.items()} for t in runs],
        }
    result["enqueue_ratio"] = round(
        result["replicated"]["enqueue_events_per_s"] / result["primary"]["enqueue_events_per_s"], 3
    )
    result["end_to_end_ratio"] = round(
        result["replicated"]["end_to_end_events_per_s"] / result["primary"]["end_to_end_events_per_s"], 3
    )
    result["load"] = load()
    return result
