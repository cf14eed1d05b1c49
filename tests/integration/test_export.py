"""Streamed exports on every backend: whole, in seq order, filtered, one snapshot, never half a file."""

from __future__ import annotations

import asyncio
import csv
import gzip
import io
import json
import subprocess
import sys
from contextlib import aclosing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from conftest import WITH_POOLER
from sqlalchemy import event as sa_event
from sqlalchemy import select, text
from structlog.testing import capture_logs
from support import event

from jobs.export import export_events, export_to_file
from worker.commands.export import export_command
from worker.db.engine import Database
from worker.db.models import Event, FailedJob
from worker.db.sql import history, statements
from worker.domain.export import EXPORT_COLUMNS, ExportFilter, ExportFormat, ExportProgress, rfc3339
from worker.domain.rows import event_row
from worker.errors import JobFailed
from worker.protocol.events import CloudEvent
from worker.runtime.context import WorkerContext

pytestmark = pytest.mark.integration


@pytest.fixture(params=WITH_POOLER)
def backend(request: pytest.FixtureRequest) -> str:
    """Every driver, and asyncpg and psycopg through PgBouncer in transaction mode too."""
    return str(request.param)


RECEIVED = datetime(2026, 2, 1, 12, 0, tzinfo=UTC)
START = datetime(2026, 1, 1, tzinfo=UTC)
SOURCES = ("/shop", "/billing", "/mail")
TYPES = ("order.created", "order.paid", "mail.sent", "refund")


def sample(n: int) -> dict[str, Any]:
    """Event ``n`` of a varied table: four types, three sources, some with subject, extensions,
    binary data, or no time (those are exported by their received_at)."""
    sent = event(
        n, SOURCES[n % 3], type=TYPES[n % 4], time=f"{START + timedelta(minutes=n):%Y-%m-%dT%H:%M:%S}Z"
    )
    if n % 5 == 0:
        sent["subject"] = f"order/{n % 10}"
    if n % 7 == 0:
        sent.update(traceparent=f"00-{n}", priority=n)
    if n % 11 == 0:
        del sent["time"]
    if n % 13 == 0:
        del sent["data"]
        sent["data_base64"] = "aGVsbG8="
    return sent


async def seed(db: Database, sent: list[dict[str, Any]], received_at: datetime = RECEIVED) -> None:
    """Store ``sent`` as the worker would, in batches."""
    rows = [event_row(CloudEvent.model_validate(e), received_at, "seed") for e in sent]
    for start in range(0, len(rows), 500):
        async with db.transaction() as session:
            await statements.insert_events(session, rows[start : start + 500])


async def stored_order(db: Database) -> list[tuple[int, str, str]]:
    """(seq, source, id) of every stored event, by seq."""
    async with db.transaction() as session:
        result = await session.execute(select(Event.seq, Event.source, Event.event_id).order_by(Event.seq))
        return [tuple(row) for row in result]


def read_file(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data


def ndjson(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in read_file(path).splitlines()]


def csv_records(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(read_file(path).decode(), newline="")))


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def rows_left(chunks: Any) -> int:
    """Rows in the chunks a stream has yet to yield."""
    return sum([len(chunk) async for chunk in chunks])


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """A directory for export files alone (the SQLite database lives in tmp_path)."""
    directory = tmp_path / "out"
    directory.mkdir()
    return directory


async def test_export_holds_every_row_in_seq_order_in_every_format(db, out):
    """2,500 rows in chunks of 300: NDJSON and CSV, plain and gzipped, hold exactly the table, by seq."""
    sent = {(e["source"], e["id"]): e for e in map(sample, range(2500))}
    await seed(db, list(sent.values()))
    order = await stored_order(db)
    expected = [sent[(source, event_id)] for _, source, event_id in order]

    for fmt, name in [
        (ExportFormat.NDJSON, "all.ndjson"),
        (ExportFormat.NDJSON, "all.ndjson.gz"),
        (ExportFormat.CSV, "all.csv"),
        (ExportFormat.CSV, "all.csv.gz"),
    ]:
        progress: list[ExportProgress] = []
        target = out / name
        summary = await export_to_file(
            db,
            target,
            ExportFilter(),
            fmt,
            chunk_size=300,
            compress=name.endswith(".gz"),
            progress=progress.append,
        )
        assert (summary.rows, summary.last_seq, summary.bytes) == (2500, order[-1][0], target.stat().st_size)
        assert [p.rows for p in progress] == [*range(300, 2500, 300), 2500], "one progress call per chunk"
        assert (target.read_bytes()[:2] == b"\x1f\x8b") is name.endswith(".gz")
        if fmt is ExportFormat.NDJSON:
            lines = ndjson(target)
            assert [line.pop("ewseq") for line in lines] == [seq for seq, _, _ in order]
            assert {line.pop("ewreceivedat") for line in lines} == {rfc3339(RECEIVED)}
            assert lines == expected
        else:
            records = csv_records(target)
            assert list(records[0]) == list(EXPORT_COLUMNS)
            assert [int(r["seq"]) for r in records] == [seq for seq, _, _ in order]
            assert [_from_csv(r) for r in records] == expected
    assert leftovers(out) == ["all.csv", "all.csv.gz", "all.ndjson", "all.ndjson.gz"]


def _from_csv(record: dict[str, str]) -> dict[str, Any]:
    """The sent event back from a CSV record."""
    out: dict[str, Any] = {
        "specversion": record["specversion"],
        "id": record["id"],
        "source": record["source"],
    }
    out["type"] = record["type"]
    if record["time"]:
        out["time"] = record["time"]
    if record["subject"]:
        out["subject"] = record["subject"]
    if record["data"]:
        out["data"] = orjson.loads(record["data"])
    if record["data_base64"]:
        out["data_base64"] = record["data_base64"]
    out.update(orjson.loads(record["extensions"]) if record["extensions"] else {})
    assert record["received_at"] == rfc3339(RECEIVED)
    return out


def _when(sent: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(sent["time"]) if "time" in sent else RECEIVED


FILTERS = [
    ("type", ExportFilter(type="order.paid"), lambda e: e["type"] == "order.paid"),
    ("source", ExportFilter(source="/billing"), lambda e: e["source"] == "/billing"),
    ("subject", ExportFilter(subject="order/5"), lambda e: e.get("subject") == "order/5"),
    (
        "time range (on event time)",
        ExportFilter(since=START + timedelta(minutes=100), until=START + timedelta(minutes=200)),
        lambda e: START + timedelta(minutes=100) <= _when(e) < START + timedelta(minutes=200),
    ),
    (
        "time range (received_at for events without time)",
        ExportFilter(since=RECEIVED - timedelta(hours=1), until=RECEIVED + timedelta(hours=1)),
        lambda e: "time" not in e,
    ),
    (
        "since only",
        ExportFilter(since=START + timedelta(minutes=550)),
        lambda e: _when(e) >= START + timedelta(minutes=550),
    ),
    (
        "everything at once",
        ExportFilter(type="refund", source="/mail", until=START + timedelta(minutes=400)),
        lambda e: (
            e["type"] == "refund" and e["source"] == "/mail" and _when(e) < START + timedelta(minutes=400)
        ),
    ),
    ("received before", ExportFilter(received_before=RECEIVED), lambda e: False),
    ("nothing", ExportFilter(type="no.such.type"), lambda e: False),
]


async def test_filters_select_exactly_the_matching_rows(db, out):
    """Each filter exports exactly the events it describes, still in seq order."""
    sent = [sample(n) for n in range(600)]
    await seed(db, sent)
    positions = {(source, event_id): i for i, (_, source, event_id) in enumerate(await stored_order(db))}
    for name, query, matches in FILTERS:
        target = out / "filtered.ndjson"
        summary = await export_to_file(db, target, query, chunk_size=50)
        got = [(line["source"], line["id"]) for line in ndjson(target)]
        wanted = sorted(((e["source"], e["id"]) for e in sent if matches(e)), key=positions.__getitem__)
        assert got == wanted, name
        assert summary.rows == len(wanted), name
    assert 0 < len([e for e in sent if FILTERS[-3][2](e)]) < 600, "the combined filter is not trivial"


async def test_cancelled_export_leaves_no_file_and_releases_its_connection(db, out):
    """Cancelling an export mid-way leaves neither a file nor a temporary file; an older export stays."""
    await seed(db, [sample(n) for n in range(2500)])
    target = out / "out.ndjson.gz"
    target.write_bytes(b"an earlier, complete export")
    under_way = asyncio.Event()

    def progress(p):
        if p.rows >= 300:
            under_way.set()

    task = asyncio.create_task(
        export_to_file(db, target, ExportFilter(), chunk_size=100, compress=True, progress=progress)
    )
    await under_way.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(out) == ["out.ndjson.gz"]
    assert target.read_bytes() == b"an earlier, complete export"
    assert db.engine.pool.checkedout() == 0


@pytest.mark.parametrize("fmt", list(ExportFormat))
async def test_failed_export_leaves_no_file(db, out, fmt):
    """An error part-way (here from the progress hook) leaves nothing that looks like an export."""
    await seed(db, [sample(n) for n in range(500)])

    def progress(p):
        if p.rows >= 200:
            raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        await export_to_file(db, out / "out", ExportFilter(), fmt, chunk_size=100, progress=progress)
    assert leftovers(out) == []
    assert db.engine.pool.checkedout() == 0


async def test_export_is_one_snapshot(db):
    """Rows stored or deleted by other transactions while an export runs do not tear it."""
    await seed(db, [sample(n) for n in range(1000)])
    before = await stored_order(db)
    got: list[int] = []
    async with aclosing(history.stream_events(db.engine, ExportFilter(), 100)) as chunks:
        async for chunk in chunks:
            got.extend(row.seq for row in chunk)
            if len(got) == 100:  # between the first and second chunk, from other connections:
                await seed(db, [sample(n) for n in range(1000, 1050)], RECEIVED + timedelta(seconds=1))
                async with db.transaction() as session:
                    await session.execute(Event.__table__.delete().where(Event.seq == before[-1][0]))
    assert got == [seq for seq, _, _ in before]
    assert len(await stored_order(db)) == 1049, "the concurrent changes did commit"


@pytest.mark.parametrize("backend", ["asyncpg", "psycopg"])
async def test_postgresql_streams_through_a_server_side_cursor(db):
    """On PostgreSQL the export's SELECT is an open cursor on the server between chunks."""
    await seed(db, [sample(n) for n in range(500)])
    connections: list[Any] = []
    sa_event.listen(db.engine.sync_engine, "checkout", lambda dbapi, *_: connections.append(dbapi))
    async with aclosing(history.stream_events(db.engine, ExportFilter(), 100)) as chunks:
        first = await anext(chunks)
        assert len(first) == 100
        # Ask the export's own session (pg_cursors is per session), between two fetches.
        driver = connections[-1].driver_connection
        query = "SELECT statement FROM pg_cursors"
        if hasattr(driver, "fetch"):  # asyncpg
            cursors = [r[0] for r in await driver.fetch(query)]
        else:  # psycopg
            cursors = [r[0] for r in await (await driver.execute(query)).fetchall()]
        assert any("FROM events" in statement for statement in cursors), cursors
        assert await rows_left(chunks) == 400


@pytest.mark.parametrize("backend", ["aiomysql"])
async def test_mysql_streams_through_an_unbuffered_cursor(db):
    """On MySQL/MariaDB through aiomysql the export's SELECT is still running between chunks (SSCursor).

    The table (30 MB) is larger than any socket buffer, so a buffered cursor would have read it all
    and the server would show the connection idle. (asyncmy reads page by page instead: its
    SSCursor buffers the whole result; the flat-memory test below holds it to that.)
    """
    big = [event(n, "/big", data={"blob": "x" * 100_000}) for n in range(300)]
    rows = [event_row(CloudEvent.model_validate(e), RECEIVED, "seed") for e in big]
    for start in range(0, len(rows), 20):
        async with db.transaction() as session:
            await statements.insert_events(session, rows[start : start + 20])
    async with aclosing(history.stream_events(db.engine, ExportFilter(), 10)) as chunks:
        assert len(await anext(chunks)) == 10
        async with db.engine.connect() as other:
            running = (
                await other.execute(
                    text(
                        "SELECT COMMAND FROM information_schema.PROCESSLIST "
                        "WHERE INFO LIKE 'SELECT events.seq%' AND ID <> CONNECTION_ID()"
                    )
                )
            ).all()
        assert [r[0] for r in running] == ["Query"]
        assert await rows_left(chunks) == 290


def _ctx(settings, db: Database) -> WorkerContext:
    return {
        "settings": settings,
        "worker_id": "test:1",
        "known_jobs": frozenset({"export_events"}),
        "redis": None,
        "db": db,
        "job_id": "export-1",
        "job_try": 1,
    }


async def test_export_job_writes_under_export_dir_and_logs_each_chunk(settings, db, out):
    """The job resolves its path under export_dir, filters, compresses, logs per chunk and reports."""
    await seed(db, [sample(n) for n in range(1000)])
    job_settings = settings.model_copy(update={"export_dir": str(out / "exports"), "export_chunk_size": 100})
    with capture_logs() as logs:
        result = await export_events(
            _ctx(job_settings, db),
            "daily/paid.ndjson",
            type="order.paid",
            since="2026-01-01T00:00:00Z",
            gzip=True,
        )
    target = out / "exports" / "daily" / "paid.ndjson"
    assert result == {
        "path": str(target),
        "rows": 250,
        "bytes": target.stat().st_size,
        "seconds": result["seconds"],
    }
    assert {line["type"] for line in ndjson(target)} == {"order.paid"}
    assert target.read_bytes()[:2] == b"\x1f\x8b"
    progress = [entry for entry in logs if entry["event"] == "export.progress"]
    assert [entry["rows"] for entry in progress] == [100, 200, 250]
    assert all("rows_per_s" in entry for entry in progress)


@pytest.mark.parametrize(
    ("path", "options", "message"),
    [
        ("../escape.ndjson", {}, "relative to the export directory"),
        ("/tmp/anywhere.ndjson", {}, "relative to the export directory"),
        ("out.ndjson", {"format": "xml"}, "'xml' is not a valid ExportFormat"),
        ("out.ndjson", {"since": "yesterday"}, "not an RFC 3339 time"),
        ("out.ndjson", {"until": 1700000000}, "until: expected an RFC 3339 string"),
    ],
)
@pytest.mark.parametrize("backend", ["asyncpg", "aiosqlite"])
async def test_export_job_refuses_bad_arguments_without_retrying(settings, db, out, path, options, message):
    """A path outside export_dir or a bad argument fails the job at once, recorded, with no file."""
    job_settings = settings.model_copy(update={"export_dir": str(out)})
    with pytest.raises(JobFailed, match=message):
        await export_events(_ctx(job_settings, db), path, **options)
    async with db.transaction() as session:
        failed = (await session.scalars(select(FailedJob))).one()
    assert (failed.job_name, failed.tries) == ("export_events", 1)
    assert leftovers(out) == []


@pytest.mark.parametrize("backend", ["asyncpg", "aiomysql", "aiosqlite"])
def test_export_command(settings, out, monkeypatch):
    """`eventworker export` writes the file, filtered, and says what it wrote."""

    async def prepare() -> None:
        database = Database.from_settings(settings)
        try:
            await seed(database, [sample(n) for n in range(700)])
        finally:
            await database.dispose()

    asyncio.run(prepare())
    monkeypatch.chdir(out)
    monkeypatch.setenv("DATABASE_URL", settings.database_url)
    target = out / "mail.csv.gz"
    result = CliRunner().invoke(
        export_command, [str(target), "--format", "csv", "--source", "/mail", "--chunk-size", "64"]
    )
    assert result.exit_code == 0, result.output
    assert result.output.startswith(f"exported 233 events to {target} (")
    assert {r["source"] for r in csv_records(target)} == {"/mail"}
    assert len(csv_records(target)) == 233


def test_export_command_refuses_a_time_without_zone(tmp_path):
    """A --since without a time zone is a usage error, before any connection."""
    result = CliRunner().invoke(
        export_command, [str(tmp_path / "x.ndjson"), "--since", "2026-01-01T00:00:00"]
    )
    assert result.exit_code == 2
    assert "has no time zone" in result.output


@pytest.mark.parametrize("backend", ["asyncpg", "psycopg", "aiomysql", "asyncmy"])
async def test_peak_memory_is_flat_whatever_the_row_count(db, settings, out):
    """Exporting 6x the rows (many more than a chunk) takes no more memory: the rows stream."""
    script = Path(__file__).with_name("export_peak.py")

    def peak() -> dict[str, int]:
        completed = subprocess.run(
            [sys.executable, str(script), settings.database_url, str(out / "out.ndjson"), "500"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert completed.returncode == 0, completed.stderr
        return json.loads(completed.stdout)

    await seed(db, [sample(n) for n in range(3000)])
    small = await asyncio.to_thread(peak)
    await seed(db, [sample(n) for n in range(3000, 18000)])
    large = await asyncio.to_thread(peak)
    assert (small["rows"], large["rows"]) == (3000, 18000)
    assert large["peak"] < 1.5 * small["peak"], (small, large)
