"""Two and three workers on one queue: no event stored twice, no rollup counted twice, each cron tick once."""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from arq.jobs import Job
from arq.utils import to_unix_ms
from arq.worker import Worker
from faults.harness import Ledger, Rounds, Stream, stored_exactly_once
from sqlalchemy import func, select

from worker.config import load_settings
from worker.db.models import Rollup
from worker.main import worker_settings
from worker.protocol.redis import connect
from worker.protocol.serialization import deserialize

pytestmark = pytest.mark.faults

UPDATE = "update_rollups"


async def _rolled_up(db, source: str) -> int:
    async with db.transaction() as session:
        total = await session.scalar(
            select(func.sum(Rollup.count)).where(Rollup.bucket_seconds == 60, Rollup.source == source)
        )
    return int(total or 0)


async def _run_job(redis, queue: str, job_id: str) -> object:
    """Enqueue ``update_rollups`` under ``job_id`` and wait for its result."""
    job = await redis.enqueue_job(UPDATE, _job_id=job_id, _queue_name=queue)
    assert job is not None
    return await Job(job_id, redis, _queue_name=queue, _deserializer=deserialize).result(timeout=60)


def _runs(rig, prefix: str) -> Counter[str]:
    """How many times each ``update_rollups`` job whose id starts with ``prefix`` ran, over every worker."""
    return Counter(
        line["job_id"]
        for line in rig.log_lines("rollups.updated")
        if str(line.get("job_id", "")).startswith(prefix)
    )


async def _tick_from_every_worker(rig, workers: int) -> str:
    """Let ``workers`` arq workers' own cron code enqueue the same tick at once; return its job id.

    The tick is one in the past (second 5 of a minute, as ``update_rollups`` is scheduled), so that
    no one waits a minute: each worker computes the tick's id ``update_rollups:<ms>`` on its own.
    """
    settings = load_settings(database_url=rig.database_url, redis_url=rig.redis_url, queue_name=rig.queue)
    # A minute of its own: arq's job ids are global to a Redis database, whatever the queue.
    minute = datetime(2020, 1, 1, tzinfo=UTC) + timedelta(minutes=random.randrange(10**6))  # all past
    before_tick = minute + timedelta(seconds=4.6)
    pools = [await connect(rig.redis_url) for _ in range(workers)]
    try:
        crons = [Worker(**worker_settings(settings, redis_pool=pool, handle_signals=False)) for pool in pools]
        for cron in crons:
            await cron.run_cron(before_tick, 0.5)  # learns its next tick
        ticks = {job.next_run for cron in crons for job in cron.cron_jobs if job.name == UPDATE}
        assert len(ticks) == 1
        await asyncio.gather(*(cron.run_cron(before_tick, 0.5) for cron in crons))  # all enqueue it
    finally:
        for pool in pools:
            await pool.aclose(close_connection_pool=True)
    [tick] = ticks
    assert tick is not None
    return f"{UPDATE}:{to_unix_ms(tick)}"


def _stored_by(rig) -> Counter[str]:
    """How many batches each worker stored, by worker id."""
    return Counter(line["worker_id"] for line in rig.log_lines("ingest.stored"))


async def _until_every_worker_stored(rig, stream: Stream, workers: int, within: float) -> Counter[str]:
    """Send more batches until each of ``workers`` workers has stored one; fail after ``within`` s."""
    deadline = time.monotonic() + within
    while len(per_worker := _stored_by(rig)) < workers:
        assert time.monotonic() < deadline, f"not every worker took jobs within {within} s: {per_worker}"
        await stream.more(1)
        await asyncio.sleep(0.05)
    return per_worker


@pytest.mark.parametrize("workers", [2, 3])
async def test_workers_share_a_queue(rig, fault_report, soak, workers):
    """Overlapping batches and rollup updates spread over several workers: each event and count once."""
    await rig.start_workers(workers)
    ledger = Ledger()
    db = rig.db()
    started = time.monotonic()
    async with rig.producer() as producer:
        async with Stream(producer, ledger, batch_size=200, pause=0.03, overlap=100) as stream:
            races = Rounds(8, soak)
            for race in races:
                await stream.more(3)
                # A rollup update racing the ingests, on whichever worker takes it (what cron ticks do).
                await producer.redis.enqueue_job(
                    UPDATE, _job_id=f"{UPDATE}:race-{rig.queue}-{race}", _queue_name=rig.queue
                )
            # Which worker polls first is up to the scheduler: on a loaded machine one worker can
            # take every one of the batches above. Keep sending until each has stored some.
            per_worker = await _until_every_worker_stored(rig, stream, workers, within=60)
        storage = await stored_exactly_once(db, ledger, within=60)
        drained = time.monotonic() - started

        tick = await _tick_from_every_worker(rig, workers)
        queued = [job.decode() for job in await producer.redis.zrange(rig.queue, 0, -1)]
        assert queued.count(tick) <= 1
        result = await Job(tick, producer.redis, _queue_name=rig.queue, _deserializer=deserialize).result(
            timeout=60
        )
        assert result is not None
        again = await producer.redis.enqueue_job(UPDATE, _job_id=tick, _queue_name=rig.queue)
        assert again is None, "a tick that already ran could be enqueued again"
        await _run_job(producer.redis, rig.queue, f"{UPDATE}:final-{rig.queue}")
    assert _runs(rig, tick) == Counter({tick: 1}), "the cron tick did not run exactly once"
    assert len(_runs(rig, f"{UPDATE}:race-{rig.queue}-")) == races.done
    verify = rig.cli("rollups", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert await _rolled_up(db, ledger.source) == storage.stored, "rollups do not count each event once"
    fault_report.record(
        f"{workers} workers, one queue, overlapping batches",
        ledger,
        storage,
        recovery_s=drained,
        note=f"{races.done} racing rollup updates, `rollups verify` exit 0, rollups sum = events;"
        f" one cron tick enqueued by {workers} workers ran once;"
        f" batches per worker {sorted(per_worker.values(), reverse=True)}",
    )


@pytest.mark.soak
async def test_real_cron_ticks_run_once_with_three_workers(rig, fault_report, soak):
    """Over real minutes, each update_rollups tick runs exactly once across three workers."""
    await rig.start_workers(3)
    ledger = Ledger()
    db = rig.db()
    started = time.monotonic()
    async with rig.stream(ledger, batch_size=100, pause=0.2, overlap=20):
        await asyncio.sleep(max(soak, 130))  # at least two ticks (second 5 of each minute)
    storage = await stored_exactly_once(db, ledger, within=60)
    await asyncio.sleep(70)  # one more tick after the last event
    ticks = _runs(rig, f"{UPDATE}:")
    assert len(ticks) >= 2, ticks
    assert set(ticks.values()) == {1}, f"a tick ran more than once: {ticks}"
    verify = rig.cli("rollups", "verify")
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert await _rolled_up(db, ledger.source) == storage.stored
    fault_report.record(
        "3 workers, real cron ticks (soak)",
        ledger,
        storage,
        recovery_s=time.monotonic() - started,
        note=f"{len(ticks)} cron ticks, each run once; `rollups verify` exit 0",
    )
