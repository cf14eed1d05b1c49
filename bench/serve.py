"""CloudEvents over HTTP (`eventworker serve`) against the direct producer (`EventProducer`), same run.

    .venv/bin/python bench/serve.py                      # 200,000 events; about 5 minutes here
    .venv/bin/python bench/serve.py --events 20000 --binary-events 5000 --latency-seconds 5   # smoke

Figures, each from one process of `eventworker serve` (uvicorn, httptools, uvloop) and one of
`eventworker run`, on the local PostgreSQL and Redis:

1. accepted events/s over HTTP, batched mode (batches of `--batch-size`, `--connections` keep-alive
   connections sending at once), no worker running: the HTTP side alone (parse, validate, enqueue);
2. accepted events/s over HTTP, binary mode (one event per request, keep-alive), no worker;
3. accepted events/s by `EventProducer.emit_batch`, the same batches: the direct path's enqueue rate;
4. end to end (first send to last commit, the queue empty): the same events through HTTP batched,
   and through `EventProducer`, each into a worker process on an emptied table; the ratio is the
   target (HTTP batched >= 0.8x the direct producer);
5. request latency (p50, p99) at a steady half of each mode's peak, sent open loop (a request is
   due at its time whatever the earlier ones did).

The load generator is a minimal HTTP/1.1 client on asyncio streams (a request written, the answer
read by its Content-Length): httpx would cost more CPU per request than the server, on a machine
whose two cores the client, the server, Redis, PostgreSQL and the worker share. CPU seconds per
event of the serve and worker processes say where the time goes. The events are bench/events.py's:
5 % repeat an earlier event and 2 % are invalid; over HTTP the invalid ones are answered (207) and
never enqueued, through EventProducer they are enqueued and the worker keeps them as dead letters,
so both store the same rows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    PG_URL,
    REDIS_URL,
    RESULTS,
    RUN_TAG,
    WorkerProcess,
    bench_database,
    cpu_seconds,
    delete_keys,
    load,
    percentile,
    redis_client,
    worker_env,
)
from bench.events import batches, stored_records
from worker.protocol.events import CloudEvent, validate_one

#: Settings that take the limits out of the way: the benchmark measures throughput, not refusals.
UNLIMITED = {"http_rate_limit": 10**9, "http_max_queue_depth": 10**9, "http_max_batch_events": 100_000}


class Connection:
    """One keep-alive HTTP/1.1 connection: ``post`` writes a request and reads its whole answer."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer)

    async def post(self, head: bytes, body: bytes) -> int:
        """Send ``head`` (request line and headers, without Content-Length) and ``body``; the status."""
        self.writer.write(head + b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        header = await self.reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in header.split(b"\r\n"):
            if line[:15].lower() == b"content-length:":
                length = int(line[15:])
        if length:
            await self.reader.readexactly(length)
        return int(header[9:12])

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


def batch_head(host: str) -> bytes:
    return (
        f"POST /events HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/cloudevents-batch+json\r\n"
    ).encode()


def binary_request(host: str, event: dict[str, Any]) -> tuple[bytes, bytes]:
    """A binary-mode request for ``event``: its attributes as ce- headers (datacontenttype as the
    Content-Type), its data as the body."""
    safe = "".join(c for c in map(chr, range(0x21, 0x7F)) if c not in ' "%')
    content_type = event.get("datacontenttype", "application/json")
    headers = [f"POST /events HTTP/1.1\r\nHost: {host}\r\nContent-Type: {content_type}\r\n"]
    for name, value in event.items():
        if name not in ("data", "datacontenttype"):
            headers.append(f"ce-{name}: {quote(str(value), safe=safe)}\r\n")
    return "".join(headers).encode(), orjson.dumps(event.get("data"))


class Serve:
    """`eventworker serve` on a free port, in its own process (through bench.common's WorkerProcess)."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.process = WorkerProcess(env, log, command=("-m", "worker", "serve", "--port", "0")).start()
        self.log = log
        deadline = time.monotonic() + 60
        while " on http://" not in (text := log.read_text(errors="replace")):
            if self.process.process is not None and self.process.process.poll() is not None:
                raise RuntimeError(f"serve did not start: {text}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"serve did not start within 60 s: {text}")
            time.sleep(0.05)
        address = text.split(" on http://", 1)[1].split("/", 1)[0]
        self.host, port = address.rsplit(":", 1)
        self.port = int(port)

    async def ready(self) -> None:
        connection = await Connection.open(self.host, self.port)
        try:
            deadline = time.monotonic() + 30
            while True:
                head = f"GET /readyz HTTP/1.1\r\nHost: {self.host}\r\n".encode()
                connection.writer.write(head + b"\r\n")
                header = await connection.reader.readuntil(b"\r\n\r\n")
                length = int(header.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                await connection.reader.readexactly(length)
                if header[9:12] == b"200":
                    return
                if time.monotonic() > deadline:
                    raise RuntimeError("serve not ready")
                await asyncio.sleep(0.2)
        finally:
            await connection.close()

    def stop(self) -> int:
        return self.process.stop()


async def send_all(serve: Serve, requests: list[tuple[bytes, bytes]], connections: int) -> list[int]:
    """Send every request over ``connections`` keep-alive connections, as fast as they answer."""
    queue: asyncio.Queue[tuple[bytes, bytes]] = asyncio.Queue()
    for request in requests:
        queue.put_nowait(request)
    statuses: list[int] = []

    async def drain() -> None:
        connection = await Connection.open(serve.host, serve.port)
        try:
            while not queue.empty():
                head, body = queue.get_nowait()
                statuses.append(await connection.post(head, body))
        finally:
            await connection.close()

    await asyncio.gather(*(drain() for _ in range(connections)))
    return statuses


async def paced(
    serve: Serve, requests: list[tuple[bytes, bytes]], rate: float, connections: int
) -> list[float]:
    """Open loop at ``rate`` requests/s over a pool of ``connections``: each request's latency (s)."""
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(connections):
        pool.put_nowait(await Connection.open(serve.host, serve.port))
    latencies: list[float] = []
    start = time.perf_counter()

    async def one(n: int, head: bytes, body: bytes) -> None:
        due = start + n / rate
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        connection = await pool.get()
        status = await connection.post(head, body)
        latencies.append(time.perf_counter() - due)  # from when it was due: waiting for a connection counts
        pool.put_nowait(connection)
        if status >= 300 and status != 207:
            raise RuntimeError(f"status {status} at {rate:.0f}/s")

    await asyncio.gather(*(one(n, head, body) for n, (head, body) in enumerate(requests)))
    while not pool.empty():
        await (await pool.get()).close()
    return latencies


async def drop_queue(redis_url: str, queue: str) -> None:
    """Delete ``queue``, the jobs in it (serve gives them random ids) and its keys; nothing of other runs."""
    client = redis_client(redis_url)
    try:
        jobs = [b"arq:job:" + job_id for job_id in await client.zrange(queue, 0, -1)]
        for start in range(0, len(jobs), 1000):
            await client.unlink(*jobs[start : start + 1000])
    finally:
        await client.aclose()
    await delete_keys(redis_url, f"*{queue}*")


async def wait_empty(redis_url: str, queue: str, wait_s: float = 3600) -> float:
    client = redis_client(redis_url)
    deadline = time.monotonic() + wait_s
    try:
        while await client.zcard(queue):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{queue} not empty after {wait_s}s")
            await asyncio.sleep(0.005)
        return time.time()
    finally:
        await client.aclose()


async def direct_enqueue(redis_url: str, queue: str, batch_json: list[bytes], tag: str) -> float:
    """EventProducer.emit_batch, batch after batch, as bench/ingest.py's producer: the seconds taken."""
    from worker.protocol.producer import EventProducer

    started = time.perf_counter()
    async with EventProducer(redis_url, queue_name=queue) as producer:
        for n, chunk in enumerate(batch_json):
            await producer.emit_batch(orjson.loads(chunk), job_id=f"{RUN_TAG}-{tag}-{n}")
    return time.perf_counter() - started


async def run(args: argparse.Namespace) -> dict[str, Any]:
    db = await bench_database("http", args.pg_url).create()
    logs = RESULTS / "logs"
    result: dict[str, Any] = {"events": args.events, "batch_size": args.batch_size, "load_before": load()}
    batch_json = batches(args.events, args.batch_size, seed=11, prefix=RUN_TAG)
    expected = sum(len(rows) for rows in stored_records(batch_json, datetime.now(UTC)))
    batch_requests = [(b"", chunk) for chunk in batch_json]
    try:
        # -- 1 and 2: the HTTP side alone, no worker --------------------------------------------
        queue = f"{RUN_TAG}:http-accept"
        serve = Serve(worker_env(db, args.redis_url, queue, **UNLIMITED), logs / "http-serve-accept.log")
        try:
            await serve.ready()
            head = batch_head(serve.host)
            cpu0, started = cpu_seconds(serve.process.pid), time.perf_counter()
            statuses = await send_all(serve, [(head, b) for _, b in batch_requests], args.connections)
            seconds = time.perf_counter() - started
            cpu = cpu_seconds(serve.process.pid) - cpu0
            assert set(statuses) <= {202, 207}, set(statuses)
            result["http_batched_accept"] = {
                "events_per_s": round(args.events / seconds),
                "requests": len(statuses),
                "seconds": round(seconds, 2),
                "serve_cpu_us_per_event": round(cpu / args.events * 1e6, 1),
            }
            await drop_queue(args.redis_url, queue)

            events = [e for chunk in batch_json for e in orjson.loads(chunk) if isinstance(e, dict)]
            events = [e for e in events if isinstance(validate_one(e, 1 << 20), CloudEvent)][
                : args.binary_events
            ]
            binary = [binary_request(serve.host, {**e, "id": f"{e['id']}-bin"}) for e in events]
            cpu0, started = cpu_seconds(serve.process.pid), time.perf_counter()
            statuses = await send_all(serve, binary, args.connections)
            seconds = time.perf_counter() - started
            cpu = cpu_seconds(serve.process.pid) - cpu0
            result["http_binary_accept"] = {
                "events_per_s": round(len(binary) / seconds),
                "requests": len(binary),
                "accepted": statuses.count(202),
                "seconds": round(seconds, 2),
                "serve_cpu_us_per_event": round(cpu / len(binary) * 1e6, 1),
            }
            await drop_queue(args.redis_url, queue)

            # -- 5: latency at half of each peak ------------------------------------------------
            for mode, requests, peak in (
                ("binary", binary, result["http_binary_accept"]["events_per_s"]),
                (
                    "batched",
                    [(head, b) for _, b in batch_requests],
                    result["http_batched_accept"]["events_per_s"] / args.batch_size,
                ),
            ):
                rate = peak / 2
                count = max(20, min(len(requests), int(rate * args.latency_seconds)))
                latencies = await paced(
                    serve, (requests * (count // len(requests) + 1))[:count], rate, args.connections
                )
                result[f"http_{mode}_latency"] = {
                    "rate_requests_per_s": round(rate, 1),
                    "events_per_s": round(rate * (1 if mode == "binary" else args.batch_size)),
                    "requests": count,
                    "p50_ms": round(percentile(latencies, 50) * 1000, 2),
                    "p99_ms": round(percentile(latencies, 99) * 1000, 2),
                }
                await drop_queue(args.redis_url, queue)
        finally:
            result["serve_exit"] = serve.stop()

        # -- 3: the direct producer's enqueue rate ---------------------------------------------
        queue = f"{RUN_TAG}:direct-accept"
        seconds = await direct_enqueue(args.redis_url, queue, batch_json, "direct-accept")
        result["direct_accept"] = {"events_per_s": round(args.events / seconds), "seconds": round(seconds, 2)}
        await delete_keys(args.redis_url, f"*{queue}*", f"arq:job:{RUN_TAG}-direct-accept-*")

        # -- 4: end to end, both ways, alternating ---------------------------------------------
        e2e: dict[str, list[float]] = {"http": [], "direct": []}
        details: list[dict[str, Any]] = []
        for run_n in range(args.runs):
            for way in ("direct", "http"):
                await db.empty()
                queue = f"{RUN_TAG}:e2e-{way}-{run_n}"
                env = worker_env(
                    db, args.redis_url, queue, max_jobs=10, poll_delay=0.05, keep_result=0, **UNLIMITED
                )
                worker = WorkerProcess(env, logs / f"http-e2e-worker-{way}-{run_n}.log").start()
                front: Serve | None = (
                    Serve(env, logs / f"http-e2e-serve-{run_n}.log") if way == "http" else None
                )
                try:
                    await worker.ready(args.redis_url, queue)
                    if front is not None:
                        await front.ready()
                    wcpu0 = cpu_seconds(worker.pid)
                    scpu0 = cpu_seconds(front.process.pid) if front else 0.0
                    started = time.time()
                    if front is not None:
                        head = batch_head(front.host)
                        statuses = await send_all(
                            front, [(head, b) for _, b in batch_requests], args.connections
                        )
                        assert set(statuses) <= {202, 207}, set(statuses)
                    else:
                        await direct_enqueue(args.redis_url, queue, batch_json, f"e2e-{run_n}")
                    sent = time.time()
                    done = await wait_empty(args.redis_url, queue)
                    wcpu = cpu_seconds(worker.pid) - wcpu0
                    scpu = (cpu_seconds(front.process.pid) - scpu0) if front else 0.0
                finally:
                    worker.stop()
                    if front is not None:
                        front.stop()
                    await delete_keys(args.redis_url, f"*{queue}*", f"arq:job:{RUN_TAG}-e2e-*")
                stored = await db.count()
                if stored != expected:
                    raise AssertionError(f"{way}: stored {stored} rows, expected {expected}")
                e2e[way].append(done - started)
                details.append(
                    {
                        "way": way,
                        "run": run_n,
                        "seconds": round(done - started, 2),
                        "send_seconds": round(sent - started, 2),
                        "stored": stored,
                        "worker_cpu_us_per_event": round(wcpu / args.events * 1e6, 1),
                        "serve_cpu_us_per_event": round(scpu / args.events * 1e6, 1),
                    }
                )
        best = {way: sorted(values)[len(values) // 2] for way, values in e2e.items()}
        result["end_to_end"] = {
            "stored_rows": expected,
            "median_seconds": {way: round(s, 2) for way, s in best.items()},
            "events_per_s": {way: round(args.events / s) for way, s in best.items()},
            "ratio_http_to_direct": round(best["direct"] / best["http"], 3),
            "target": ">= 0.8",
            "runs": details,
        }
    finally:
        await db.drop()
        await delete_keys(args.redis_url, f"*{RUN_TAG}*")
    result["load_after"] = load()
    return result


def table(result: dict[str, Any]) -> str:
    rows = [
        (
            "HTTP batched, accepted (no worker)",
            f"{result['http_batched_accept']['events_per_s']:,} ev/s",
            f"serve {result['http_batched_accept']['serve_cpu_us_per_event']} µs CPU/event",
        ),
        (
            "HTTP binary, accepted (no worker)",
            f"{result['http_binary_accept']['events_per_s']:,} ev/s",
            f"serve {result['http_binary_accept']['serve_cpu_us_per_event']} µs CPU/event",
        ),
        ("EventProducer, enqueued", f"{result['direct_accept']['events_per_s']:,} ev/s", ""),
        ("end to end, HTTP batched", f"{result['end_to_end']['events_per_s']['http']:,} ev/s", ""),
        ("end to end, EventProducer", f"{result['end_to_end']['events_per_s']['direct']:,} ev/s", ""),
        (
            "end to end, HTTP / EventProducer",
            f"{result['end_to_end']['ratio_http_to_direct']:.2f}x",
            "target >= 0.80x",
        ),
    ]
    for mode in ("binary", "batched"):
        latency = result[f"http_{mode}_latency"]
        rows.append(
            (
                f"HTTP {mode} latency at half peak ({latency['events_per_s']:,} ev/s)",
                f"p50 {latency['p50_ms']} / p99 {latency['p99_ms']} ms",
                f"{latency['requests']} requests",
            )
        )
    width = max(len(r[0]) for r in rows)
    return "\n".join(f"{a:<{width}}  {b:<26} {c}" for a, b, c in rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--batch-size", type=int, default=500)
    parser.add_argument("--binary-events", type=int, default=20_000)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--pg-url", default=PG_URL)
    parser.add_argument("--redis-url", default=REDIS_URL)
    parser.add_argument("--output", type=Path, default=RESULTS / "serve.json")
    args = parser.parse_args()
    os.environ.setdefault("EVENTWORKER_LOG_LEVEL", "WARNING")
    result = asyncio.run(run(args))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    print(table(result))
    print(f"load {result['load_before']} -> {result['load_after']}; written to {args.output}")


if __name__ == "__main__":
    main()
