"""The benchmark suite, one command: every figure beside a raw-driver baseline measured in the same run.

    python bench/run.py                  # the full suite (about 15 minutes on two cores)
    python bench/run.py --smoke          # everything tiny, a minute at most: what CI runs
    python bench/run.py --only ingest,overhead --events 200000
    python bench/run.py --only soak --soak 600

Sections: ``ingest`` (end to end through Redis and a worker process, against asyncpg COPY and
executemany; enqueue-to-commit latency at 1,000 events/s and at half the peak), ``job`` (the
ingest job alone, part by part), ``export`` (``bench/export.py`` at 1M and 5M rows), ``report``
(``bench/report.py``), ``overhead`` (no-op jobs against bare arq), ``pgbouncer`` (end to end
through PgBouncer in transaction mode against direct), ``durability`` (enqueue rate and end to end
with ``durability="replicated"`` against the default, on a Sentinel group of its own), ``tracing``
(no-op jobs and ingestion with the tracing hooks removed, tracing off, on at 100 % and at 1 %),
``partitions`` (a partitioned ``events`` against one table: ingestion into 20 million stored rows,
a day's retention, bytes, the conversion), ``peers`` (end to end against what users would build
instead: the same job on bare arq with SQLAlchemy Core, and on SAQ) and, only when asked with
``--soak SECONDS``, ``soak``.
It prints one table and writes everything, with the load average before and after, to
``bench/results/suite.json`` (``--output``). Exit status 1 if a section failed.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/run.py` puts bench/ first on the path; the suite imports itself as the `bench` package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import asyncio
import json
import os
import platform
import subprocess
import tempfile
import time
import traceback
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from bench import summary
from bench.common import PG_URL, REDIS_URL, RESULTS, ROOT, bench_database, load
from bench.durability import durability
from bench.events import Mix
from bench.ingest import IngestOptions, end_to_end, job_parts, one_latency, through_pooler
from bench.overhead import overhead
from bench.partitions import PartitionOptions, partitions
from bench.peers import peers
from bench.soak import soak
from bench.tracing import tracing
from tests.pgbouncer import PgBouncer  # the tests' own PgBouncer runner (Debian's pgbouncer package)

SECTIONS = (
    "ingest",
    "job",
    "export",
    "report",
    "overhead",
    "pgbouncer",
    "durability",
    "tracing",
    "partitions",
    "peers",
)
#: (full, smoke) sizes.
SIZES: dict[str, tuple[Any, Any]] = {
    "events": (1_000_000, 2_000),
    "batch_size": (1000, 200),
    "runs": (3, 1),
    "latency_seconds": (10.0, 1.0),
    "job_batches": (60, 4),
    "export_rows": ((1_000_000, 5_000_000), (2_000, 6_000)),
    "export_runs": ((3, 1), (1, 1)),
    "report_rows": (200_000, 2_000),
    "report_runs": (9, 1),
    "noop_jobs": (3000, 100),
    "pgbouncer_events": (300_000, 2_000),
    "durability_events": (200_000, 1_000),
    "tracing_events": (200_000, 2_000),
    "tracing_runs": (5, 1),
    "partition_rows": (20_000_000, 20_000),
    "partition_events": (200_000, 2_000),
    "peers_events": (200_000, 2_000),
}
#: PgBouncer's server connections in the ``pgbouncer`` section: as many as the worker opens at most
#: directly (pool_size + max_overflow, 5 + 5), so that the figure is the cost of the pooler alone.
PGBOUNCER_POOL = 10


def size(args: argparse.Namespace, name: str) -> Any:
    """A size for this run: the option given, else the full or smoke default."""
    given = getattr(args, name, None)
    return given if given is not None else SIZES[name][1 if args.smoke else 0]


def ingest_options(args: argparse.Namespace) -> IngestOptions:
    """The ingestion settings of this run (docs/performance.md's throughput settings unless told)."""
    return IngestOptions(
        events=size(args, "events"),
        batch_size=size(args, "batch_size"),
        runs=size(args, "runs"),
        mix=Mix(),
        max_jobs=args.max_jobs,
        poll_delay=args.poll_delay,
        keep_result=args.keep_result,
        latency_seconds=size(args, "latency_seconds"),
        redis_url=args.redis_url,
    )


async def run_ingest(args: argparse.Namespace) -> dict[str, Any]:
    """Section 1: throughput, then latency at 1,000 events/s and at half the peak just measured."""
    options = ingest_options(args)
    db = await bench_database("ingest", args.pg_url).create()
    try:
        result: dict[str, Any] = {"end_to_end": await end_to_end(db, options)}
        # docs/performance.md's latency settings; each job's finish time is in arq's results: keep them.
        timed = replace(options, keep_result=3600.0, poll_delay=args.latency_poll_delay, max_jobs=10)
        half = result["end_to_end"]["events_per_s"] / 2
        result["latency"] = {
            "1000/s": await one_latency(db, timed, 1000, "1000"),
            "half peak": await one_latency(db, timed, half, "half"),
        }
        return result
    finally:
        await db.drop()


async def run_job(args: argparse.Namespace) -> dict[str, Any]:
    """Section 2: the ingest job alone."""
    db = await bench_database("job", args.pg_url).create()
    try:
        return await job_parts(db, ingest_options(args), size(args, "job_batches"))
    finally:
        await db.drop()


def _script(command: list[str], log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        completed = subprocess.run(
            [sys.executable, *command], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False
        )
    if completed.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {completed.returncode}; see {log}")


async def run_export(args: argparse.Namespace) -> dict[str, Any]:
    """Section 3: bench/export.py at each size (the largest checks that peak RSS stays flat)."""
    results = {}
    for rows, runs in zip(size(args, "export_rows"), size(args, "export_runs"), strict=True):
        with tempfile.TemporaryDirectory() as scratch:
            output = Path(scratch) / "export.json"
            command = ["bench/export.py", f"--rows={rows}", f"--runs={runs}", f"--pg-url={args.pg_url}"]
            await asyncio.to_thread(
                _script, [*command, f"--output={output}"], RESULTS / "logs" / f"export-{rows}.log"
            )
            results[f"{rows:,}"] = json.loads(output.read_text())
    return results


async def run_report(args: argparse.Namespace) -> dict[str, Any]:
    """Section 4: bench/report.py; a smoke run puts back the bench/results/report.json it overwrites."""
    path = RESULTS / "report.json"
    before = path.read_bytes() if path.exists() else None
    command = [
        "bench/report.py",
        f"--rows={size(args, 'report_rows')}",
        f"--runs={size(args, 'report_runs')}",
    ]
    try:
        await asyncio.to_thread(
            _script, [*command, f"--pg-url={args.pg_url}"], RESULTS / "logs" / "report.log"
        )
        return dict(json.loads(path.read_text()))
    finally:
        if args.smoke and before is not None:
            path.write_bytes(before)


async def run_overhead(args: argparse.Namespace) -> dict[str, Any]:
    """Section 5: job overhead."""
    db = await bench_database("overhead", args.pg_url).create()
    try:
        return await overhead(
            db,
            args.redis_url,
            size(args, "noop_jobs"),
            size(args, "runs"),
            args.noop_max_jobs,
            args.poll_delay,
        )
    finally:
        await db.drop()


async def run_soak(args: argparse.Namespace) -> dict[str, Any]:
    """Section 6: the soak."""
    db = await bench_database("soak", args.pg_url).create()
    try:
        settings = {"max_jobs": args.max_jobs, "poll_delay": args.poll_delay, "keep_result": args.keep_result}
        return await soak(db, args.redis_url, args.soak, args.soak_rate, **settings)
    finally:
        await db.drop()


async def run_pgbouncer(args: argparse.Namespace) -> dict[str, Any]:
    """Section 7: ingestion end to end through PgBouncer (transaction mode) against direct, same run."""
    events = args.events if args.events is not None else size(args, "pgbouncer_events")
    options = replace(ingest_options(args), events=events)
    db = await bench_database("pgbouncer", args.pg_url).create()
    try:  # a PgBouncer that cannot start (not installed) leaves no database behind
        bouncer = PgBouncer(args.pg_url, pool_size=PGBOUNCER_POOL).start()
        try:
            return await through_pooler(db, options, bouncer.url(db.name), PGBOUNCER_POOL)
        finally:
            bouncer.stop()
    finally:
        await db.drop()


async def run_durability(args: argparse.Namespace) -> dict[str, Any]:
    """Section 8: durability="replicated" against the default on a Sentinel group of its own, same run."""
    events = args.events if args.events is not None else size(args, "durability_events")
    db = await bench_database("durability", args.pg_url).create()
    try:
        return await durability(db, replace(ingest_options(args), events=events))
    finally:
        await db.drop()


async def run_tracing(args: argparse.Namespace) -> dict[str, Any]:
    """Section 9: no-op jobs and ingestion with the tracing hooks removed, off, on at 100 % and 1 %."""
    events = args.events if args.events is not None else size(args, "tracing_events")
    runs = args.runs if args.runs is not None else size(args, "tracing_runs")
    options = replace(ingest_options(args), events=events)
    db = await bench_database("tracing", args.pg_url).create()
    try:
        return await tracing(db, options, size(args, "noop_jobs"), runs, args.noop_max_jobs)
    finally:
        await db.drop()


async def run_partitions(args: argparse.Namespace) -> dict[str, Any]:
    """Section 10: a partitioned events against one table, same run (bench/partitions.py)."""
    options = PartitionOptions(
        rows=size(args, "partition_rows"),
        ingest_events=args.events if args.events is not None else size(args, "partition_events"),
        batch_size=size(args, "batch_size"),
        runs=size(args, "runs"),
    )
    plain, parted = bench_database("onetable", args.pg_url), bench_database("partitioned", args.pg_url)
    try:
        return await partitions(plain, parted, options)
    finally:
        await plain.drop()
        await parted.drop()


async def run_peers(args: argparse.Namespace) -> dict[str, Any]:
    """Section 11: eventworker end to end against bare arq + SQLAlchemy Core and SAQ, same run."""
    events = args.events if args.events is not None else size(args, "peers_events")
    contenders = {
        "eventworker": bench_database("peers_ew", args.pg_url),
        "arq + Core": bench_database("peers_arq", args.pg_url),
        "SAQ + Core": bench_database("peers_saq", args.pg_url),
    }
    try:
        for db in contenders.values():
            await db.create()
        return await peers(contenders, replace(ingest_options(args), events=events))
    finally:
        for db in contenders.values():
            await db.drop()


RUNNERS = {
    "ingest": run_ingest,
    "job": run_job,
    "export": run_export,
    "report": run_report,
    "overhead": run_overhead,
    "soak": run_soak,
    "pgbouncer": run_pgbouncer,
    "durability": run_durability,
    "tracing": run_tracing,
    "partitions": run_partitions,
    "peers": run_peers,
}


async def main(args: argparse.Namespace) -> int:
    """Run the chosen sections, print the table, write the JSON; 1 if any section failed."""
    chosen = args.only.split(",") if args.only else [*SECTIONS, *(["soak"] if args.soak else [])]
    unknown = set(chosen) - RUNNERS.keys()
    if unknown:
        raise SystemExit(
            f"unknown section(s): {', '.join(sorted(unknown))}; choose from {', '.join(RUNNERS)}"
        )
    if "soak" in chosen and not args.soak:
        args.soak = 600.0
    started, load_before = time.monotonic(), load()
    results: dict[str, Any] = {}
    errors: dict[str, str] = {}
    rows: list[summary.Row] = []
    for name in chosen:
        print(f"== {name} (load {load()})", flush=True)
        try:
            results[name] = await RUNNERS[name](args)
            rows += summary.ROWS[name](results[name])
        except Exception as exc:
            traceback.print_exc()
            errors[name] = f"{type(exc).__name__}: {exc}"
    table = summary.render(rows)
    load_after = load()
    print(
        f"\neventworker benchmark suite{' (smoke)' if args.smoke else ''}:"
        f" load before {load_before}, after {load_after}"
    )
    print(table)
    for name, error in errors.items():
        print(f"\n{name} FAILED: {error}")
    document = {
        "command": " ".join(["python bench/run.py", *sys.argv[1:]]),
        "smoke": args.smoke,
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "seconds": round(time.monotonic() - started, 1),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "load_before": load_before,
        "load_after": load_after,
        "table": summary.as_json(rows),
        "sections": results,
        "errors": errors,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(document, indent=2) + "\n")
    print(f"\nresults written to {args.output}")
    return 1 if errors else 0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: checks the code, not the speed")
    parser.add_argument("--only", help=f"comma-separated sections: {', '.join(RUNNERS)}")
    parser.add_argument("--soak", type=float, metavar="SECONDS", help="add the soak, this long (e.g. 600)")
    parser.add_argument("--soak-rate", type=float, default=2000, help="events/s during the soak (2000)")
    parser.add_argument(
        "--events",
        type=int,
        help="events end to end (1000000, pgbouncer 300000, tracing and peers 200000; smoke 2000)",
    )
    parser.add_argument("--batch-size", type=int, help="events per ingest job (1000; smoke 200)")
    parser.add_argument("--runs", type=int, help="timed runs each way (3, tracing 5; smoke 1)")
    parser.add_argument("--max-jobs", type=int, default=10, help="worker max_jobs for ingestion (10)")
    parser.add_argument("--poll-delay", type=float, default=0.05, help="worker poll_delay (0.05)")
    parser.add_argument("--keep-result", type=float, default=0, help="worker keep_result for throughput (0)")
    parser.add_argument(
        "--latency-poll-delay", type=float, default=0.01, help="poll_delay for latency (0.01)"
    )
    parser.add_argument(
        "--noop-max-jobs", type=int, default=10, help="max_jobs for the overhead section (10)"
    )
    parser.add_argument(
        "--partition-rows", type=int, help="rows stored before the partitions section measures (20000000)"
    )
    parser.add_argument("--pg-url", default=PG_URL, help="PostgreSQL allowed to create databases")
    parser.add_argument("--redis-url", default=REDIS_URL, help="Redis database for the queues (db 13)")
    parser.add_argument("--output", type=Path, default=RESULTS / "suite.json", help="where to write the JSON")
    return parser.parse_args()


if __name__ == "__main__":
    sys.exit(asyncio.run(main(_arguments())))
