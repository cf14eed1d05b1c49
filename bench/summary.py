"""The suite's one table: each figure beside its raw baseline from the same run, the ratio and the target.

Pure: section results (dicts, as the benchmarks return them) in, rows and text out.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Row:
    """One line of the table."""

    section: str
    figure: str
    eventworker: str
    baseline: str
    ratio: float | None = None
    target: str = ""
    met: bool | None = None


def ingest_rows(result: dict[str, Any]) -> list[Row]:
    """Section 1: throughput against COPY and executemany, latency at two rates."""
    e2e = result["end_to_end"]
    rows = [
        Row(
            "1 ingest",
            f"end to end, {e2e['events']:,} events (rows stored/s)",
            f"{e2e['events_per_s']:,} ev/s ({e2e['rows_per_s']['eventworker']:,} rows/s)",
            f"COPY {e2e['rows_per_s']['raw copy']:,} rows/s",
            e2e["ratio_to_copy"],
            ">= 0.50x COPY",
            e2e["ratio_to_copy"] >= 0.5,
        ),
        Row(
            "1 ingest",
            "end to end vs executemany INSERT",
            f"{e2e['rows_per_s']['eventworker']:,} rows/s",
            f"executemany {e2e['rows_per_s']['raw executemany']:,} rows/s",
            e2e["ratio_to_executemany"],
        ),
    ]
    for label, latency in result["latency"].items():
        target = "p99 < 100 ms" if label == "1000/s" else ""
        rows.append(
            Row(
                "1 ingest",
                f"enqueue->commit at {latency['rate_events_per_s']:,} ev/s ({label})",
                f"p50 {latency['p50_ms']:.0f} / p99 {latency['p99_ms']:.0f} ms",
                "",
                None,
                target,
                latency["p99_ms"] < 100 if target else None,
            )
        )
    return rows


def job_rows(result: dict[str, Any]) -> list[Row]:
    """Section 2: the ingest job's parts per batch, and the whole job against COPY of its rows."""
    size = result["batch_size"]
    rows = [
        Row(
            "2 job",
            f"{part}, per {size}-event batch",
            f"{ms:.2f} ms (cpu {result['median_cpu_ms'][part]:.2f})",
            "",
        )
        for part, ms in result["median_ms"].items()
    ]
    rows.append(
        Row(
            "2 job",
            f"whole ingest_events job, {size} events",
            f"{result['whole_job_ms']:.2f} ms",
            f"COPY {result['raw_copy_ms']:.2f} ms",
            round(result["raw_copy_ms"] / result["whole_job_ms"], 3),
        )
    )
    return rows


def export_rows(results: dict[str, Any]) -> list[Row]:
    """Section 3: export rate against the raw cursor; peak RSS at each size, flat."""
    rows = []
    for label, result in results.items():
        ours, raw = result["results"]["eventworker"], result["results"]["raw asyncpg"]
        rows.append(
            Row(
                "3 export",
                f"NDJSON, {result['rows']:,} rows ({label}), rows/s",
                f"{ours['rows_per_s']:,}",
                f"cursor+orjson {raw['rows_per_s']:,}",
                result["ratio"]["rows_per_s"],
                ">= 1.00x",
                result["ratio"]["rows_per_s"] >= 1.0,
            )
        )
        generic = result["results"].get("eventworker generic")
        if generic is not None:
            rows.append(
                Row(
                    "3 export",
                    f"NDJSON generic path, {result['rows']:,} rows, rows/s",
                    f"{generic['rows_per_s']:,}",
                    f"cursor+orjson {raw['rows_per_s']:,}",
                    result["ratio"]["generic_rows_per_s"],
                    ">= 0.50x",
                    result["ratio"]["generic_rows_per_s"] >= 0.5,
                )
            )
        rows.append(
            Row(
                "3 export",
                f"peak RSS, {result['rows']:,} rows",
                f"{ours['peak_rss_mib']:.0f} MiB",
                f"{raw['peak_rss_mib']:.0f} MiB",
                result["ratio"]["peak_rss"],
                "< 150 MiB",
                ours["peak_rss_mib"] < 150,
            )
        )
    sizes = [r["results"]["eventworker"]["peak_rss_mib"] for r in results.values()]
    # Below 10 chunks of rows an export holds a good share of the table at once: nothing to compare.
    if len(sizes) > 1 and min(r["rows"] for r in results.values()) >= 10 * 10_000:
        flat = max(sizes) - min(sizes) <= max(10.0, 0.1 * min(sizes))
        rows.append(
            Row("3 export", "peak RSS grows with rows?", "no" if flat else "yes", "", None, "flat", flat)
        )
    return rows


def report_rows(result: dict[str, Any]) -> list[Row]:
    """Section 4: fanned-out report against its slowest query, and serial."""
    on = result["parallel_query"]["on"]
    ratio = on["fanned_out_over_slowest_alone"]
    return [
        Row(
            "4 report",
            f"fan-out wall time / slowest query ({result['rows']:,} rows)",
            f"{on['fanned_out_ms']:.0f} ms vs {on['slowest_query_alone_ms']:.0f} ms",
            f"serial {on['serial_ms']:.0f} ms",
            ratio,
            "<= 1.15x",
            ratio <= 1.15,
        )
    ]


def overhead_rows(result: dict[str, Any]) -> list[Row]:
    """Section 5: no-op jobs/s through eventworker against bare arq."""
    rates = result["jobs_per_s"]
    return [
        Row(
            "5 overhead",
            f"no-op jobs/s, max_jobs {result['max_jobs']}, poll {result['poll_delay']}s",
            f"{rates['eventworker']:,}",
            f"bare arq {rates['bare arq']:,}",
            result["ratio"],
            ">= 0.80x",
            result["ratio"] >= 0.8,
        )
    ]


def soak_rows(result: dict[str, Any]) -> list[Row]:
    """Section 6: RSS and connections over the soak."""
    return [
        Row(
            "6 soak",
            f"{result['seconds']:.0f} s at {result['rate_events_per_s']:,.0f} ev/s: RSS, connections",
            f"{result['rss_mib_early']:.0f} -> {result['rss_mib_late']:.0f} MiB,"
            f" <= {result['max_connections']} conns",
            "",
            None,
            "no growth",
            result["no_growth"],
        )
    ]


def pgbouncer_rows(result: dict[str, Any]) -> list[Row]:
    """Section 7: ingestion end to end through PgBouncer (transaction mode) against direct, same run."""
    rates = result["events_per_s"]
    return [
        Row(
            "7 pgbouncer",
            f"end to end through PgBouncer (transaction mode, {result['server_connections']} server"
            f" connections), {result['events']:,} events",
            f"{rates['pgbouncer']:,} ev/s",
            f"direct {rates['direct']:,} ev/s",
            result["ratio_to_direct"],
        )
    ]


def durability_rows(result: dict[str, Any]) -> list[Row]:
    """Section 8: durability="replicated" (WAIT for 1 of 2 replicas) against the default, same run."""
    primary, replicated = result["primary"], result["replicated"]
    jobs = f"{result['jobs']:,} jobs of {result['batch_size']:,} events"
    default = f"{primary['enqueue_events_per_s']:,} ev/s ({primary['enqueue_jobs_per_s']:,} jobs/s)"
    return [
        Row(
            "8 durability",
            f"enqueue, waiting for 1 of 2 replicas ({jobs})",
            f"{replicated['enqueue_events_per_s']:,} ev/s ({replicated['enqueue_jobs_per_s']:,} jobs/s)",
            f"primary only {default}",
            result["enqueue_ratio"],
        ),
        Row(
            "8 durability",
            "end to end, replicated enqueues, Sentinel URL",
            f"{replicated['end_to_end_events_per_s']:,} ev/s",
            f"primary only {primary['end_to_end_events_per_s']:,} ev/s",
            result["end_to_end_ratio"],
        ),
    ]


def tracing_rows(result: dict[str, Any]) -> list[Row]:
    """Section 9: each way against the tracing hooks removed, same rounds (tracing off: within 3 %)."""
    rows = []
    for figure, rates, ratios, unit in (
        ("no-op jobs/s", result["noop_jobs_per_s"], result["noop_ratio"], "jobs/s"),
        (f"end to end, {result['events']:,} events", result["events_per_s"], result["ingest_ratio"], "ev/s"),
    ):
        baseline = f"hooks removed {rates['hooks removed']:,} {unit}"
        for way in ("tracing off", "tracing on 100%", "tracing on 1%"):
            off = way == "tracing off"
            spans = "" if off or "jobs" in unit else f", {result['ingest_spans_per_job'][way]} spans/job"
            rows.append(
                Row(
                    "9 tracing",
                    f"{figure}, {way}{spans}",
                    f"{rates[way]:,} {unit}",
                    baseline,
                    ratios[way],
                    ">= 0.97x" if off else "",
                    ratios[way] >= 0.97 if off else None,
                )
            )
    calls = result["noop_job_alone"]
    rows.append(
        Row(
            "9 tracing",
            f"no-op job alone, tracing off ({calls['calls_each']:,} calls), µs a call",
            f"{calls['median_us']['tracing off']:.1f} µs",
            f"hooks removed {calls['median_us']['hooks removed']:.1f} µs",
            calls["ratio"],
            ">= 0.97x",
            calls["ratio"] >= 0.97,
        )
    )
    alone = result["ingest_job_alone"]
    rows.append(
        Row(
            "9 tracing",
            f"job alone, {alone['batch_size']:,} events, tracing off ({alone['batches_each']} batches)",
            f"{alone['median_ms']['tracing off']:.2f} ms",
            f"hooks removed {alone['median_ms']['hooks removed']:.2f} ms",
            alone["ratio"],
            ">= 0.97x",
            alone["ratio"] >= 0.97,
        )
    )
    return rows


def partitions_rows(result: dict[str, Any]) -> list[Row]:
    """Section 10: a partitioned events against one table: ingestion, retention of a day, bytes."""
    rows_n = result["options"]["rows"]
    empty, loaded = result["empty"], result["loaded"]
    rows = []
    for name in ("partitioned", "one table"):
        ratio = round(loaded[name]["events_per_s"] / empty[name]["events_per_s"], 2)
        rows.append(
            Row(
                "10 partitions",
                f"ingest job, {rows_n:,} rows stored, {name} (events/s)",
                f"{loaded[name]['events_per_s']:,}",
                f"empty {empty[name]['events_per_s']:,}",
                ratio,
                ">= 0.85x empty" if name == "partitioned" else "",
                ratio >= 0.85 if name == "partitioned" else None,
            )
        )
    ratio = round(loaded["partitioned"]["events_per_s"] / loaded["one table"]["events_per_s"], 2)
    rows.append(
        Row(
            "10 partitions",
            f"ingest job, {rows_n:,} rows stored: partitioned vs one table",
            f"{loaded['partitioned']['events_per_s']:,}",
            f"one table {loaded['one table']['events_per_s']:,}",
            ratio,
        )
    )
    parted, plain = result["retention"]["partitioned"], result["retention"]["one table"]
    keys = parted["steps_s"].get("delete_keys_chunk", 0.0)
    rows.append(
        Row(
            "10 partitions",
            f"retention of a day, {parted['events_deleted']:,} events (identities' delete {keys:.2f} s)",
            f"drop {parted['seconds']:.2f} s",
            f"chunked DELETE {plain['seconds']:.2f} s",
            round(parted["seconds"] / plain["seconds"], 3) if plain["seconds"] else None,
        )
    )
    size = result["bytes"]
    rows.append(
        Row(
            "10 partitions",
            "bytes per million events (table + indexes; + event_keys)",
            f"{size['partitioned']['events_per_million'] / 2**20:,.0f}"
            f" + {size['partitioned']['event_keys_per_million'] / 2**20:,.0f} MiB",
            f"one table {size['one table']['events_per_million'] / 2**20:,.0f} MiB",
            round(
                (size["partitioned"]["events_per_million"] + size["partitioned"]["event_keys_per_million"])
                / size["one table"]["events_per_million"],
                2,
            ),
        )
    )
    counted = result.get("rollups")
    if counted:
        parted_r, plain_r = counted["partitioned"], counted["one table"]
        rows.append(
            Row(
                "10 partitions",
                f"rollups over the backlog of {parted_r['rows']:,} events"
                f" ({parted_r['transactions']} transactions, {parted_r['buckets']:,} buckets)",
                f"{parted_r['seconds']:,.1f} s",
                f"one table {plain_r['seconds']:,.1f} s",
                round(plain_r["seconds"] / parted_r["seconds"], 2) if parted_r["seconds"] else None,
            )
        )
    reads = result.get("reads")
    if reads:
        report = reads["report_1h"]
        rows.append(
            Row(
                "10 partitions",
                f"report over one hour ({report['partitioned']['events']:,} events) of {rows_n:,} rows",
                f"{report['partitioned']['ms']:,.1f} ms",
                f"one table {report['one table']['ms']:,.1f} ms",
                round(report["one table"]["ms"] / report["partitioned"]["ms"], 2),
            )
        )
        export = reads["export"]
        rows.append(
            Row(
                "10 partitions",
                f"export of {export['partitioned']['rows']:,} rows (rows/s; peak RSS)",
                f"{export['partitioned']['rows_per_s']:,}; {export['partitioned']['peak_rss_mib']} MiB",
                f"one table {export['one table']['rows_per_s']:,}; {export['one table']['peak_rss_mib']} MiB",
                round(export["partitioned"]["rows_per_s"] / export["one table"]["rows_per_s"], 2),
            )
        )
    conversion = result["conversion"]
    rows.append(
        Row(
            "10 partitions",
            f"eventworker partition on {conversion['rows']:,} rows (s; ingestion waits only for the swap)",
            f"{conversion['seconds']:.2f} s",
            f"swap {conversion['steps_s'].get('swapped', 0):.2f} s",
        )
    )
    return rows


def peers_rows(result: dict[str, Any]) -> list[Row]:
    """Section 11: eventworker end to end against each peer (median of the rounds), and the faster one."""
    rates, cpu = result["events_per_s"], result["worker_cpu_us_per_event"]
    ours = f"{rates['eventworker']:,} ev/s ({cpu['eventworker']:.1f} µs CPU/ev)"
    rows = [
        Row(
            "11 peers",
            f"end to end, {result['events']:,} events, vs {peer} ({result['runs']} rounds)",
            ours,
            f"{peer} {rates[peer]:,} ev/s ({cpu[peer]:.1f} µs CPU/ev)",
            round(rates["eventworker"] / rates[peer], 3),
        )
        for peer in ("arq + Core", "SAQ + Core")
    ]
    rows.append(
        Row(
            "11 peers",
            "end to end vs the faster peer",
            f"{rates['eventworker']:,} ev/s",
            f"{result['faster_peer']} {rates[result['faster_peer']]:,} ev/s",
            result["ratio"],
            f">= {result['target']:.2f}x",
            result["met"],
        )
    )
    return rows


ROWS = {
    "ingest": ingest_rows,
    "job": job_rows,
    "export": export_rows,
    "report": report_rows,
    "overhead": overhead_rows,
    "soak": soak_rows,
    "pgbouncer": pgbouncer_rows,
    "durability": durability_rows,
    "tracing": tracing_rows,
    "partitions": partitions_rows,
    "peers": peers_rows,
}


def render(rows: list[Row]) -> str:
    """The rows as a fixed-width text table."""
    header = ("", "figure", "eventworker", "raw baseline", "ratio", "target", "met")
    cells = [
        (
            r.section,
            r.figure,
            r.eventworker,
            r.baseline,
            "" if r.ratio is None else f"{r.ratio:.2f}",
            r.target,
            "" if r.met is None else ("yes" if r.met else "NO"),
        )
        for r in rows
    ]
    widths = [max(len(str(c[i])) for c in [header, *cells]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
        for line in [header, *cells]
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def as_json(rows: list[Row]) -> list[dict[str, Any]]:
    """The rows as JSON-ready dicts."""
    return [asdict(r) for r in rows]
