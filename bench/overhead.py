"""Job overhead: no-op jobs through an eventworker worker against bare arq no-op jobs, jobs per second.

Both run in a process of their own (``python -m bench.overhead --child eventworker|bare``),
in burst mode over a queue filled beforehand, with the same arq settings (``max_jobs``,
``poll_delay``, ``keep_result``, job timeout, tries, health check interval) and arq's INFO
logging on:

- **eventworker**: the worker exactly as ``eventworker run`` builds it (lifecycle hooks, JSON
  jobs, the monitor, metrics), plus a ``noop`` job wrapped in :func:`worker.runtime.jobrunner.job` that
  opens a transaction through ``ctx["db"].transaction()`` and does nothing in it;
- **bare arq**: ``arq.worker.Worker`` with a bare ``async def noop(ctx)``, pickle, no hooks.

Jobs per second are counted from arq's own records: jobs over the time from the first job's
start to the last job's finish (start-up is not counted).
"""

from __future__ import annotations

import argparse
import asyncio
import logging.config
import pickle
import sys
import time
from typing import Any, cast

from bench.common import (
    RESULTS,
    RUN_TAG,
    BenchDatabase,
    WorkerProcess,
    delete_keys,
    load,
    median,
    redis_client,
    worker_env,
)

WAYS = ("eventworker", "bare arq")


def eventworker_options(queue: str) -> dict[str, Any]:
    """The worker ``eventworker run`` starts (settings from the environment), with a no-op job added."""
    from arq.worker import func

    from worker.constants import INGEST_JOB
    from worker.main import settings_from_environment
    from worker.protocol.serialization import job_deserializer
    from worker.runtime.jobrunner import job

    async def noop(ctx: Any) -> None:
        async with ctx["db"].transaction("noop"):
            pass

    options = settings_from_environment()
    known = options["ctx"]["known_jobs"] | {"noop"}
    options["ctx"]["known_jobs"] = known
    options["functions"] = [*options["functions"], func(cast(Any, job(noop)), name="noop")]
    options["job_deserializer"] = job_deserializer(known, raw_argument_jobs={INGEST_JOB})
    return options


def bare_options(queue: str, redis_url: str, args: argparse.Namespace) -> dict[str, Any]:
    """A bare arq worker with the same arq settings; arq's default log configuration, as its CLI sets it."""
    from arq.connections import RedisSettings
    from arq.logs import default_log_config
    from arq.worker import func

    async def noop(ctx: Any) -> None:
        return None

    logging.config.dictConfig(default_log_config(verbose=False))
    return {
        "functions": [func(noop, name="noop")],
        "redis_settings": RedisSettings.from_dsn(redis_url),
        "queue_name": queue,
        "max_jobs": args.max_jobs,
        "poll_delay": args.poll_delay,
        "keep_result": args.keep_result,
        "job_timeout": 65,
        "max_tries": 7,
        "health_check_interval": 10,
    }


def child(args: argparse.Namespace) -> None:
    """Run one worker in burst mode until its queue is empty."""
    from arq.worker import Worker

    if args.child == "eventworker":
        options = eventworker_options(args.queue)
    else:
        options = bare_options(args.queue, args.redis_url, args)
    worker = Worker(**{**options, "burst": True, "handle_signals": False})
    worker.run()


async def _fill(redis_url: str, queue: str, way: str, prefix: str, jobs: int) -> None:
    from arq.connections import ArqRedis, RedisSettings, create_pool

    from worker.protocol.redis import connect

    pool: ArqRedis
    if way == "eventworker":
        pool = await connect(redis_url)
    else:
        pool = await create_pool(RedisSettings.from_dsn(redis_url))
    try:
        for n in range(jobs):
            await pool.enqueue_job("noop", _job_id=f"{prefix}-{n}", _queue_name=queue)
    finally:
        await pool.aclose()


async def _span(redis_url: str, way: str, prefix: str, jobs: int) -> float:
    """Seconds from the first job's start to the last one's finish, from arq's results."""
    from worker.protocol.serialization import deserialize

    loads = deserialize if way == "eventworker" else pickle.loads
    client = redis_client(redis_url)
    try:
        raw = await client.mget([f"arq:result:{prefix}-{n}" for n in range(jobs)])
    finally:
        await client.aclose()
    results = [loads(r) for r in raw if r is not None]
    if len(results) != jobs or not all(r["s"] for r in results):
        raise AssertionError(f"{way}: {sum(bool(r['s']) for r in results)} of {jobs} no-op jobs succeeded")
    return float(max(r["ft"] for r in results) - min(r["st"] for r in results)) / 1000


async def one_run(
    db: BenchDatabase, redis_url: str, way: str, run: int, jobs: int, settings: dict[str, Any]
) -> float:
    """Fill a queue with ``jobs`` no-op jobs, drain it with one worker; return jobs per second."""
    queue = f"{RUN_TAG}:noop:{way.split()[0]}:{run}"
    prefix = f"{RUN_TAG}-noop-{way.split()[0]}-{run}"
    await _fill(redis_url, queue, way, prefix, jobs)
    command = [
        "-m",
        "bench.overhead",
        "--child",
        way,
        "--queue",
        queue,
        "--redis-url",
        redis_url,
        *(f"--{k.replace('_', '-')}={v}" for k, v in settings.items()),
    ]
    env = worker_env(db, redis_url, queue, health_check_interval=10, **settings)
    worker = WorkerProcess(env, RESULTS / "logs" / f"noop-{way.split()[0]}-{run}.log", command).start()
    try:
        assert worker.process is not None
        started = time.monotonic()
        while worker.process.poll() is None:
            if time.monotonic() - started > 600:
                raise TimeoutError(f"{way} worker did not drain {jobs} jobs in 600 s")
            await asyncio.sleep(0.05)
        if worker.process.returncode != 0:
            raise RuntimeError(f"{way} worker exited {worker.process.returncode}; see {worker.log_path}")
        return jobs / await _span(redis_url, way, prefix, jobs)
    finally:
        worker.stop()
        await delete_keys(redis_url, f"arq:*{prefix}-*", f"*{queue}*")


async def overhead(
    db: BenchDatabase, redis_url: str, jobs: int, runs: int, max_jobs: int = 10, poll_delay: float = 0.05
) -> dict[str, Any]:
    """``runs`` runs each way, alternating; median jobs/s and their ratio."""
    settings = {"max_jobs": max_jobs, "poll_delay": poll_delay, "keep_result": 3600}
    rates: dict[str, list[float]] = {way: [] for way in WAYS}
    for run in range(runs):
        for way in WAYS:
            rates[way].append(await one_run(db, redis_url, way, run, jobs, settings))
    medians = {way: median(r) for way, r in rates.items()}
    return {
        "jobs": jobs,
        **settings,
        "jobs_per_s": {way: round(v) for way, v in medians.items()},
        "ratio": round(medians["eventworker"] / medians["bare arq"], 3),
        "runs_jobs_per_s": {way: [round(v) for v in r] for way, r in rates.items()},
        "load": load(),
    }


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", choices=WAYS, required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--redis-url", required=True)
    parser.add_argument("--max-jobs", type=int, default=10)
    parser.add_argument("--poll-delay", type=float, default=0.05)
    parser.add_argument("--keep-result", type=float, default=3600)
    return parser.parse_args()


if __name__ == "__main__":
    child(_arguments())
    sys.exit(0)
