"""Ingestion benchmarks: end to end through Redis and a worker process, and the ingest job alone.

**End to end** (:func:`end_to_end`): one ``eventworker run`` process; this process enqueues the
synthetic events in jobs of ``batch_size`` as fast as it can (a producer's work: JSON and two
Redis round trips a job) and times first enqueue to last commit (the queue is empty only once the
last job's transaction committed and arq removed it). Baselines in the same run, on the same
emptied table: the stored rows through asyncpg ``copy_records_to_table`` and ``executemany``
INSERT, one batch per transaction as the worker commits them.

**Latency** (:func:`one_latency`): the producer flushes every 50 ms at a steady rate (20 jobs/s,
as many events each as the rate needs); each job's latency is arq's finish time (after the
commit) minus the moment its enqueue began, counted once per event. Time an event spends in
the producer's buffer before that (up to 50 ms) is the application's, not counted.

**The job alone** (:func:`job_parts`): in this process, no Redis: each part of ``ingest_events``
timed per batch (read the job, validate and build rows, dead-letter rows, open the transaction, insert the
events, keep the dead letters, commit), then the whole job, beside COPY of the batch's rows.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
import orjson

from bench.common import (
    RESULTS,
    RUN_TAG,
    BenchDatabase,
    WorkerProcess,
    cpu_seconds,
    delete_keys,
    load,
    median,
    percentile,
    redis_client,
    rss_mib,
    worker_env,
)
from bench.events import RECORD_COLUMNS, Mix, batches, stored_records


@dataclass(frozen=True)
class IngestOptions:
    """How to run the ingestion benchmarks."""

    events: int = 1_000_000
    batch_size: int = 1000
    runs: int = 3
    mix: Mix = field(default_factory=Mix)
    max_jobs: int = 10  # the worker's default; fewer left the database idle here (docs/performance.md)
    poll_delay: float = 0.05
    keep_result: float = 3600.0
    latency_seconds: float = 10.0
    redis_url: str = "redis://127.0.0.1:6379/13"


# -- raw-driver baselines ------------------------------------------------------------------------

_INSERT = (
    f"INSERT INTO events ({', '.join(RECORD_COLUMNS)})"
    f" VALUES ({', '.join(f'${n}' for n in range(1, len(RECORD_COLUMNS) + 1))})"
)


async def raw_copy(dsn: str, record_batches: Sequence[list[tuple[Any, ...]]]) -> float:
    """Seconds for asyncpg ``copy_records_to_table`` of each batch straight into ``events``."""
    connection = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        for records in record_batches:
            await connection.copy_records_to_table("events", records=records, columns=RECORD_COLUMNS)
        return time.perf_counter() - started
    finally:
        await connection.close()


async def raw_executemany(dsn: str, record_batches: Sequence[list[tuple[Any, ...]]]) -> float:
    """Seconds for asyncpg ``executemany`` of a plain INSERT, one transaction per batch."""
    connection = await asyncpg.connect(dsn)
    try:
        started = time.perf_counter()
        for records in record_batches:
            async with connection.transaction():
                await connection.executemany(_INSERT, records)
        return time.perf_counter() - started
    finally:
        await connection.close()


def record_batches(batch_json: list[bytes]) -> list[list[tuple[Any, ...]]]:
    """The rows eventworker stores for these batches, per batch."""
    return stored_records(batch_json, datetime.now(UTC))


# -- end to end through a worker process ---------------------------------------------------------


async def _wait_empty(redis_url: str, queue: str, jobs: int, wait_s: float) -> float:
    """Poll until ``queue`` is empty (every job finished); return the time.time() it was first seen so."""
    client = redis_client(redis_url)
    deadline = time.monotonic() + wait_s
    try:
        while await client.zcard(queue):
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{queue}: {await client.zcard(queue)} of {jobs} jobs left after {wait_s}s"
                )
            await asyncio.sleep(0.005)
        return time.time()
    finally:
        await client.aclose()


def _worker(
    db: BenchDatabase,
    options: IngestOptions,
    queue: str,
    log: Path,
    database_url: str | None = None,
    command: Sequence[str] | None = None,
    extra_env: dict[str, str] | None = None,
    **settings: Any,
) -> WorkerProcess:
    env = worker_env(
        db,
        options.redis_url,
        queue,
        max_jobs=options.max_jobs,
        poll_delay=options.poll_delay,
        keep_result=options.keep_result,
        health_check_interval=1,
        **settings,
    )
    if database_url is not None:  # the same database by another way (through PgBouncer)
        env["DATABASE_URL"] = database_url
    env.update(extra_env or {})
    if command is not None:  # another entry to the same worker (bench/tracing.py's)
        return WorkerProcess(env, log, command).start()
    return WorkerProcess(env, log).start()


async def one_end_to_end(
    db: BenchDatabase,
    options: IngestOptions,
    batch_json: list[bytes],
    run: int | str,
    database_url: str | None = None,
    command: Sequence[str] | None = None,
    extra_env: dict[str, str] | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """One timed run: enqueue every batch, wait for the worker to finish them, check what was stored.

    ``database_url`` and ``settings`` (as ``EVENTWORKER_*``) change how the worker reaches ``db``;
    ``command`` and ``extra_env`` how the worker process is started (the tracing section's ways).
    """
    from worker.protocol.producer import EventProducer

    queue = f"{RUN_TAG}:ingest:{run}"
    log = RESULTS / "logs" / f"ingest-worker-{run}.log"
    worker = _worker(db, options, queue, log, database_url, command, extra_env, **settings)
    peak_rss = 0.0
    try:
        await worker.ready(options.redis_url, queue)
        startup_cpu = cpu_seconds(worker.pid)
        started = time.time()
        async with EventProducer(options.redis_url, queue_name=queue) as producer:
            for n, chunk in enumerate(batch_json):
                await producer.emit_batch(orjson.loads(chunk), job_id=f"{RUN_TAG}-e2e-{run}-{n}")
        enqueued = time.time()
        done_task = asyncio.create_task(_wait_empty(options.redis_url, queue, len(batch_json), 3600))
        while not done_task.done():
            peak_rss = max(peak_rss, rss_mib(worker.pid))
            await asyncio.wait({done_task}, timeout=0.5)
        done = done_task.result()
        cpu = cpu_seconds(worker.pid)
    finally:
        status = worker.stop()
        await delete_keys(options.redis_url, f"arq:*{RUN_TAG}-e2e-{run}-*", f"*{queue}*")
    stored = await db.count()
    return {
        "seconds": done - started,
        "enqueue_seconds": enqueued - started,
        "stored": stored,
        "worker_exit": status,
        "worker_peak_rss_mib": round(peak_rss, 1),
        "worker_cpu_us_per_event": round(cpu / len(batch_json) / options.batch_size * 1e6, 1),
        "worker_cpu_s": round(cpu, 3),
        "worker_startup_cpu_s": round(startup_cpu, 3),
    }


async def end_to_end(db: BenchDatabase, options: IngestOptions) -> dict[str, Any]:
    """Throughput: eventworker end to end against raw COPY and executemany, ``runs`` times each way."""
    batch_json = batches(options.events, options.batch_size, options.mix, seed=7, prefix=RUN_TAG)
    rows = record_batches(batch_json)
    expected = sum(len(r) for r in rows)
    runs: dict[str, list[float]] = {"eventworker": [], "raw copy": [], "raw executemany": []}
    details = []
    for run in range(options.runs):
        await db.empty()
        outcome = await one_end_to_end(db, options, batch_json, run)
        if outcome["stored"] != expected:
            raise AssertionError(f"end to end stored {outcome['stored']} rows, expected {expected}")
        runs["eventworker"].append(outcome["seconds"])
        details.append(outcome)
        await db.empty()
        runs["raw copy"].append(await raw_copy(db.dsn, rows))
        await db.empty()
        runs["raw executemany"].append(await raw_executemany(db.dsn, rows))
    seconds = {way: median(values) for way, values in runs.items()}
    return {
        "events": options.events,
        "stored_rows": expected,
        "batch_size": options.batch_size,
        "max_jobs": options.max_jobs,
        "poll_delay": options.poll_delay,
        "median_seconds": {way: round(s, 3) for way, s in seconds.items()},
        "events_per_s": round(options.events / seconds["eventworker"]),
        "rows_per_s": {way: round(expected / s) for way, s in seconds.items()},
        "ratio_to_copy": round(seconds["raw copy"] / seconds["eventworker"], 3),
        "ratio_to_executemany": round(seconds["raw executemany"] / seconds["eventworker"], 3),
        "runs_seconds": {way: [round(v, 3) for v in values] for way, values in runs.items()},
        "eventworker_runs": details,
        "load": load(),
    }


# -- through a transaction pooler ----------------------------------------------------------------


async def through_pooler(
    db: BenchDatabase, options: IngestOptions, pooled_url: str, pool: int
) -> dict[str, Any]:
    """End to end through PgBouncer in transaction mode (``pooled_url``, with
    ``EVENTWORKER_DB_POOLER=transaction``) against the same worker connecting directly, ``runs`` times
    each way, alternating which goes first. The ratio is the median over runs of direct's time over the
    pooler's (above 1: the pooler was faster)."""
    batch_json = batches(options.events, options.batch_size, options.mix, seed=13, prefix=RUN_TAG)
    expected = sum(len(r) for r in record_batches(batch_json))
    runs: dict[str, list[float]] = {"direct": [], "pgbouncer": []}
    details: dict[str, list[dict[str, Any]]] = {"direct": [], "pgbouncer": []}
    for run in range(options.runs):
        order = ["direct", "pgbouncer"] if run % 2 == 0 else ["pgbouncer", "direct"]
        for way in order:
            await db.empty()
            pooled: dict[str, Any] = (
                {"database_url": pooled_url, "db_pooler": "transaction"} if way == "pgbouncer" else {}
            )
            outcome = await one_end_to_end(db, options, batch_json, f"{way}-{run}", **pooled)
            if outcome["stored"] != expected:
                raise AssertionError(f"{way}: stored {outcome['stored']} rows, expected {expected}")
            runs[way].append(outcome["seconds"])
            details[way].append(outcome)
    seconds = {way: median(values) for way, values in runs.items()}
    return {
        "events": options.events,
        "stored_rows": expected,
        "batch_size": options.batch_size,
        "max_jobs": options.max_jobs,
        "server_connections": pool,
        "median_seconds": {way: round(s, 3) for way, s in seconds.items()},
        "events_per_s": {way: round(options.events / s) for way, s in seconds.items()},
        # Each run's two ways ran one after the other: their ratio is spared the machine's drift.
        "ratio_to_direct": round(
            median(d / p for d, p in zip(runs["direct"], runs["pgbouncer"], strict=True)), 3
        ),
        "ratio_of_medians": round(seconds["direct"] / seconds["pgbouncer"], 3),
        "runs_seconds": {way: [round(v, 3) for v in values] for way, values in runs.items()},
        "runs": details,
        "load": load(),
    }


# -- latency at a steady rate --------------------------------------------------------------------

#: The latency producer flushes what it has every 50 ms, as one job.
FLUSH_S = 0.05


async def _results(redis_url: str, job_ids: list[str]) -> list[dict[str, Any]]:
    from worker.protocol.serialization import deserialize

    client = redis_client(redis_url)
    try:
        out = []
        for start in range(0, len(job_ids), 500):
            keys = [f"arq:result:{j}" for j in job_ids[start : start + 500]]
            out += [deserialize(raw) for raw in await client.mget(keys) if raw is not None]
        return out
    finally:
        await client.aclose()


async def one_latency(db: BenchDatabase, options: IngestOptions, rate: float, label: str) -> dict[str, Any]:
    """Events at ``rate`` per second for ``latency_seconds``; percentiles of enqueue-to-commit latency."""
    from worker.protocol.producer import EventProducer

    per_job = max(1, round(rate * FLUSH_S))
    interval = per_job / rate
    jobs = max(1, int(options.latency_seconds / interval))
    prefix = f"{RUN_TAG}-lat-{label}-{uuid.uuid4().hex[:6]}"
    batch_json = batches(jobs * per_job, per_job, options.mix, seed=11, prefix=prefix)
    queue = f"{RUN_TAG}:latency:{label}"
    # From an empty table, as each throughput run: the rows a baseline left behind (stored behind the
    # worker's back) would otherwise be rolled up by the cron tick in the middle of the run (936,593
    # rows in 5.5 s of database time in one suite run, which took two jobs to 113-125 ms).
    await db.empty()
    worker = _worker(db, options, queue, RESULTS / "logs" / f"latency-worker-{label}.log")
    sent: dict[str, float] = {}
    try:
        await worker.ready(options.redis_url, queue)
        async with EventProducer(options.redis_url, queue_name=queue) as producer:
            start = time.monotonic()
            for n, chunk in enumerate(batch_json):
                delay = start + n * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                job_id = f"{prefix}-{n}"
                sent[job_id] = time.time()
                await producer.emit_batch(orjson.loads(chunk), job_id=job_id)
            behind = time.monotonic() - start - len(batch_json) * interval
        await _wait_empty(options.redis_url, queue, len(batch_json), 600)
        results = await _results(options.redis_url, list(sent))
    finally:
        worker.stop()
        await delete_keys(options.redis_url, f"arq:*{prefix}-*", f"*{queue}*")
    if len(results) != len(sent) or not all(r.get("s") for r in results):
        raise AssertionError(f"latency {label}: {len(results)} of {len(sent)} jobs succeeded")
    latencies = [r["ft"] - sent[r["id"]] * 1000 for r in results]
    return {
        "rate_events_per_s": round(rate),
        "events_per_job": per_job,
        "jobs": len(sent),
        "producer_fell_behind_s": round(max(0.0, behind), 3),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "max_ms": round(max(latencies), 1),
        "load": load(),
    }


# -- the ingest job alone, part by part ----------------------------------------------------------


async def _timed_job(db: Any, settings: Any, job: bytes, job_id: str) -> dict[str, tuple[float, float]]:
    """One batch through the ingest job's steps, each timed: (wall, this process's CPU) in milliseconds."""
    from worker.constants import INGEST_JOB
    from worker.db.sql import statements
    from worker.domain.wire import batch_rows
    from worker.protocol.serialization import job_deserializer

    times: dict[str, tuple[float, float]] = {}
    clock, cpu = time.perf_counter(), time.process_time()

    def lap(name: str) -> None:
        nonlocal clock, cpu
        now, cpu_now = time.perf_counter(), time.process_time()
        times[name] = ((now - clock) * 1000, (cpu_now - cpu) * 1000)
        clock, cpu = now, cpu_now

    events = job_deserializer({INGEST_JOB}, raw_argument_jobs={INGEST_JOB})(job)["a"][0]
    lap("read the job (its events stay JSON text)")
    now = datetime.now(UTC)
    batch = batch_rows(events, settings.max_event_bytes, now, job_id)
    rows = batch.rows
    lap("validate, dedup in the batch, build rows")
    dead = [statements.dead_letter_row(r, r.position, job_id, INGEST_JOB, now) for r in batch.rejected]
    lap("dead-letter rows")
    async with db.transaction(INGEST_JOB) as session:
        await session.connection()
        lap("open transaction")
        await statements.insert_events(session, rows)
        lap("insert events (COPY + INSERT…SELECT, db dedup)")
        await statements.insert_dead_letters(session, dead)
        lap("insert dead letters")
    lap("commit")
    return times


async def job_parts(db: BenchDatabase, options: IngestOptions, batches_n: int = 0) -> dict[str, Any]:
    """The ingest job's time per batch, part by part, and the whole job, beside raw COPY of its rows."""
    from jobs.ingest import ingest_events
    from worker.config import load_settings
    from worker.constants import INGEST_JOB
    from worker.db.engine import Database
    from worker.lifecycle import settle_collector
    from worker.logging import configure_logging
    from worker.protocol.serialization import job_deserializer, serialize

    count = batches_n or max(4, min(60, options.events // options.batch_size))
    batch_json = batches(count * options.batch_size, options.batch_size, options.mix, seed=3, prefix=RUN_TAG)
    jobs = [
        serialize({"t": 1, "f": INGEST_JOB, "a": [orjson.loads(chunk)], "k": {}, "et": 0})
        for chunk in batch_json
    ]
    settings = load_settings(database_url=db.url, log_level="WARNING")
    configure_logging(settings.log_level, "json", settings.secrets())
    database = Database.from_settings(settings)
    settle_collector()  # as a worker does once started
    parts: list[dict[str, tuple[float, float]]] = []
    whole: list[float] = []
    try:
        for n, job in enumerate(jobs):
            parts.append(await _timed_job(database, settings, job, f"parts-{n}"))
        await db.empty()
        decode = job_deserializer({INGEST_JOB}, raw_argument_jobs={INGEST_JOB})
        ctx: dict[str, Any] = {"settings": settings, "db": database, "redis": None, "job_try": 1}
        for n, job in enumerate(jobs):
            started = time.perf_counter()
            await ingest_events(cast(Any, ctx | {"job_id": f"whole-{n}"}), decode(job)["a"][0])
            whole.append((time.perf_counter() - started) * 1000)
    finally:
        await database.dispose()
    await db.empty()
    rows = record_batches(batch_json)
    connection = await asyncpg.connect(db.dsn)
    copy_ms = []
    try:
        for records in rows:
            started = time.perf_counter()
            await connection.copy_records_to_table("events", records=records, columns=RECORD_COLUMNS)
            copy_ms.append((time.perf_counter() - started) * 1000)
    finally:
        await connection.close()
    await db.empty()
    medians = {name: round(median(p[name][0] for p in parts), 3) for name in parts[0]}
    cpu = {name: round(median(p[name][1] for p in parts), 3) for name in parts[0]}
    return {
        "batch_size": options.batch_size,
        "batches": count,
        "median_ms": medians,
        "median_cpu_ms": cpu,
        "sum_of_parts_ms": round(sum(medians.values()), 3),
        "whole_job_ms": round(median(whole), 3),
        "raw_copy_ms": round(median(copy_ms), 3),
        "load": load(),
    }
