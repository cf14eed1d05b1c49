"""What tracing costs: no-op jobs and ingestion with the hooks removed, tracing off, on at 100 % and at 1 %.

Four ways, each run in turn within every round (the order turning from round to round, so that the
machine's drift falls on all of them), in worker processes of their own:

- **hooks removed**: the worker as it was before tracing: ``worker.tracing.hooks.BYPASS`` set before
  the jobs are imported, so the job runner is built without its tracing branch (this module's
  ``--child`` entry); the other hooks (one read of ``hooks.ACTIVE`` per batch at the COPY and the
  links, none per event) stay, being a module attribute read each;
- **tracing off**: ``eventworker`` as shipped, with ``OTEL_TRACES_EXPORTER=none``;
- **tracing on, 100 %** and **1 %**: ``OTEL_EXPORTER_OTLP_ENDPOINT`` naming an OTLP/HTTP receiver
  in a process of its own (``--receiver``: it decodes each request to count the spans, and
  answers), sampled with ``parentbased_always_on`` and ``parentbased_traceidratio`` 0.01.

The figures: no-op jobs per second (as ``bench/overhead.py`` counts them: arq's records, first start
to last finish) and events per second end to end (as ``bench/ingest.py``'s ``end_to_end``: first
enqueue to last commit, the stored rows checked). Each way's ratio to "hooks removed" is the median
of the per-round ratios. The target: tracing off within 3 % of the hooks removed.

In worker processes, two cores shared with PostgreSQL, Redis, the producer and whatever else runs make
single rounds differ by 10 % and more (a load spike in one round halved a way's no-op rate); so both
jobs are also timed alone, in this process, each built both ways from the same function and run in
turn: the ingest job batch after batch, each way on batches of its own (:func:`job_alone`), and the
no-op job (the job runner around an empty transaction) in alternating blocks (:func:`noop_alone`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import orjson

from bench.common import RESULTS, RUN_TAG, BenchDatabase, WorkerProcess, delete_keys, load, median, worker_env
from bench.events import batches
from bench.ingest import IngestOptions, one_end_to_end, record_batches
from bench.overhead import _fill, _span

WAYS = ("hooks removed", "tracing off", "tracing on 100%", "tracing on 1%")
BASELINE = "hooks removed"
#: The ratio tracing off must keep to the hooks removed.
TARGET = 0.97


def tracing_env(way: str, endpoint: str) -> dict[str, str]:
    """The OTEL_* variables of a way."""
    if way in ("hooks removed", "tracing off"):
        return {"OTEL_TRACES_EXPORTER": "none"}
    env = {
        "OTEL_TRACES_EXPORTER": "otlp",
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": "eventworker-bench",
    }
    if way.endswith("1%"):
        return {**env, "OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.01"}
    return {**env, "OTEL_TRACES_SAMPLER": "parentbased_always_on"}


def child_command(kind: str, way: str, queue: str = "") -> list[str]:
    """The worker process of a way: this module's child entry (which removes the hooks when asked)."""
    return ["-m", "bench.tracing", "--child", kind, "--way", way, *(["--queue", queue] if queue else [])]


# -- the OTLP receiver, a process of its own ----------------------------------------------------------


def receive(port_file: Path) -> None:
    """Serve POST /v1/traces (counting spans and bytes) and GET /stats until killed."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
        ExportTraceServiceResponse,
    )

    stats = {"requests": 0, "spans": 0, "bytes": 0}
    reply = ExportTraceServiceResponse().SerializeToString()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            request = ExportTraceServiceRequest.FromString(body)
            stats["requests"] += 1
            stats["bytes"] += len(body)
            stats["spans"] += sum(len(s.spans) for r in request.resource_spans for s in r.scope_spans)
            self._answer(reply, "application/x-protobuf")

        def do_GET(self) -> None:
            self._answer(json.dumps(stats).encode(), "application/json")

        def _answer(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    port_file.write_text(str(server.server_address[1]))
    server.serve_forever()


class Receiver:
    """The receiver process: ``endpoint`` for the workers, ``stats()`` of what it got so far."""

    def __init__(self) -> None:
        port_file = RESULTS / "logs" / f"otlp-receiver-{os.getpid()}.port"
        port_file.parent.mkdir(parents=True, exist_ok=True)
        port_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.tracing", "--receiver", str(port_file)],
            cwd=Path(__file__).resolve().parent.parent,
        )
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the OTLP receiver did not start")
            time.sleep(0.05)
        self.endpoint = f"http://127.0.0.1:{port_file.read_text()}"
        port_file.unlink()

    def stats(self) -> dict[str, int]:
        with urllib.request.urlopen(f"{self.endpoint}/stats", timeout=10) as answer:
            return dict(json.loads(answer.read()))

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(10)


# -- child processes --------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """A worker of one way: ``noop`` (burst over a filled queue, a no-op job added) or ``worker`` (as run)."""
    from worker.tracing import hooks

    hooks.BYPASS = args.way == BASELINE  # before any job is imported: the runner as it was without tracing
    from arq.worker import Worker, run_worker

    if args.child == "worker":
        from worker.main import settings_from_environment

        run_worker(settings_from_environment())
        return
    from bench.overhead import eventworker_options

    worker = Worker(**{**eventworker_options(args.queue), "burst": True, "handle_signals": False})
    worker.run()


# -- the runs ---------------------------------------------------------------------------------------


async def noop_run(
    db: BenchDatabase, redis_url: str, way: str, run: int, jobs: int, endpoint: str, max_jobs: int
) -> float:
    """Fill a queue with ``jobs`` no-op jobs, drain it with one worker of ``way``; jobs per second."""
    slug = "-".join(way.replace("%", "pct").split())
    queue = f"{RUN_TAG}:tracing-noop:{slug}:{run}"
    prefix = f"{RUN_TAG}-tracing-noop-{slug}-{run}"
    await _fill(redis_url, queue, "eventworker", prefix, jobs)
    settings = {"max_jobs": max_jobs, "poll_delay": 0.05, "keep_result": 3600}
    env = {
        **worker_env(db, redis_url, queue, health_check_interval=10, **settings),
        **tracing_env(way, endpoint),
    }
    log = RESULTS / "logs" / f"tracing-noop-{slug}-{run}.log"
    worker = WorkerProcess(env, log, child_command("noop", way, queue)).start()
    try:
        assert worker.process is not None
        started = time.monotonic()
        while worker.process.poll() is None:
            if time.monotonic() - started > 600:
                raise TimeoutError(f"{way}: {jobs} no-op jobs not drained in 600 s")
            await asyncio.sleep(0.05)
        if worker.process.returncode != 0:
            raise RuntimeError(f"{way} worker exited {worker.process.returncode}; see {log}")
        return jobs / await _span(redis_url, "eventworker", prefix, jobs)
    finally:
        worker.stop()
        await delete_keys(redis_url, f"arq:*{prefix}-*", f"*{queue}*")


async def job_alone(db: BenchDatabase, options: IngestOptions, batches_n: int) -> dict[str, Any]:
    """The ingest job in this process, hooks removed against tracing off, alternating batch by batch."""
    from jobs.ingest import ingest_events
    from worker.config import load_settings
    from worker.constants import INGEST_JOB
    from worker.db.engine import Database
    from worker.lifecycle import settle_collector
    from worker.logging import configure_logging
    from worker.protocol.serialization import job_deserializer, serialize
    from worker.runtime.jobrunner import job
    from worker.tracing import hooks

    assert hooks.ACTIVE is None, "tracing is off in the benchmark's own process"
    function = ingest_events.__wrapped__  # type: ignore[attr-defined]  # the job before job() wrapped it
    hooks.BYPASS = True
    ways = {BASELINE: job(function)}
    hooks.BYPASS = False
    ways["tracing off"] = job(function)
    batch_json = batches(
        2 * batches_n * options.batch_size, options.batch_size, options.mix, seed=23, prefix=RUN_TAG
    )
    decode = job_deserializer({INGEST_JOB}, raw_argument_jobs={INGEST_JOB})
    jobs = [
        serialize({"t": 1, "f": INGEST_JOB, "a": [orjson.loads(b)], "k": {}, "et": 0}) for b in batch_json
    ]
    settings = load_settings(database_url=db.url, log_level="WARNING")
    configure_logging(settings.log_level, "json", settings.secrets())
    database = Database.from_settings(settings)
    settle_collector()
    times: dict[str, list[float]] = {way: [] for way in ways}
    try:
        for n in range(0, len(jobs) - 1, 2):
            order = list(ways) if n % 4 == 0 else list(ways)[::-1]
            for way, raw in zip(order, jobs[n : n + 2], strict=True):
                ctx = {
                    "settings": settings,
                    "db": database,
                    "redis": None,
                    "job_try": 1,
                    "job_id": f"alone-{n}-{way}",
                }
                events = decode(raw)["a"][0]
                started = time.perf_counter()
                await ways[way](ctx, events)
                times[way].append((time.perf_counter() - started) * 1000)
    finally:
        await database.dispose()
        await db.empty()
    medians = {way: median(values) for way, values in times.items()}
    return {
        "batches_each": len(times[BASELINE]),
        "batch_size": options.batch_size,
        "median_ms": {way: round(ms, 3) for way, ms in medians.items()},
        "ratio": round(medians[BASELINE] / medians["tracing off"], 3),
    }


async def noop_alone(db: BenchDatabase, calls: int, block: int = 100) -> dict[str, Any]:
    """The no-op job in this process, hooks removed against tracing off: microseconds a call, blocks of
    ``block`` calls in turn, the median of the blocks."""
    from worker.config import load_settings
    from worker.db.engine import Database
    from worker.runtime.jobrunner import job
    from worker.tracing import hooks

    assert hooks.ACTIVE is None, "tracing is off in the benchmark's own process"

    async def noop(ctx: Any) -> None:
        async with ctx["db"].transaction("noop"):
            pass

    hooks.BYPASS = True
    ways = {BASELINE: job(noop)}
    hooks.BYPASS = False
    ways["tracing off"] = job(noop)
    settings = load_settings(database_url=db.url, log_level="WARNING")
    database = Database.from_settings(settings)
    ctx = {"settings": settings, "db": database, "redis": None, "job_try": 1, "job_id": "noop"}
    blocks: dict[str, list[float]] = {way: [] for way in ways}
    try:
        for n in range(max(1, calls // block)):
            for way in list(ways) if n % 2 == 0 else list(ways)[::-1]:
                started = time.perf_counter()
                for _ in range(block):
                    await ways[way](ctx)
                blocks[way].append((time.perf_counter() - started) / block * 1e6)
    finally:
        await database.dispose()
    medians = {way: median(values) for way, values in blocks.items()}
    return {
        "calls_each": len(blocks[BASELINE]) * block,
        "median_us": {way: round(us, 2) for way, us in medians.items()},
        "ratio": round(medians[BASELINE] / medians["tracing off"], 3),
    }


def _ratios(rates: dict[str, list[float]]) -> dict[str, float]:
    """Each way's median per-round ratio to the hooks removed (above 1: faster)."""
    return {
        way: round(median(v / b for v, b in zip(values, rates[BASELINE], strict=True)), 3)
        for way, values in rates.items()
    }


def _order(run: int) -> list[str]:
    """The ways in the order of round ``run``: turned by one each round."""
    shift = run % len(WAYS)
    return [*WAYS[shift:], *WAYS[:shift]]


async def tracing(
    db: BenchDatabase, options: IngestOptions, noop_jobs: int, runs: int, noop_max_jobs: int = 10
) -> dict[str, Any]:
    """Every way, ``runs`` rounds: no-op jobs/s, then events/s end to end; medians and ratios."""
    receiver = Receiver()
    try:
        noop: dict[str, list[float]] = {way: [] for way in WAYS}
        for run in range(runs):
            for way in _order(run):
                rate = await noop_run(
                    db, options.redis_url, way, run, noop_jobs, receiver.endpoint, noop_max_jobs
                )
                noop[way].append(rate)
        spans_before = receiver.stats()
        batch_json = batches(options.events, options.batch_size, options.mix, seed=17, prefix=RUN_TAG)
        expected = sum(len(r) for r in record_batches(batch_json))
        ingest: dict[str, list[float]] = {way: [] for way in WAYS}
        spans: dict[str, list[int]] = {way: [] for way in WAYS}
        for run in range(runs):
            for way in _order(run):
                await db.empty()
                before = receiver.stats()["spans"]
                slug = "-".join(way.replace("%", "pct").split())
                outcome = await one_end_to_end(
                    db,
                    replace(options, keep_result=0.0),
                    batch_json,
                    f"tracing-{slug}-{run}",
                    command=child_command("worker", way),
                    extra_env=tracing_env(way, receiver.endpoint),
                )
                if outcome["stored"] != expected:
                    raise AssertionError(f"{way}: stored {outcome['stored']} rows, expected {expected}")
                ingest[way].append(options.events / outcome["seconds"])
                spans[way].append(receiver.stats()["spans"] - before)
        received = receiver.stats()
    finally:
        receiver.stop()
    alone = await job_alone(db, options, max(4, min(200, options.events // options.batch_size)))
    noop_calls = await noop_alone(db, max(200, noop_jobs * 5))
    jobs_per_run = len(batch_json)
    return {
        "runs": runs,
        "noop_jobs": noop_jobs,
        "noop_max_jobs": noop_max_jobs,
        "events": options.events,
        "batch_size": options.batch_size,
        "noop_jobs_per_s": {way: round(median(v)) for way, v in noop.items()},
        "noop_ratio": _ratios(noop),
        "events_per_s": {way: round(median(v)) for way, v in ingest.items()},
        "ingest_ratio": _ratios(ingest),
        "ingest_spans_per_job": {way: round(median(v) / jobs_per_run, 1) for way, v in spans.items()},
        "ingest_job_alone": alone,
        "noop_job_alone": noop_calls,
        "noop_spans_received": spans_before["spans"],
        "spans_received": received["spans"],
        "otlp_requests": received["requests"],
        "runs_noop_jobs_per_s": {way: [round(v) for v in values] for way, values in noop.items()},
        "runs_events_per_s": {way: [round(v) for v in values] for way, values in ingest.items()},
        "load": load(),
    }


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--child", choices=("noop", "worker"))
    parser.add_argument("--way", choices=WAYS)
    parser.add_argument("--queue", default="")
    parser.add_argument("--receiver", type=Path, help="serve as the OTLP receiver; write the port here")
    return parser.parse_args()


if __name__ == "__main__":
    arguments = _arguments()
    if arguments.receiver is not None:
        receive(arguments.receiver)
    else:
        child(arguments)
    sys.exit(0)
