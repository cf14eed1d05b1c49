"""Benchmark: the event statistics report, serial (one session) vs. fanned out (a session per query).

    python bench/report.py --rows 200000

Creates its own PostgreSQL database ``ew_bench_report`` (dropped afterwards unless ``--keep``),
migrates it, fills it with asyncpg COPY (20 types, 50 sources, 1,000 subjects with skewed
frequencies, ``time`` a little before ``received_at``, 1 % dead letters), then builds the
report over the last hour ``--runs`` times each way, alternating, and prints the medians:
wall time serial and fanned out, their ratio, and the slowest single query (a fanned-out
report cannot beat it). Results go to ``bench/results/report.json``.

It measures twice: with PostgreSQL's parallel query as the server has it, and with
``max_parallel_workers_per_gather = 0``. With parallel query on, the serial report's big
aggregates already use every core, which leaves the fan-out little to add on a small machine.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import math
import os
import platform
import random
import statistics
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

from worker.config import load_settings
from worker.db import schema
from worker.db.engine import Database
from worker.db.report_sql import LAG_SAMPLE_SIZE
from worker.report import PERCENTILES, Report, Window, build_report, percentile

DATABASE = "ew_bench_report"
RESULTS = Path(__file__).resolve().parent / "results" / "report.json"
TYPES = [
    f"com.example.{noun}.{verb}"
    for noun in ("order", "cart", "user", "invoice", "shipment")
    for verb in ("created", "updated", "deleted", "viewed")
]
SOURCES = [f"/shop/region-{n:02d}" for n in range(50)]
SUBJECTS = [f"customer/{n:04d}" for n in range(1000)]
REASONS = ["invalid", "invalid", "invalid", "too_large", "not_a_list"]


def _weights(n: int) -> list[float]:
    """Zipf-like: a few keys are common, most are rare, as real traffic is."""
    return [1 / (rank + 1) for rank in range(n)]


def _event_records(rows: int, now: datetime, rng: random.Random) -> list[tuple[Any, ...]]:
    types = rng.choices(TYPES, _weights(len(TYPES)), k=rows)
    sources = rng.choices(SOURCES, _weights(len(SOURCES)), k=rows)
    subjects = rng.choices(SUBJECTS, _weights(len(SUBJECTS)), k=rows)
    records = []
    for n in range(rows):
        received_at = now - timedelta(seconds=rng.uniform(0, 3300))  # the last 55 minutes
        lag = rng.expovariate(1 / 0.8)  # mostly under a second, a long tail
        event_time = None if n % 50 == 0 else received_at - timedelta(seconds=lag)
        subject = None if n % 10 == 0 else subjects[n]
        data = json.dumps({"n": n, "amount": n % 997})
        records.append(
            (sources[n], f"evt-{n}", types[n], "1.0", event_time, subject, data, received_at, "bench")
        )
    return records


def _dead_letter_records(count: int, now: datetime, rng: random.Random) -> list[tuple[Any, ...]]:
    records = []
    for n in range(count):
        raw = json.dumps({"broken": n}).encode()
        received_at = now - timedelta(seconds=rng.uniform(0, 3300))
        errors = json.dumps([{"loc": "id", "msg": "Field required", "type": "missing"}])
        records.append(
            (rng.choice(REASONS), errors, raw, "bench", n, hashlib.sha256(raw).hexdigest(), received_at)
        )
    return records


async def create_database(admin_url: str) -> str:
    """Drop and create the bench database; return its asyncpg DSN."""
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
        await connection.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await connection.close()
    return make_url(admin_url).set(database=DATABASE).render_as_string(hide_password=False)


async def drop_database(admin_url: str) -> None:
    """Remove the bench database."""
    connection = await asyncpg.connect(admin_url)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{DATABASE}" WITH (FORCE)')
    finally:
        await connection.close()


async def fill(dsn: str, rows: int, now: datetime) -> float:
    """COPY the events and dead letters in; return seconds taken (generation included)."""
    started = time.perf_counter()
    rng = random.Random(42)
    events = _event_records(rows, now, rng)
    letters = _dead_letter_records(max(rows // 100, 1), now, rng)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.copy_records_to_table(
            "events",
            records=events,
            columns=[
                "source",
                "event_id",
                "type",
                "specversion",
                "time",
                "subject",
                "data",
                "received_at",
                "job_id",
            ],
        )
        await connection.copy_records_to_table(
            "dead_letters",
            records=letters,
            columns=["reason", "errors", "raw", "job_id", "position", "digest", "received_at"],
        )
        await connection.execute("VACUUM ANALYZE events")
        await connection.execute("VACUUM ANALYZE dead_letters")
    finally:
        await connection.close()
    return time.perf_counter() - started


#: The baseline: the same statements by hand, on asyncpg connections without SQLAlchemy.
_IN_WINDOW = "received_at >= $1 AND received_at < $2"


def _counted(column: str, table: str = "events", extra: str = "", limit: str = "") -> str:
    return (
        f"SELECT {column}, count(*) AS n FROM {table} WHERE {_IN_WINDOW}{extra}"
        f" GROUP BY {column} ORDER BY n DESC, {column}{limit}"
    )


RAW_COUNTS = {
    "by_type": _counted("type", limit=" LIMIT 50"),
    "by_source": _counted("source", limit=" LIMIT 50"),
    "top_subjects": _counted("subject", extra=" AND subject IS NOT NULL", limit=" LIMIT 10"),
    "dead_letters": _counted("reason", table="dead_letters"),
}


async def _raw_query(connection: asyncpg.Connection, name: str, window: Window) -> Any:
    start, end = window.start, window.end
    if name == "events":
        return await connection.fetchval(f"SELECT count(*) FROM events WHERE {_IN_WINDOW}", start, end)
    if name == "lag":
        with_time = f"{_IN_WINDOW} AND time IS NOT NULL"
        population = await connection.fetchval(f"SELECT count(*) FROM events WHERE {with_time}", start, end)
        step = max(1, math.ceil(population / LAG_SAMPLE_SIZE))
        rows = await connection.fetch(
            f"SELECT extract(epoch FROM received_at - time)::float8 FROM events WHERE {with_time}"
            " AND seq % $3 = 0 LIMIT $4",
            start,
            end,
            step,
            LAG_SAMPLE_SIZE,
        )
        values = [row[0] for row in rows]
        return [percentile(values, q) for q in PERCENTILES]
    return [tuple(row) for row in await connection.fetch(RAW_COUNTS[name], start, end)]


QUERY_NAMES = ("events", "by_type", "by_source", "top_subjects", "lag", "dead_letters")


async def raw_serial(pool: asyncpg.Pool, window: Window) -> tuple[float, dict[str, Any]]:
    """The baseline, serially on one connection in one transaction; (wall ms, results)."""
    started = time.perf_counter()
    async with pool.acquire() as connection, connection.transaction():
        results = {name: await _raw_query(connection, name, window) for name in QUERY_NAMES}
    return (time.perf_counter() - started) * 1000, results


async def raw_fanned_out(pool: asyncpg.Pool, window: Window) -> tuple[float, dict[str, Any]]:
    """The baseline, each query on its own connection at once; (wall ms, results)."""

    async def one(name: str) -> Any:
        async with pool.acquire() as connection, connection.transaction():
            return await _raw_query(connection, name, window)

    started = time.perf_counter()
    values = await asyncio.gather(*(one(name) for name in QUERY_NAMES))
    return (time.perf_counter() - started) * 1000, dict(zip(QUERY_NAMES, values, strict=True))


async def measure(db: Database, pool: asyncpg.Pool, window: Window, runs: int) -> dict[str, list[Any]]:
    """``runs`` reports each way, alternating so that drift hits all alike, after one warm-up each."""
    ways = {
        "serial": lambda: build_report(db, window, fan_out=False),
        "fanned_out": lambda: build_report(db, window, fan_out=True),
        "raw_serial": lambda: raw_serial(pool, window),
        "raw_fanned_out": lambda: raw_fanned_out(pool, window),
    }
    for way in ways.values():
        await way()
    measured: dict[str, list[Any]] = {name: [] for name in ways}
    for _ in range(runs):
        for name, way in ways.items():
            measured[name].append(await way())
    return measured


def summarize(measured: dict[str, list[Any]]) -> dict[str, Any]:
    """Medians: wall times, their ratio, each query alone (from the serial runs), the slowest query."""
    reports: dict[str, list[Report]] = {"serial": measured["serial"], "fanned_out": measured["fanned_out"]}
    serial = [r.timing.wall_ms for r in reports["serial"]]
    fanned = [r.timing.wall_ms for r in reports["fanned_out"]]
    per_query = {
        name: statistics.median(r.timing.queries_ms[name] for r in reports["serial"]) for name in QUERY_NAMES
    }
    slowest_name = max(per_query, key=per_query.__getitem__)
    slowest_fanned = statistics.median(r.timing.slowest[1] for r in reports["fanned_out"])
    first = reports["serial"][0]
    assert all(r.figures() == first.figures() for rs in reports.values() for r in rs)
    for _, raw in measured["raw_serial"] + measured["raw_fanned_out"]:  # the baseline finds the same
        assert (raw["events"], raw["by_type"], raw["dead_letters"]) == (
            first.events,
            first.by_type,
            first.dead_letters,
        )
    raw_serial_ms = statistics.median(ms for ms, _ in measured["raw_serial"])
    raw_fanned_ms = statistics.median(ms for ms, _ in measured["raw_fanned_out"])
    return {
        "events_in_window": first.events,
        "serial_ms": round(statistics.median(serial), 2),
        "fanned_out_ms": round(statistics.median(fanned), 2),
        "raw_serial_ms": round(raw_serial_ms, 2),
        "raw_fanned_out_ms": round(raw_fanned_ms, 2),
        "speedup": round(statistics.median(serial) / statistics.median(fanned), 2),
        "raw_speedup": round(raw_serial_ms / raw_fanned_ms, 2),
        "slowest_query": slowest_name,
        "slowest_query_alone_ms": round(per_query[slowest_name], 2),
        "slowest_query_fanned_out_ms": round(slowest_fanned, 2),
        "fanned_out_over_slowest_alone": round(statistics.median(fanned) / per_query[slowest_name], 2),
        "queries_alone_ms": {name: round(ms, 2) for name, ms in per_query.items()},
        "runs_ms": {
            "serial": serial,
            "fanned_out": fanned,
            "raw_serial": [round(ms, 2) for ms, _ in measured["raw_serial"]],
            "raw_fanned_out": [round(ms, 2) for ms, _ in measured["raw_fanned_out"]],
        },
    }


#: The two server configurations measured: PostgreSQL's parallel query as configured, and off.
PARALLEL_QUERY = {"on": None, "off": "0"}


def table(results: dict[str, dict[str, Any]], rows: int, pool_size: int, runs: int) -> str:
    """The medians as one table: a row per way of running the report, a column pair per configuration."""
    first = next(iter(results.values()))
    heads = "".join(f"{'parallel query ' + mode:>26}" for mode in results)
    lines = [
        f"report over the last hour: {first['events_in_window']:,} events in the window, {rows:,} rows,"
        f" pool_size {pool_size}, median of {runs} runs",
        "",
        f"{'':36}{heads}",
        f"{'':36}" + f"{'ms':>16}{'ratio':>10}" * len(results),
    ]

    def row(label: str, key: str) -> str:
        cells = "".join(f"{r[key]:>16.1f}{r[key] / r['serial_ms']:>10.2f}" for r in results.values())
        return f"{label:36}{cells}"

    lines += [
        row("serial (one session)", "serial_ms"),
        row("fanned out (a session per query)", "fanned_out_ms"),
        row("slowest query alone", "slowest_query_alone_ms"),
        row("raw asyncpg, serial", "raw_serial_ms"),
        row("raw asyncpg, fanned out", "raw_fanned_out_ms"),
        "",
    ]
    for mode, r in results.items():
        lines.append(
            f"parallel query {mode}: speed-up serial/fanned out {r['speedup']:.2f}x"
            f" (raw asyncpg {r['raw_speedup']:.2f}x),"
            f" fanned out/slowest alone {r['fanned_out_over_slowest_alone']:.2f};"
            " each query alone (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in r["queries_alone_ms"].items())
        )
    return "\n".join(lines)


async def run_configuration(
    url: str, pool_size: int, workers: str | None, runs: int, now: datetime
) -> dict[str, Any]:
    """Measure with ``max_parallel_workers_per_gather`` set to ``workers`` (None: the server's setting)."""
    if workers is not None:
        admin = await asyncpg.connect(make_url(url).set(drivername="postgresql").render_as_string(False))
        try:
            await admin.execute(
                f'ALTER DATABASE "{DATABASE}" SET max_parallel_workers_per_gather = {int(workers)}'
            )
        finally:
            await admin.close()
    db = Database.from_settings(load_settings(database_url=url, db_pool_size=pool_size, log_level="WARNING"))
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size)
    try:
        window = Window(now - timedelta(hours=1), now + timedelta(seconds=1), "1h")
        return summarize(await measure(db, pool, window, runs))
    finally:
        await pool.close()
        await db.dispose()


async def main(args: argparse.Namespace) -> None:
    """Create, fill, measure each configuration, report, clean up."""
    dsn = await create_database(args.pg_url)
    url = make_url(dsn).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
    try:
        db = Database.from_settings(load_settings(database_url=url, log_level="WARNING"))
        try:
            await schema.upgrade(db.engine)
        finally:
            await db.dispose()
        now = datetime.now(UTC)
        fill_s = await fill(dsn, args.rows, now)
        results = {
            mode: await run_configuration(url, args.pool_size, workers, args.runs, now)
            for mode, workers in PARALLEL_QUERY.items()
        }
    finally:
        if not args.keep:
            await drop_database(args.pg_url)
    print(table(results, args.rows, args.pool_size, args.runs))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "benchmark": "report",
        "command": "python bench/report.py"
        f" --rows {args.rows} --runs {args.runs} --pool-size {args.pool_size}",
        "rows": args.rows,
        "fill_s": round(fill_s, 2),
        "pool_size": args.pool_size,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "parallel_query": results,
    }
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nfilled in {fill_s:.1f}s; results written to {RESULTS}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="events to store (default 200000)")
    parser.add_argument("--runs", type=int, default=5, help="timed reports each way (default 5)")
    parser.add_argument(
        "--pool-size", type=int, default=6, help="connections kept: 6 lets all queries run at once"
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("EVENTWORKER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL server allowed to create databases",
    )
    parser.add_argument("--keep", action="store_true", help=f"keep the {DATABASE} database afterwards")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_arguments()))
