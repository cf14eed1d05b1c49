"""Against what users would build instead: eventworker end to end beside bare arq and SAQ doing the same job.

Three contenders, each with a database of its own (eventworker's schema, made by its migration:
the peers' INSERT meets the same unique index on (source, event_id) and the same other indexes)
and a worker process of its own, fed the same synthetic events (``bench/events.py``, with their
repeats and invalid inputs) in jobs of the same size by this process:

- **eventworker**: ``eventworker run``, exactly as the ``ingest`` section runs it
  (:func:`bench.ingest.one_end_to_end`), so its figure is that section's;
- **arq + Core**: :mod:`bench.peer_workers.arq_core`, a bare arq worker with JSON jobs and the job
  a competent user writes (:mod:`bench.peer_workers.store`: a pydantic model per event, one Core
  ``INSERT … ON CONFLICT DO NOTHING`` per batch, one ``AsyncSession`` per job), the same
  ``max_jobs`` and ``poll_delay``;
- **SAQ + Core**: :mod:`bench.peer_workers.saq_core`, the same job on SAQ's Redis queue, its
  worker's ``concurrency`` the same ``max_jobs``.

Each run times the first enqueue to the last commit (the queue empty of unfinished jobs), then
counts the rows stored and their distinct identities: a contender that lost or doubled an event
fails the section instead of giving a figure. The contenders run in turn within each round, the
order turned by one each round; each figure is the median over the rounds, and the ratio is
eventworker's events/s over the faster peer's (target: 1.75x). The worker's CPU per event comes
from ``/proc/<pid>/stat``: what it used from the first enqueue to the end of the run (its
start-up, read once it was polling its queue, left out), over the events sent; the database's
CPU per event is its backends' (:class:`ServerCPU`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any

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
    redis_client,
    rss_mib,
)
from bench.events import batches
from bench.ingest import IngestOptions, _wait_empty, one_end_to_end, record_batches

CONTENDERS = ("eventworker", "arq + Core", "SAQ + Core")
PEERS = CONTENDERS[1:]
#: eventworker's events/s over the faster peer's, at least.
TARGET = 1.75
#: Each peer: its worker's module (``python -m``) and how its jobs are named.
_COMMANDS = {
    "arq + Core": ("-m", "bench.peer_workers.arq_core"),
    "SAQ + Core": ("-m", "saq", "bench.peer_workers.saq_core.settings"),
}


class ServerCPU:
    """CPU used by the PostgreSQL backends serving one database, sampled from ``/proc`` while it runs.

    Each backend's CPU from when it was first seen (every ``interval`` s, through
    ``pg_stat_activity``) to when it was last seen: a backend that comes and goes between two
    samples is missed, the rest of the server (WAL writer, checkpointer) is not counted.
    """

    def __init__(self, db: BenchDatabase, interval: float = 0.2) -> None:
        self.db, self.interval = db, interval
        self._first: dict[int, float] = {}
        self._last: dict[int, float] = {}
        self._task: asyncio.Task[None] | None = None

    async def _sample(self) -> None:
        import asyncpg

        connection = await asyncpg.connect(self.db.admin_url)
        try:
            while True:
                query = "SELECT pid FROM pg_stat_activity WHERE datname = $1"
                for record in await connection.fetch(query, self.db.name):
                    pid = int(record["pid"])
                    used = cpu_seconds(pid)
                    if used:
                        self._first.setdefault(pid, used)
                        self._last[pid] = used
                await asyncio.sleep(self.interval)
        finally:
            await connection.close()

    def start(self) -> ServerCPU:
        """Start sampling."""
        self._task = asyncio.create_task(self._sample())
        return self

    async def stop(self) -> float:
        """Stop sampling; the backends' CPU seconds."""
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return sum(self._last[pid] - self._first[pid] for pid in self._last)


def _order(run: int) -> list[str]:
    """The contenders in the order of round ``run``: turned by one each round."""
    shift = run % len(CONTENDERS)
    return [*CONTENDERS[shift:], *CONTENDERS[:shift]]


async def identities(db: BenchDatabase) -> tuple[int, int]:
    """Rows in ``events`` and distinct (source, event_id) among them."""
    import asyncpg

    connection = await asyncpg.connect(db.dsn)
    try:
        row = await connection.fetchrow("SELECT count(*), count(DISTINCT (source, event_id)) FROM events")
        return int(row[0]), int(row[1])
    finally:
        await connection.close()


async def _wait_key(redis_url: str, key: str, worker: WorkerProcess, wait_s: float = 60.0) -> None:
    """Wait until the worker wrote ``key`` (it is polling its queue)."""
    client = redis_client(redis_url)
    deadline = time.monotonic() + wait_s
    try:
        while not await client.exists(key):
            assert worker.process is not None
            if worker.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"worker did not start; see {worker.log_path}")
            await asyncio.sleep(0.05)
    finally:
        await client.aclose()


async def _enqueue_arq(redis_url: str, queue: str, batch_json: list[bytes], prefix: str) -> None:
    from arq.connections import RedisSettings, create_pool

    from bench.peer_workers.arq_core import JOB, dumps

    pool = await create_pool(RedisSettings.from_dsn(redis_url), job_serializer=dumps)
    try:
        for n, chunk in enumerate(batch_json):
            await pool.enqueue_job(JOB, orjson.loads(chunk), _job_id=f"{prefix}-{n}", _queue_name=queue)
    finally:
        await pool.aclose()


async def _enqueue_saq(redis_url: str, queue: str, batch_json: list[bytes], prefix: str) -> None:
    from bench.peer_workers.saq_core import JOB
    from bench.peer_workers.saq_core import queue as saq_queue

    producer = saq_queue(redis_url, queue)
    await producer.connect()
    try:
        for n, chunk in enumerate(batch_json):
            # ttl -1: the job is deleted once done, as arq's keep_result 0 (1,000 kept jobs would hold
            # every batch's events in Redis for SAQ's default 10 minutes)
            await producer.enqueue(JOB, raw_events=orjson.loads(chunk), key=f"{prefix}-{n}", ttl=-1)
    finally:
        await producer.disconnect()


async def _wait_saq_done(redis_url: str, queue: str, jobs: int, wait_s: float) -> float:
    """Poll until SAQ's ``incomplete`` set of ``queue`` is empty; the time.time() it was first seen so."""
    client = redis_client(redis_url)
    deadline = time.monotonic() + wait_s
    key = f"saq:{queue}:incomplete"
    try:
        while await client.zcard(key):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{queue}: {await client.zcard(key)} of {jobs} jobs left after {wait_s}s")
            await asyncio.sleep(0.005)
        return time.time()
    finally:
        await client.aclose()


async def one_peer(
    db: BenchDatabase, options: IngestOptions, peer: str, batch_json: list[bytes], run: int
) -> dict[str, Any]:
    """One timed run of a peer: its worker started, every batch enqueued, the queue drained."""
    slug = peer.split()[0].lower()
    queue = f"{RUN_TAG}:peers:{slug}:{run}"
    prefix = f"{RUN_TAG}-peers-{slug}-{run}"
    env = {
        "DATABASE_URL": db.url,
        "REDIS_URL": options.redis_url,
        "PEER_QUEUE": queue,
        "PEER_MAX_JOBS": str(options.max_jobs),
        "PEER_POLL_DELAY": str(options.poll_delay),
    }
    log = RESULTS / "logs" / f"peers-{slug}-{run}.log"
    worker = WorkerProcess(env, log, _COMMANDS[peer]).start()
    peak_rss = 0.0
    try:
        ready_key = f"{queue}:health-check" if slug == "arq" else f"saq:{queue}:stats"
        await _wait_key(options.redis_url, ready_key, worker)
        startup_cpu = cpu_seconds(worker.pid)
        started = time.time()
        if slug == "arq":
            await _enqueue_arq(options.redis_url, queue, batch_json, prefix)
            done_wait = _wait_empty(options.redis_url, queue, len(batch_json), 3600)
        else:
            await _enqueue_saq(options.redis_url, queue, batch_json, prefix)
            done_wait = _wait_saq_done(options.redis_url, queue, len(batch_json), 3600)
        enqueued = time.time()
        done_task = asyncio.create_task(done_wait)
        while not done_task.done():
            peak_rss = max(peak_rss, rss_mib(worker.pid))
            await asyncio.wait({done_task}, timeout=0.5)
        done = done_task.result()
        cpu = cpu_seconds(worker.pid)
    finally:
        status = worker.stop()
        await delete_keys(options.redis_url, f"arq:*{prefix}-*", f"*{queue}*")
    stored, distinct = await identities(db)
    return {
        "seconds": done - started,
        "enqueue_seconds": enqueued - started,
        "stored": stored,
        "distinct": distinct,
        "worker_exit": status,
        "worker_peak_rss_mib": round(peak_rss, 1),
        "worker_cpu_us_per_event": round(cpu / options.events * 1e6, 1),
        "worker_cpu_s": round(cpu, 3),
        "worker_startup_cpu_s": round(startup_cpu, 3),
    }


async def _one(
    databases: dict[str, BenchDatabase],
    options: IngestOptions,
    contender: str,
    batch_json: list[bytes],
    run: int,
) -> dict[str, Any]:
    db = databases[contender]
    await db.empty()
    server = ServerCPU(db).start()
    try:
        if contender == "eventworker":
            outcome = await one_end_to_end(db, options, batch_json, f"peers-{run}")
            outcome["distinct"] = (await identities(db))[1]
        else:
            outcome = await one_peer(db, options, contender, batch_json, run)
    finally:
        server_cpu = await server.stop()
    outcome["server_cpu_s"] = round(server_cpu, 3)
    return outcome


async def peers(databases: dict[str, BenchDatabase], options: IngestOptions) -> dict[str, Any]:
    """``runs`` rounds of the three contenders in turn; medians, CPU per event and the ratio."""
    batch_json = batches(options.events, options.batch_size, options.mix, seed=23, prefix=RUN_TAG)
    expected = sum(len(r) for r in record_batches(batch_json))
    rates: dict[str, list[float]] = {c: [] for c in CONTENDERS}
    details: dict[str, list[dict[str, Any]]] = {c: [] for c in CONTENDERS}
    for run in range(options.runs):
        for contender in _order(run):
            outcome = await _one(databases, options, contender, batch_json, run)
            if outcome["stored"] != expected or outcome["distinct"] != expected:
                raise AssertionError(
                    f"{contender}: stored {outcome['stored']} rows ({outcome['distinct']} identities),"
                    f" expected {expected}: a failed run, not a figure"
                )
            rates[contender].append(options.events / outcome["seconds"])
            details[contender].append(outcome)
    medians = {c: median(v) for c, v in rates.items()}
    faster = max(PEERS, key=lambda p: medians[p])
    per_round = [rates["eventworker"][n] / max(rates[p][n] for p in PEERS) for n in range(options.runs)]
    return {
        "events": options.events,
        "stored_rows": expected,
        "batch_size": options.batch_size,
        "max_jobs": options.max_jobs,
        "poll_delay": options.poll_delay,
        "runs": options.runs,
        "events_per_s": {c: round(v) for c, v in medians.items()},
        # From the first enqueue to the end of the run: start-up left out (eventworker's is the longest).
        "worker_cpu_us_per_event": {
            c: round(
                median(
                    (d["worker_cpu_s"] - d["worker_startup_cpu_s"]) / options.events * 1e6 for d in details[c]
                ),
                1,
            )
            for c in CONTENDERS
        },
        "worker_startup_cpu_s": {
            c: median(d["worker_startup_cpu_s"] for d in details[c]) for c in CONTENDERS
        },
        # The database's backends over the whole run (the worker's start-up and the final count included).
        "server_cpu_us_per_event": {
            c: round(median(d["server_cpu_s"] / options.events * 1e6 for d in details[c]), 1)
            for c in CONTENDERS
        },
        "worker_peak_rss_mib": {c: max(d["worker_peak_rss_mib"] for d in details[c]) for c in CONTENDERS},
        "faster_peer": faster,
        "ratio": round(medians["eventworker"] / medians[faster], 3),
        "ratio_per_round_median": round(median(per_round), 3),
        "target": TARGET,
        "met": medians["eventworker"] / medians[faster] >= TARGET,
        "runs_events_per_s": {c: [round(v) for v in values] for c, values in rates.items()},
        "details": details,
        "load": load(),
    }
