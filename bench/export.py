"""Benchmark: ``eventworker export`` against a raw asyncpg server-side cursor writing the same NDJSON.

    python bench/export.py --rows 1000000

Creates its own PostgreSQL database ``ew_bench_export`` (dropped afterwards unless ``--keep``),
migrates it, fills it with asyncpg COPY (20 types, 50 sources, subjects on 90 % of events,
an extension on 10 %, binary data on 2 %, no time on 2 %), then exports the whole table
``--runs`` times each way, alternating, each run in a fresh process:

- **eventworker**: :func:`jobs.export.export_to_file`, as the job and the CLI run it: on
  PostgreSQL through asyncpg, ``COPY (SELECT <each event's NDJSON line>) TO STDOUT`` in one
  REPEATABLE READ snapshot, the bytes batched to a thread that writes them, an atomic file;
- **eventworker generic**: the same call with ``use_copy=False``: the path every other driver
  takes (SQLAlchemy Core rows from a server-side cursor, formatted with orjson in Python);
- **raw asyncpg**: one connection, a REPEATABLE READ transaction, an asyncpg cursor fetching
  ``--chunk-size`` rows at a time, orjson lines written to a file, fsynced and renamed.

All write byte-identical files (checked by SHA-256). The table shows the median rows/s and
the largest peak RSS of the runs (``RUSAGE_CHILDREN`` of a slim process that ran the export as
its only child), and the RSS each child had before exporting (after its imports), so the
export's own memory is the difference. Results go to ``bench/results/export.json``.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/export.py` puts bench/ first on the path; the suite imports itself as the `bench` package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import hashlib
import json
import os
import platform
import random
import resource
import statistics
import subprocess
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
from sqlalchemy.engine import make_url

from bench.common import BenchDatabase, bench_database
from bench.events import SOURCES, TYPES

RESULTS = Path(__file__).resolve().parent / "results" / "export.json"
WAYS = ("eventworker", "eventworker generic", "raw asyncpg")
BASELINE = "raw asyncpg"


def _records(first: int, count: int, now: datetime, rng: random.Random) -> list[tuple[Any, ...]]:
    records = []
    for n in range(first, first + count):
        received_at = now - timedelta(seconds=count - n)
        event_time = None if n % 50 == 0 else received_at - timedelta(milliseconds=rng.randint(0, 5000))
        binary = n % 50 == 1
        data = (
            None if binary else json.dumps({"n": n, "amount": n % 997, "currency": "EUR", "note": "x" * 40})
        )
        records.append(
            (
                SOURCES[n % len(SOURCES)],
                f"evt-{n}",
                TYPES[rng.randrange(len(TYPES))],
                "1.0",
                event_time,
                None if n % 10 == 0 else f"customer/{n % 5000:04d}",
                "application/json" if not binary else "application/octet-stream",
                data,
                "aGVsbG8gd29ybGQ=" if binary else None,
                json.dumps({"traceparent": f"00-{n:032x}-{n:016x}-01"}) if n % 10 == 3 else None,
                received_at,
                "bench",
            )
        )
    return records


async def fill(dsn: str, rows: int) -> float:
    """COPY ``rows`` events in, 100,000 at a time; return seconds taken (generation included)."""
    started = time.perf_counter()
    rng, now = random.Random(42), datetime.now(UTC)
    columns = [
        "source",
        "event_id",
        "type",
        "specversion",
        "time",
        "subject",
        "datacontenttype",
        "data",
        "data_base64",
        "extensions",
        "received_at",
        "job_id",
    ]
    connection = await asyncpg.connect(dsn)
    try:
        for first in range(0, rows, 100_000):
            records = _records(first, min(100_000, rows - first), now, rng)
            await connection.copy_records_to_table("events", records=records, columns=columns)
        await connection.execute("VACUUM ANALYZE events")
    finally:
        await connection.close()
    return time.perf_counter() - started


# -- the two contenders, each run in a child process ------------------------------------------

RAW_QUERY = """
SELECT seq, event_id, source, type, specversion, time, subject, datacontenttype, dataschema,
       data::text, data_base64, extensions::text, received_at
FROM events ORDER BY seq
"""
_OPTIONAL = ("subject", "datacontenttype", "dataschema")


def _raw_line(row: asyncpg.Record) -> bytes:
    seq, event_id, source, type_, version, when, subject, ctype, schema, data, b64, ext, received = row
    event: dict[str, Any] = {"specversion": version, "id": event_id, "source": source, "type": type_}
    if when is not None:
        event["time"] = when
    for name, value in zip(_OPTIONAL, (subject, ctype, schema), strict=True):
        if value is not None:
            event[name] = value
    if ext is not None:
        event.update(orjson.loads(ext))
    event["ewseq"] = seq
    event["ewreceivedat"] = received
    if data is not None and data != "null":
        event["data"] = orjson.Fragment(data)
    elif b64 is not None:
        event["data_base64"] = b64
    return orjson.dumps(event, option=orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE)


async def raw_export(dsn: str, target: Path, chunk_size: int) -> int:
    """The baseline: what a hand-written asyncpg exporter would do."""
    temp = target.with_name(target.name + ".tmp")
    rows = 0
    connection = await asyncpg.connect(dsn)
    try:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            cursor = await connection.cursor(RAW_QUERY)
            with temp.open("wb") as file:
                while chunk := await cursor.fetch(chunk_size):
                    file.write(b"".join(_raw_line(row) for row in chunk))
                    rows += len(chunk)
                file.flush()
                os.fsync(file.fileno())
        os.replace(temp, target)
    finally:
        await connection.close()
    return rows


async def eventworker_export(url: str, target: Path, chunk_size: int, *, use_copy: bool = True) -> int:
    """eventworker's export, exactly as the job and the CLI run it (``use_copy=False``: the generic path)."""
    from jobs.export import export_to_file
    from worker.config import load_settings
    from worker.db.engine import Database
    from worker.domain.export import ExportFilter

    db = Database.from_settings(load_settings(database_url=url, log_level="WARNING"))
    try:
        summary = await export_to_file(db, target, ExportFilter(), chunk_size=chunk_size, use_copy=use_copy)
    finally:
        await db.dispose()
    return summary.rows


def child(way: str, dsn: str, target: Path, chunk_size: int) -> dict[str, Any]:
    """Run one export in this (child) process; report rows, seconds and what was written."""
    if way.startswith("eventworker"):
        import jobs.export  # noqa: F401 - imported before the baseline RSS is read, like raw's imports

        url = make_url(dsn).set(drivername="postgresql+asyncpg").render_as_string(hide_password=False)
        work = eventworker_export(url, target, chunk_size, use_copy=way == "eventworker")
    else:
        work = raw_export(dsn, target, chunk_size)
    before_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    rows = asyncio.run(work)
    seconds = time.perf_counter() - started
    with target.open("rb") as file:
        digest = hashlib.file_digest(file, "sha256").hexdigest()
    return {
        "rows": rows,
        "seconds": seconds,
        "bytes": target.stat().st_size,
        "sha256": digest,
        "before_kib": before_kib,
    }


#: A process of a few MiB that runs one contender and reports its peak RSS (RUSAGE_CHILDREN). The
#: contender cannot be started from this process directly: Linux counts the RSS of the process a
#: child was forked from into the child's ru_maxrss, which would floor it at this process's size.
METER = """
import json, resource, subprocess, sys
out = subprocess.run(sys.argv[1:], stdout=subprocess.PIPE, check=True).stdout
print(json.dumps({**json.loads(out), "peak_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def run_child(way: str, dsn: str, target: Path, chunk_size: int) -> dict[str, Any]:
    """One export in a fresh process, started by a slim meter process that reads its peak RSS."""
    command = [sys.executable, __file__, "--child", way, "--dsn", dsn, "--target", str(target)]
    completed = subprocess.run(
        [sys.executable, "-c", METER, *command, "--chunk-size", str(chunk_size)],
        stdout=subprocess.PIPE,
        check=False,
    )
    if completed.returncode != 0:
        raise SystemExit(f"{way} export failed (exit {completed.returncode})")
    return dict(json.loads(completed.stdout))


# -- the parent: fill, alternate the contenders, summarize ------------------------------------


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median rate, the largest peak RSS and the RSS before exporting, over a contender's runs."""
    return {
        "rows_per_s": round(statistics.median(r["rows"] / r["seconds"] for r in runs)),
        "seconds": round(statistics.median(r["seconds"] for r in runs), 3),
        "peak_rss_mib": round(max(r["peak_kib"] for r in runs) / 1024, 1),
        "rss_before_export_mib": round(max(r["before_kib"] for r in runs) / 1024, 1),
        "bytes": runs[0]["bytes"],
        "sha256": runs[0]["sha256"],
    }


def _ratio(results: dict[str, dict[str, Any]], way: str, key: str) -> float:
    return round(results[way][key] / results[BASELINE][key], 3)


def table(results: dict[str, dict[str, Any]], rows: int, chunk_size: int, runs: int) -> str:
    """The results as a table: one line per contender, then the ratios."""
    raw = results[BASELINE]
    lines = [
        f"export of {rows:,} events ({raw['bytes'] / 2**20:,.1f} MiB of NDJSON), chunk size {chunk_size:,},"
        f" median of {runs} runs each",
        "",
        f"{'':24}{'rows/s':>12}{'seconds':>10}{'peak RSS MiB':>14}{'before export':>15}{'export own':>12}",
    ]
    for way, r in results.items():
        own = r["peak_rss_mib"] - r["rss_before_export_mib"]
        lines.append(
            f"{way:24}{r['rows_per_s']:>12,}{r['seconds']:>10.2f}{r['peak_rss_mib']:>14.1f}"
            f"{r['rss_before_export_mib']:>15.1f}{own:>12.1f}"
        )
    lines.append("")
    for way, ours in results.items():
        if way != BASELINE:
            lines.append(
                f"{way} / raw: {ours['rows_per_s'] / raw['rows_per_s']:.2f}x the rate,"
                f" {ours['peak_rss_mib'] / raw['peak_rss_mib']:.2f}x the peak RSS;"
                f" identical output: {'yes' if ours['sha256'] == raw['sha256'] else 'NO'}"
            )
    return "\n".join(lines)


async def prepare(args: argparse.Namespace) -> tuple[BenchDatabase, float]:
    """Create, migrate and fill a bench database of this run; return it and the fill time."""
    db = await bench_database("export", args.pg_url).create()
    return db, await fill(db.dsn, args.rows)


def main(args: argparse.Namespace) -> None:
    """Fill, run each contender ``--runs`` times alternating, report, clean up."""
    db, fill_s = asyncio.run(prepare(args))
    dsn = db.dsn
    scratch = RESULTS.parent / "export-scratch"
    scratch.mkdir(parents=True, exist_ok=True)
    try:
        runs: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
        for _ in range(args.runs):
            for way in WAYS:
                runs[way].append(
                    run_child(way, dsn, scratch / f"{way.replace(' ', '-')}.ndjson", args.chunk_size)
                )
    finally:
        for path in scratch.iterdir():
            path.unlink()
        scratch.rmdir()
        if args.keep:
            print(f"kept database {db.name}")
        else:
            asyncio.run(db.drop())
    results = {way: summarize(r) for way, r in runs.items()}
    assert all(r["rows"] == args.rows for rs in runs.values() for r in rs)
    print(table(results, args.rows, args.chunk_size, args.runs))
    result = {
        "benchmark": "export",
        "command": "python bench/export.py"
        f" --rows {args.rows} --chunk-size {args.chunk_size} --runs {args.runs}",
        "rows": args.rows,
        "chunk_size": args.chunk_size,
        "fill_s": round(fill_s, 2),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "results": results,
        "ratio": {
            "rows_per_s": _ratio(results, "eventworker", "rows_per_s"),
            "peak_rss": _ratio(results, "eventworker", "peak_rss_mib"),
            "generic_rows_per_s": _ratio(results, "eventworker generic", "rows_per_s"),
            "generic_peak_rss": _ratio(results, "eventworker generic", "peak_rss_mib"),
        },
        "identical_output": len({r["sha256"] for r in results.values()}) == 1,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nfilled in {fill_s:.1f}s; results written to {args.output}")


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="events to store (default 1000000)")
    parser.add_argument("--chunk-size", type=int, default=10_000, help="rows per fetch (default 10000)")
    parser.add_argument("--runs", type=int, default=3, help="exports each way (default 3)")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("EVENTWORKER_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/postgres"),
        help="a PostgreSQL server allowed to create databases",
    )
    parser.add_argument("--keep", action="store_true", help="keep the bench database afterwards")
    parser.add_argument(
        "--output", type=Path, default=RESULTS, help=f"where to write the JSON (default {RESULTS})"
    )
    parser.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    parser.add_argument("--dsn", help=argparse.SUPPRESS)
    parser.add_argument("--target", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args()


if __name__ == "__main__":
    arguments = _arguments()
    if arguments.child:
        print(json.dumps(child(arguments.child, arguments.dsn, arguments.target, arguments.chunk_size)))
    else:
        main(arguments)
