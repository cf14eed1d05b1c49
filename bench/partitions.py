"""Partitioned ``events`` against one table, same run: ingestion into a big table, a day's retention,
table and index bytes, and the conversion of a populated table.

Two databases of this run, one migrated with ``EVENTWORKER_PARTITION_INTERVAL=none`` (one table, as
MySQL/MariaDB/SQLite and older PostgreSQL deployments keep it), one with ``day``:

1. **ingestion into the empty tables**: the ``ingest_events`` job in this process (no Redis: what is
   measured is the database's side), batches of ``batch_size`` synthetic events (``bench/events.py``,
   5 % repeats and 2 % invalid) with random 128-bit ids, as UUIDs would be; the two layouts take
   turns, ``runs`` times each; events/s offered to the job;
2. **the preload**: ``rows`` events generated on the server (``generate_series``; ids from md5, so
   random; about 200 bytes of JSON ``data``), spread evenly over ``days`` days ending yesterday, into
   both (and their identities into ``event_keys``); then ``VACUUM ANALYZE`` and a ``CHECKPOINT``;
3. **bytes** of each layout (table, indexes, TOAST; ``event_keys`` apart) per million events;
4. **ingestion into the preloaded tables**, as in 1, and its ratio to 1 per layout;
3a. **rollups over the preload**: ``update_rollups``'s work (:func:`jobs.rollup.update`) counting the
   whole preloaded backlog, in transactions of ``EVENTWORKER_ROLLUP_TRANSACTION_ROWS``, each layout;
4a. **reads of the preloaded tables**: the report (``eventworker stats``) over one hour of the middle
   day, ``runs`` times each layout in turn (a partitioned table reads one partition), and a whole
   export to NDJSON (``bench/export.py``'s eventworker contender: COPY, in a process of its own with
   its peak RSS), once each;
5. **retention of the oldest day** (``rows / days`` events) on both: ``run_retention`` with the cutoff
   at that day's end: the partitioned one detaches and drops the day's partition (its identities'
   chunked delete timed apart), the other deletes the same rows in chunks of ``chunk_size``;
6. **the conversion** of the unpartitioned table, now holding the other days (``eventworker
   partition``'s :func:`~worker.db.sql.partition_convert.convert`), each step timed.
"""

from __future__ import annotations

import random
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import asyncpg
import orjson

from bench.common import RUN_TAG, BenchDatabase, load, median
from bench.events import valid_event
from bench.export import run_child

#: The server-side row generator of the preload: ``$1`` first number, ``$2`` last, ``$3`` the first
#: row's received_at, ``$4`` seconds between rows, ``$5`` this run's tag (the ids' salt).
_GENERATED = """
SELECT '/bench/source-' || (g % 50) AS source, md5($5 || g) AS event_id,
       'com.example.type.' || (g % 20) AS type, '1.0' AS specversion,
       $3::timestamptz + (g - $1) * make_interval(secs => $4) AS time,
       'customer/' || lpad((g % 10000)::text, 5, '0') AS subject, 'application/json' AS datacontenttype,
       jsonb_build_object('order_id', 'ord-' || lpad(g::text, 9, '0'), 'customer', 'cus-' || (g % 1000000),
         'amount', g % 100000, 'currency', 'EUR', 'channel', 'web', 'ref', md5(g::text),
         'lines', jsonb_build_array(jsonb_build_object('sku', 'SKU-' || (g % 100000), 'qty', g % 5 + 1,
           'price', g % 9999))) AS data,
       CASE WHEN g % 10 = 3 THEN jsonb_build_object('traceparent', '00-' || md5($5 || g)
         || '-00f067aa0ba902b7-01') END AS extensions,
       $3::timestamptz + (g - $1) * make_interval(secs => $4) AS received_at, 'preload' AS job_id
FROM generate_series($1::bigint, $2::bigint) AS g
"""
_COLUMNS = (
    "source, event_id, type, specversion, time, subject, datacontenttype, data, extensions, received_at,"
    " job_id"
)
_PLAIN = f"INSERT INTO events ({_COLUMNS}) {_GENERATED}"
_KEYED = (
    f"WITH generated AS MATERIALIZED ({_GENERATED}),"
    " keys AS (INSERT INTO event_keys (source, event_id, received_at)"
    " SELECT source, event_id, received_at FROM generated)"
    f" INSERT INTO events ({_COLUMNS}) SELECT {_COLUMNS} FROM generated"
)
#: Rows per preload statement (one transaction each, as a backfill would go).
PRELOAD_CHUNK = 1_000_000
_SIZES = """
SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
FROM pg_class c
WHERE c.oid = to_regclass('events')
   OR c.oid IN (SELECT inhrelid FROM pg_inherits WHERE inhparent = to_regclass('events'))
"""


@dataclass(frozen=True)
class PartitionOptions:
    """How big the partitions section runs."""

    rows: int = 20_000_000
    days: int = 5
    ingest_events: int = 200_000
    batch_size: int = 1000
    runs: int = 3
    chunk_size: int = 5000


def _jobs(count: int, batch_size: int, tag: str) -> list[list[Any]]:
    """Ingest job arguments: ``count`` inputs in batches, bench/events.py's events with random ids."""
    rng = random.Random(tag)
    events: list[Any] = []
    for n in range(count):
        if n % 50 == 7:
            events.append({"specversion": "1.0", "source": "/bench/bad", "type": "t"})  # no id: a dead letter
        elif n % 20 == 11 and events:
            events.append(events[-1 - rng.randrange(min(len(events), 50))])  # a repeat, sent shortly before
        else:
            events.append(valid_event(n, rng, tag) | {"id": f"{rng.getrandbits(128):032x}"})
    return [
        orjson.loads(orjson.dumps(events[start : start + batch_size]))
        for start in range(0, count, batch_size)
    ]


async def _ingest(database: Any, settings: Any, jobs: list[list[Any]], tag: str) -> float:
    """Run the ingest job over ``jobs`` in this process; return events/s offered."""
    from jobs.ingest import ingest_events

    ctx: dict[str, Any] = {"settings": settings, "db": database, "redis": None, "job_try": 1}
    events = sum(len(job) for job in jobs)
    started = time.perf_counter()
    for n, job in enumerate(jobs):
        await ingest_events(cast(Any, ctx | {"job_id": f"{tag}-{n}"}), job)
    return events / (time.perf_counter() - started)


async def _ingestion(
    engines: dict[str, tuple[Any, Any]], options: PartitionOptions, stage: str
) -> dict[str, Any]:
    """Both layouts taking turns, ``runs`` times: median events/s of each."""
    rates: dict[str, list[float]] = {name: [] for name in engines}
    for name, (database, settings) in engines.items():  # warm up: connections, caches, the first partition
        tag = f"{RUN_TAG}-{stage}-{name}-warm"
        await _ingest(database, settings, _jobs(2 * options.batch_size, options.batch_size, tag), tag)
    for run in range(options.runs):
        order = list(engines) if run % 2 == 0 else list(reversed(engines))
        for name in order:
            tag = f"{RUN_TAG}-{stage}-{name}-{run}"
            jobs = _jobs(options.ingest_events, options.batch_size, tag)
            database, settings = engines[name]
            rates[name].append(await _ingest(database, settings, jobs, tag))
    return {
        name: {"events_per_s": round(median(values)), "runs": [round(v) for v in values]}
        for name, values in rates.items()
    }


async def _sql(db: BenchDatabase, *statements: str) -> None:
    connection = await asyncpg.connect(db.dsn)
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()


async def _fetchval(db: BenchDatabase, statement: str) -> Any:
    connection = await asyncpg.connect(db.dsn)
    try:
        return await connection.fetchval(statement)
    finally:
        await connection.close()


async def _preload(
    db: BenchDatabase, options: PartitionOptions, start: datetime, keyed: bool
) -> dict[str, Any]:
    """Generate ``rows`` events received evenly over ``days`` days from ``start``."""
    step = options.days * 86_400 / options.rows
    connection = await asyncpg.connect(db.dsn)
    started = time.perf_counter()
    try:
        for first in range(1, options.rows + 1, PRELOAD_CHUNK):
            last = min(first + PRELOAD_CHUNK - 1, options.rows)
            at = start + timedelta(seconds=(first - 1) * step)
            await connection.execute(_KEYED if keyed else _PLAIN, first, last, at, step, RUN_TAG)
        seconds = time.perf_counter() - started
        await connection.execute("VACUUM ANALYZE")
        await connection.execute("CHECKPOINT")
    finally:
        await connection.close()
    return {"rows": options.rows, "seconds": round(seconds, 1), "rows_per_s": round(options.rows / seconds)}


async def _bytes(db: BenchDatabase) -> dict[str, int]:
    events = int(await _fetchval(db, _SIZES))
    keys = int(await _fetchval(db, "SELECT coalesce(pg_total_relation_size(to_regclass('event_keys')), 0)"))
    return {"events": events, "event_keys": keys}


def _timed(module: Any, name: str, spent: dict[str, float]) -> Callable[..., Awaitable[Any]]:
    """``module.name`` wrapped to add its wall time to ``spent[name]``."""
    original = getattr(module, name)

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            spent[name] = spent.get(name, 0.0) + time.perf_counter() - started

    return wrapper


async def _rollups(database: Any, settings: Any) -> dict[str, Any]:
    """Count the whole backlog into the rollups, as update_rollups does, until caught up."""
    from jobs.rollup import update

    started = time.perf_counter()
    result = await update(database, settings)
    seconds = time.perf_counter() - started
    return {
        "seconds": round(seconds, 1),
        "rows": result["rows"],
        "rows_per_s": round(result["rows"] / seconds) if seconds else None,
        "transactions": result["transactions"],
        "buckets": result["buckets"],
    }


async def _reads(
    engines: dict[str, tuple[Any, Any]], dbs: dict[str, BenchDatabase], hour: datetime, runs: int
) -> dict[str, Any]:
    """The one-hour report (median ms of ``runs``, layouts in turn) and a whole export of each layout."""
    from jobs.stats import build_report
    from worker.domain.report import Window

    window = Window(start=hour, end=hour + timedelta(hours=1), label="1h")
    times: dict[str, list[float]] = {name: [] for name in engines}
    events: dict[str, int] = {}
    for run in range(runs + 1):  # the first round warms the caches up and is not counted
        for name in engines if run % 2 == 0 else list(reversed(engines)):
            started = time.perf_counter()
            report = await build_report(engines[name][0], window)
            if run:
                times[name].append((time.perf_counter() - started) * 1000)
            events[name] = report.events
    exports: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="ew-bench-partitions-") as tmp:
        for name, db in dbs.items():
            target = Path(tmp) / "export.ndjson"
            measured = run_child("eventworker", db.dsn, target, 5000)
            target.unlink()
            exports[name] = {
                "rows": measured["rows"],
                "seconds": round(measured["seconds"], 1),
                "rows_per_s": round(measured["rows"] / measured["seconds"]),
                "peak_rss_mib": round(measured["peak_kib"] / 1024, 1),
            }
    return {
        "report_1h": {name: {"ms": round(median(v), 1), "events": events[name]} for name, v in times.items()},
        "export": exports,
    }


async def _retention(
    database: Any, settings: Any, cutoff: datetime, chunk_size: int, *, partitioned: bool
) -> dict[str, Any]:
    """One retention run with its cutoff at ``cutoff``; the partition steps timed apart."""
    from jobs.retention import run_retention
    from worker.db.sql import partition_sql

    steps = ("delete_handler_runs_of", "detach", "delete_keys_chunk", "drop_table", "finalize_pending")
    spent: dict[str, float] = {}
    originals = {name: getattr(partition_sql, name) for name in steps}
    for name in steps:
        setattr(partition_sql, name, _timed(partition_sql, name, spent))
    settings = settings.model_copy(update={"retention_days": 1, "retention_chunk_size": chunk_size})
    try:
        started = time.perf_counter()
        result = await run_retention(database, settings, cutoff + timedelta(days=1))
        seconds = time.perf_counter() - started
    finally:
        for name, original in originals.items():
            setattr(partition_sql, name, original)
    return {
        "partitioned": partitioned,
        "seconds": round(seconds, 2),
        "events_deleted": result["events_deleted"],
        "chunks": result["event_chunks"],
        "partitions_dropped": result["partitions_dropped"],
        "steps_s": {name: round(value, 3) for name, value in spent.items()},
    }


async def partitions(
    plain: BenchDatabase, parted: BenchDatabase, options: PartitionOptions
) -> dict[str, Any]:
    """The whole section (module docstring); both databases are created here and dropped by the caller."""
    from worker.config import load_settings
    from worker.db.engine import Database
    from worker.db.sql import partition_convert
    from worker.domain.partitions import floor
    from worker.logging import configure_logging

    configure_logging("WARNING", "json", [])
    await plain.create()
    await parted.create(partition_interval="day")
    today = floor(datetime.now(UTC), "day")
    start = today - timedelta(days=options.days)
    # The preload's days get their partitions as an ingest would make them, before it runs.
    settings = {
        name: load_settings(database_url=db.url, log_level="WARNING", partitions_ahead=2)
        for name, db in (("one table", plain), ("partitioned", parted))
    }
    engines = {name: (Database.from_settings(s), s) for name, s in settings.items()}
    result: dict[str, Any] = {"options": options.__dict__, "load_before": load()}
    try:
        await _make_days(engines["partitioned"][0], start, options.days)
        result["empty"] = await _ingestion(engines, options, "empty")
        result["preload"] = {
            "one table": await _preload(plain, options, start, keyed=False),
            "partitioned": await _preload(parted, options, start, keyed=True),
        }
        sizes = {"one table": await _bytes(plain), "partitioned": await _bytes(parted)}
        stored = {"one table": await plain.count(), "partitioned": await parted.count()}
        result["bytes"] = {
            name: {
                **sizes[name],
                "events_per_million": round(sizes[name]["events"] / stored[name] * 1e6),
                "event_keys_per_million": round(sizes[name]["event_keys"] / stored[name] * 1e6),
                "rows": stored[name],
            }
            for name in sizes
        }
        result["rollups"] = {name: await _rollups(*engine) for name, engine in engines.items()}
        result["loaded"] = await _ingestion(engines, options, "loaded")
        middle = start + timedelta(days=options.days // 2, hours=12)
        result["reads"] = await _reads(
            engines, {"one table": plain, "partitioned": parted}, middle, options.runs
        )
        cutoff = start + timedelta(days=1)
        result["retention"] = {
            "partitioned": await _retention(
                *engines["partitioned"], cutoff, options.chunk_size, partitioned=True
            ),
            "one table": await _retention(
                *engines["one table"], cutoff, options.chunk_size, partitioned=False
            ),
        }
        said: list[str] = []
        rows = await plain.count()
        started = time.perf_counter()
        conversion = await partition_convert.convert(
            engines["one table"][0].engine, "day", 2, datetime.now(UTC), said.append
        )
        result["conversion"] = {
            "rows": rows,
            "seconds": round(time.perf_counter() - started, 2),
            "steps_s": conversion.steps,
            "events_after": await plain.count(),
            "event_keys_after": int(await _fetchval(plain, "SELECT count(*) FROM event_keys")),
        }
    finally:
        for database, _ in engines.values():
            await database.dispose()
    result["load_after"] = load()
    return result


async def _make_days(database: Any, start: datetime, days: int) -> None:
    """The partitions of the preload's days (the maintain_partitions job makes only those ahead of now)."""
    from worker.db.sql import partition_sql

    async with database.transaction() as session:
        await partition_sql.ensure_partitions(
            session, [start + timedelta(days=d) for d in range(days + 1)], "day"
        )
