"""Benchmark: the event statistics report, serial (one session) vs. fanned out (a session per query).

    python bench/report.py --rows 200000

Creates its own PostgreSQL database ``ew_bench_report`` (dropped afterwards unless ``--keep``),
migrates it, fills it with asyncpg COPY (20 types, 50 sources, 1,000 subjects with skewed
frequencies, ``time`` a little before ``received_at``, 1 % dead letters), then builds the
report over the last hour ``--runs`` times each way, alternating, and prints the medians:
wall time serial and fanned out, their ratio, and the slowest of the report's queries alone
(from the serial runs of the same measurement: a fanned-out report cannot beat it). Results go
to ``bench/results/report.json``.

The fanned-out report also runs a second time per round with the server's parallel workers
allowed in its sessions (the report turns them off there): the measurement behind that choice.

Two baselines by hand on asyncpg: the report's own statements, and a statement per figure
(the straightforward computation, as the report ran before it counted in one pass). Every
run of every way must find the same figures, those of a statement per figure.

Around each report it reads, from Linux ``/proc/<pid>/schedstat`` of the server's processes
(PostgreSQL on this machine), how much CPU time the report's queries took and how long they
waited, runnable, for a CPU: on a shared machine, the difference between the fanned-out wall
time and the slowest query is mostly that wait.

It measures twice: with PostgreSQL's parallel query as the server has it, and with
``max_parallel_workers_per_gather = 0`` (the fanned-out report turns it off in its own
sessions either way; the serial report and the per-figure baseline use the setting).
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/report.py` puts bench/ first on the path; the suite imports itself as the `bench` package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from unittest import mock

import asyncpg
from sqlalchemy.engine import make_url

from bench.common import BenchDatabase, bench_database
from bench.events import SOURCES, TYPES
from jobs.stats import build_report
from worker.config import load_settings
from worker.db.engine import Database
from worker.db.sql import report_sql
from worker.domain.report import LAG_SAMPLE_SIZE, PERCENTILES, Report, Window, percentile

RESULTS = Path(__file__).resolve().parent / "results" / "report.json"
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
        # Written out now, not by the checkpointer while the reports run: background writing takes a
        # core from a fan-out that needs both, not from a query alone, and so inflated the ratio.
        await connection.execute("CHECKPOINT")
    finally:
        await connection.close()
    return time.perf_counter() - started


#: The baselines: statements by hand, on asyncpg connections without SQLAlchemy.
_IN_WINDOW = "received_at >= $1 AND received_at < $2"


def _counted(column: str, table: str = "events", extra: str = "", limit: str = "") -> str:
    return (
        f"SELECT {column}, count(*) AS n FROM {table} WHERE {_IN_WINDOW}{extra}"
        f" GROUP BY {column} ORDER BY n DESC, {column}{limit}"
    )


#: A statement per figure, the straightforward computation (and how the report ran before it
#: counted in one pass): every report's figures are checked against it, and its fan-out timed.
PER_FIGURE = {
    "events": f"SELECT count(*) FROM events WHERE {_IN_WINDOW}",
    "by_type": _counted("type", limit=" LIMIT 50"),
    "by_source": _counted("source", limit=" LIMIT 50"),
    "top_subjects": _counted("subject", extra=" AND subject IS NOT NULL", limit=" LIMIT 10"),
    "dead_letters": _counted("reason", table="dead_letters"),
}


def _top(figure: str, column: str, grouping: int, limit: int) -> str:
    return (
        f"SELECT '{figure}' AS figure, key, n, row_number() OVER (ORDER BY n DESC, key) AS rank FROM"
        f" (SELECT {column} AS key, n FROM g WHERE grouping = {grouping} AND {column} IS NOT NULL"
        f" ORDER BY n DESC, {column} LIMIT {limit}) AS top"
    )


#: The report's own counting statement by hand: the four counting figures from one scan.
ONE_PASS_COUNTS = (
    "WITH g AS (SELECT grouping(type, source, subject) AS grouping, type, source, subject, count(*) AS n"
    f" FROM events WHERE {_IN_WINDOW}"
    " GROUP BY GROUPING SETS ((type), (source), (subject), ()))"
    f" {_top('by_type', 'type', 0b011, 50)} UNION ALL {_top('by_source', 'source', 0b101, 50)}"
    f" UNION ALL {_top('top_subjects', 'subject', 0b110, 10)}"
    " UNION ALL SELECT 'events', NULL, n, 1 FROM g WHERE grouping = 7 ORDER BY 1, 4"
)


async def _lag_percentiles(
    connection: asyncpg.Connection, window: Window, *, as_array: bool
) -> list[float | None]:
    with_time = f"{_IN_WINDOW} AND time IS NOT NULL"
    start, end = window.start, window.end
    population = await connection.fetchval(f"SELECT count(*) FROM events WHERE {with_time}", start, end)
    step = max(1, math.ceil(population / LAG_SAMPLE_SIZE))
    sample = (
        f"SELECT extract(epoch FROM received_at - time)::float8 AS lag FROM events WHERE {with_time}"
        " AND seq % $3 = 0 LIMIT $4"
    )
    if as_array:  # as the report fetches it: one array
        arguments = (start, end, step, LAG_SAMPLE_SIZE)
        values = (
            await connection.fetchval(f"SELECT array_agg(lag) FROM ({sample}) AS sample", *arguments) or []
        )
    else:  # a row per value
        values = [row[0] for row in await connection.fetch(sample, start, end, step, LAG_SAMPLE_SIZE)]
    return [percentile(values, q) for q in PERCENTILES]


async def _raw_query(connection: asyncpg.Connection, name: str, window: Window) -> dict[str, Any]:
    """One statement (two for the lag) by hand; the figures it finds, by name."""
    start, end = window.start, window.end
    if name in {"lag", "lag_rows"}:
        return {"lag": await _lag_percentiles(connection, window, as_array=name == "lag")}
    if name == "counts":
        figures: dict[str, Any] = {"by_type": [], "by_source": [], "top_subjects": []}
        for figure, key, n, _ in await connection.fetch(ONE_PASS_COUNTS, start, end):
            if figure == "events":
                figures["events"] = n
            else:
                figures[figure].append((key, n))
        return figures
    if name == "events":
        return {"events": await connection.fetchval(PER_FIGURE["events"], start, end)}
    return {name: [tuple(row) for row in await connection.fetch(PER_FIGURE[name], start, end)]}


#: The queries the report runs, and the statement per figure it replaced (the lag sample a row per value).
QUERY_NAMES = ("counts", "lag", "dead_letters")
PER_FIGURE_NAMES = ("events", "by_type", "by_source", "top_subjects", "lag_rows", "dead_letters")


@dataclass(frozen=True, slots=True)
class RawRun:
    """One report by hand: its wall time, the figures found, and each statement's own time."""

    wall_ms: float
    figures: dict[str, Any]
    queries_ms: dict[str, float]


async def _raw_timed(
    connection: asyncpg.Connection, name: str, window: Window
) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    figures = await _raw_query(connection, name, window)
    return figures, (time.perf_counter() - started) * 1000


def _raw_run(started: float, results: dict[str, tuple[dict[str, Any], float]]) -> RawRun:
    return RawRun(
        wall_ms=(time.perf_counter() - started) * 1000,
        figures={name: value for figures, _ in results.values() for name, value in figures.items()},
        queries_ms={name: ms for name, (_, ms) in results.items()},
    )


async def raw_serial(pool: asyncpg.Pool, window: Window, names: tuple[str, ...]) -> RawRun:
    """Statements by hand, serially on one connection in one transaction."""
    started = time.perf_counter()
    async with pool.acquire() as connection, connection.transaction():
        results = {name: await _raw_timed(connection, name, window) for name in names}
    return _raw_run(started, results)


async def raw_fanned_out(
    pool: asyncpg.Pool, window: Window, names: tuple[str, ...], *, parallel_workers: bool = False
) -> RawRun:
    """Statements by hand, each on its own connection at once.

    Without parallel workers unless asked, as the report runs fanned out.
    """

    async def one(name: str) -> tuple[dict[str, Any], float]:
        async with pool.acquire() as connection, connection.transaction():
            if not parallel_workers:
                await connection.execute("SET LOCAL max_parallel_workers_per_gather = 0")
            return await _raw_timed(connection, name, window)

    started = time.perf_counter()
    results = await asyncio.gather(*(one(name) for name in names))
    return _raw_run(started, dict(zip(names, results, strict=True)))


#: The bench database's other server processes: the report's sessions and the baselines' connections.
_BACKENDS = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()"


def _schedstat(pid: int) -> tuple[int, int]:
    """Nanoseconds a local process has spent on a CPU and waiting for one (Linux ``/proc``, else zeros)."""
    try:
        on_cpu, waiting, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
    except (OSError, ValueError):
        return 0, 0
    return int(on_cpu), int(waiting)


@dataclass(frozen=True, slots=True)
class ServerTime:
    """What the server's processes spent while one report ran: on a CPU, and runnable but waiting for one."""

    cpu_ms: float
    wait_ms: float
    busiest_cpu_ms: float
    """The CPU time of the busiest process: fanned out, that of the costliest query."""


async def _with_server_time(
    monitor: asyncpg.Connection, way: Callable[[], Awaitable[Any]]
) -> tuple[Any, ServerTime]:
    """Run ``way`` and read the backends' CPU and run-queue time around it (parallel workers not counted).

    ``monitor`` is a connection of its own, outside the pools measured.
    """
    pids = [row[0] for row in await monitor.fetch(_BACKENDS)]
    before = {pid: _schedstat(pid) for pid in pids}
    result = await way()
    after = {pid: _schedstat(pid) for pid in pids}
    cpu = [after[pid][0] - before[pid][0] for pid in pids]
    wait = sum(after[pid][1] - before[pid][1] for pid in pids)
    return result, ServerTime(
        cpu_ms=sum(cpu) / 1e6, wait_ms=wait / 1e6, busiest_cpu_ms=max(cpu, default=0) / 1e6
    )


async def _keep_server_setting(session: Any) -> None:
    """In place of :func:`report_sql.without_parallel_workers`: the server's setting holds."""


async def _with_server_workers(report: Awaitable[Report]) -> Report:
    """``report`` with the parallel workers the server allows, in the fanned-out sessions too."""
    with mock.patch.object(report_sql, "without_parallel_workers", _keep_server_setting):
        return await report


async def measure(
    db: Database, pool: asyncpg.Pool, monitor: asyncpg.Connection, window: Window, runs: int
) -> dict[str, list[Any]]:
    """``runs`` reports each way, alternating so that drift hits all alike, after one warm-up each.

    Around each report the server's CPU and run-queue time are read too.
    """
    ways: dict[str, Callable[[], Awaitable[Any]]] = {
        "serial": lambda: build_report(db, window, fan_out=False),
        "fanned_out": lambda: build_report(db, window, fan_out=True),
        "fanned_out_server_workers": lambda: _with_server_workers(build_report(db, window, fan_out=True)),
        "raw_serial": lambda: raw_serial(pool, window, QUERY_NAMES),
        "raw_fanned_out": lambda: raw_fanned_out(pool, window, QUERY_NAMES),
        "per_figure_serial": lambda: raw_serial(pool, window, PER_FIGURE_NAMES),
        "per_figure_fanned_out": lambda: raw_fanned_out(
            pool, window, PER_FIGURE_NAMES, parallel_workers=True
        ),
    }
    for way in ways.values():
        await way()
    measured: dict[str, list[Any]] = {key: [] for name in ways for key in (name, f"{name}_server")}
    for _ in range(runs):
        for name, way in ways.items():
            result, server = await _with_server_time(monitor, way)
            measured[name].append(result)
            measured[f"{name}_server"].append(server)
    return measured


def _figures(report: Report) -> dict[str, Any]:
    """A report's figures in the baselines' form."""
    return {
        "events": report.events,
        "by_type": report.by_type,
        "by_source": report.by_source,
        "top_subjects": report.top_subjects,
        "lag": list(report.lag.percentiles.values()),
        "dead_letters": report.dead_letters,
    }


def check_figures(measured: dict[str, list[Any]]) -> Report:
    """Every run, each way, found the same figures, those of a statement per figure; the first report."""
    reports: list[Report] = (
        measured["serial"] + measured["fanned_out"] + measured["fanned_out_server_workers"]
    )
    first = reports[0]
    assert all(r.figures() == first.figures() for r in reports), "the reports disagree"
    expected = _figures(first)
    for way in RAW_WAYS:
        for run in measured[way]:
            assert run.figures == expected, f"{way} found other figures than the report"
    return first


#: Short names of the ways measured, for the notes under the table.
LABELS = {
    "serial": "serial",
    "fanned_out": "fanned out",
    "fanned_out_server_workers": "fanned out with workers",
    "raw_serial": "raw serial",
    "raw_fanned_out": "raw fanned out",
    "per_figure_serial": "per figure serial",
    "per_figure_fanned_out": "per figure fanned out",
}

#: The ways measured by hand.
RAW_WAYS = ("raw_serial", "raw_fanned_out", "per_figure_serial", "per_figure_fanned_out")


SERVER_TIMES = ("cpu_ms", "wait_ms", "busiest_cpu_ms")


def _median_of(times: list[ServerTime], field: str) -> float:
    return round(statistics.median(getattr(time, field) for time in times), 2)


def summarize(measured: dict[str, list[Any]]) -> dict[str, Any]:
    """Medians: wall times, their ratio, each query alone (from the serial runs), the slowest query."""
    first = check_figures(measured)
    serial = [r.timing.wall_ms for r in measured["serial"]]
    fanned = [r.timing.wall_ms for r in measured["fanned_out"]]
    per_query = {
        name: statistics.median(r.timing.queries_ms[name] for r in measured["serial"]) for name in QUERY_NAMES
    }
    per_figure = {
        name: statistics.median(run.queries_ms[name] for run in measured["per_figure_serial"])
        for name in PER_FIGURE_NAMES
    }
    slowest_name = max(per_query, key=per_query.__getitem__)
    slowest_fanned = statistics.median(r.timing.slowest[1] for r in measured["fanned_out"])
    raw = {way: statistics.median(run.wall_ms for run in measured[way]) for way in RAW_WAYS}
    return {
        "events_in_window": first.events,
        "serial_ms": round(statistics.median(serial), 2),
        "fanned_out_ms": round(statistics.median(fanned), 2),
        "fanned_out_server_workers_ms": round(
            statistics.median(r.timing.wall_ms for r in measured["fanned_out_server_workers"]), 2
        ),
        **{f"{way}_ms": round(ms, 2) for way, ms in raw.items()},
        "speedup": round(statistics.median(serial) / statistics.median(fanned), 2),
        "raw_speedup": round(raw["raw_serial"] / raw["raw_fanned_out"], 2),
        "per_figure_speedup": round(raw["per_figure_serial"] / raw["per_figure_fanned_out"], 2),
        "slowest_query": slowest_name,
        "slowest_query_alone_ms": round(per_query[slowest_name], 2),
        "slowest_query_fanned_out_ms": round(slowest_fanned, 2),
        "fanned_out_over_slowest_alone": round(statistics.median(fanned) / per_query[slowest_name], 2),
        "queries_alone_ms": {name: round(ms, 2) for name, ms in per_query.items()},
        "per_figure_alone_ms": {name: round(ms, 2) for name, ms in per_figure.items()},
        "server_ms": {
            way: {field: _median_of(measured[f"{way}_server"], field) for field in SERVER_TIMES}
            for way in ("serial", "fanned_out", "fanned_out_server_workers", *RAW_WAYS)
        },
        "runs_ms": {
            "serial": serial,
            "fanned_out": fanned,
            **{way: [round(run.wall_ms, 2) for run in measured[way]] for way in RAW_WAYS},
        },
    }


#: What the fanned-out report's wall time should stay within, as a multiple of its slowest query alone.
TARGET = 1.15

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
        row("fanned out with parallel workers", "fanned_out_server_workers_ms"),
        row("slowest query alone", "slowest_query_alone_ms"),
        row("raw asyncpg, serial", "raw_serial_ms"),
        row("raw asyncpg, fanned out", "raw_fanned_out_ms"),
        row("a statement per figure, serial", "per_figure_serial_ms"),
        row("a statement per figure, fanned out", "per_figure_fanned_out_ms"),
        "",
    ]
    for mode, r in results.items():
        lines.append(
            f"parallel query {mode}: fanned out/slowest query alone {r['fanned_out_over_slowest_alone']:.2f}"
            f" (target {TARGET:.2f}); speed-up serial/fanned out {r['speedup']:.2f}x"
            f" (raw asyncpg {r['raw_speedup']:.2f}x, a statement per figure {r['per_figure_speedup']:.2f}x);"
            " each query alone (ms): " + ", ".join(f"{k} {v:.1f}" for k, v in r["queries_alone_ms"].items())
        )
        server = r["server_ms"]
        lines.append(
            "  server CPU / waiting for a CPU per report (ms): "
            + ", ".join(f"{LABELS[way]} {t['cpu_ms']:.0f} / {t['wait_ms']:.0f}" for way, t in server.items())
            + f"; fanned out, its busiest process {server['fanned_out']['busiest_cpu_ms']:.1f}"
        )
        lines.append(
            "  a statement per figure, each alone (ms): "
            + ", ".join(f"{k} {v:.1f}" for k, v in r["per_figure_alone_ms"].items())
        )
    return "\n".join(lines)


async def run_configuration(
    bench_db: BenchDatabase, pool_size: int, workers: str | None, runs: int, now: datetime
) -> dict[str, Any]:
    """Measure with ``max_parallel_workers_per_gather`` set to ``workers`` (None: the server's setting)."""
    url = bench_db.url
    if workers is not None:
        admin = await asyncpg.connect(bench_db.dsn)
        try:
            await admin.execute(
                f'ALTER DATABASE "{bench_db.name}" SET max_parallel_workers_per_gather = {int(workers)}'
            )
        finally:
            await admin.close()
    db = Database.from_settings(load_settings(database_url=url, db_pool_size=pool_size, log_level="WARNING"))
    dsn = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    pool = await asyncpg.create_pool(dsn, min_size=pool_size, max_size=pool_size)
    monitor = await asyncpg.connect(dsn)
    try:
        window = Window(now - timedelta(hours=1), now + timedelta(seconds=1), "1h")
        return summarize(await measure(db, pool, monitor, window, runs))
    finally:
        await monitor.close()
        await pool.close()
        await db.dispose()


async def main(args: argparse.Namespace) -> None:
    """Create, fill, measure each configuration, report, clean up."""
    bench_db = await bench_database("report", args.pg_url).create()
    try:
        now = datetime.now(UTC)
        fill_s = await fill(bench_db.dsn, args.rows, now)
        results = {
            mode: await run_configuration(bench_db, args.pool_size, workers, args.runs, now)
            for mode, workers in PARALLEL_QUERY.items()
        }
    finally:
        if args.keep:
            print(f"kept database {bench_db.name}")
        else:
            await bench_db.drop()
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
    parser.add_argument("--keep", action="store_true", help="keep the bench database afterwards")
    return parser.parse_args()


if __name__ == "__main__":
    asyncio.run(main(_arguments()))
