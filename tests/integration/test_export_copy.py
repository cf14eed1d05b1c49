"""NDJSON exports through PostgreSQL's COPY: byte for byte the generic path's file, whatever the rows hold."""

from __future__ import annotations

import gzip
from collections.abc import AsyncGenerator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from sqlalchemy import text

from jobs.export import ExportSummary, export_to_file
from worker.db.engine import Database
from worker.db.sql import export_copy, history, statements
from worker.domain.export import ExportFilter, ExportFormat
from worker.domain.rows import event_row
from worker.protocol.events import CloudEvent

pytestmark = pytest.mark.integration

RECEIVED = datetime(2026, 2, 1, 12, 0, 0, 250000, tzinfo=UTC)
START = datetime(2026, 1, 1, tzinfo=UTC)
#: Every character JSON escapes, the ones it need not (DEL, the Unicode line separators, the
#: slash), quotes and backslashes, non-ASCII of one to four bytes in UTF-8.
TRICKY = "".join(chr(c) for c in range(1, 32)) + "\x7f\u2028\u2029/\\\"'<>&é日本😀\ufeff"


def _time(n: int) -> str:
    """Whole seconds for some events, microseconds (trailing zeros too) for others, odd offsets."""
    when = START + timedelta(minutes=n)
    if n % 3 == 1:
        when += timedelta(microseconds=n * 1000 + 1)
    elif n % 3 == 2:
        when += timedelta(microseconds=500000)
    return (
        when.astimezone(timezone(timedelta(hours=5, minutes=30))).isoformat()
        if n % 4 == 0
        else when.isoformat()
    )


def varied(n: int) -> dict[str, Any]:
    """Event ``n`` of a table exercising everything a line can hold, as a producer sends it."""
    sent: dict[str, Any] = {
        "specversion": "1.0",
        "id": f"evt-{n}-{TRICKY}" if n % 5 == 0 else f"evt-{n}",
        "source": ("/naïve/日本", "/shop", '/quote"back\\slash')[n % 3],
        "type": ("order.created", "order.paid", "mail.sent\u2028", "refund")[n % 4],
        "time": _time(n),
        "data": {"n": n, "text": TRICKY, "nested": {"list": [1, 2.5, None, True, {"deep": ["😀"]}]}},
    }
    if n % 2 == 0:
        sent["subject"] = f"order/{n % 10}" if n % 4 else f"sub{TRICKY}"
    if n % 6 == 0:
        sent["datacontenttype"] = "application/json; charset=utf-8"
        sent["dataschema"] = f'https://example.com/schema/{n}?q="x"&y=\\'
    if n % 7 == 0:
        sent.update(traceparent=f"00-{n:032x}-01", priority=n, flag=n % 2 == 0, z=TRICKY, a1="")
    if n % 11 == 0:
        sent.update(ewseq="theirs", ewreceivedat=12, seq=99)  # ours replace the first two in place
    if n % 13 == 0:
        sent.update(big=18446744073709551615, small=-9223372036854775808, zero=0)
    if n % 17 == 0:  # numbers the server does not write as orjson does: the rows come as arrays
        sent.update(ratio=1.5, tiny=1e-7, whole=2.0, huge=2**70)
    if n % 19 == 0:
        del sent["time"]
    if n % 23 == 0:
        del sent["data"]
        sent["data_base64"] = "aGVsbG8gd29ybGQ="
    elif n % 29 == 0:
        del sent["data"]
    elif n % 31 == 0:
        sent["data"] = {"big": 2**70, "neg": -(2**63), "float": 1e300, "dec": 0.1}
    elif n % 37 == 0:
        sent["data"] = TRICKY
    return sent


#: Rows no producer can send but a database may hold (written before validation tightened, or by
#: hand): decimals and objects among extensions, JSON null data, an empty extension object, an
#: extension name with quotes, a first-millennium time.
ODD_ROWS = """
INSERT INTO events (source, event_id, type, specversion, time, subject, data, data_base64, extensions,
                    received_at, job_id)
VALUES
 ('/odd', 'decimal', 't', '1.0', NULL, NULL, '{"a": 1.1}', NULL, '{"price": 1.10, "n": 3}', :received, 'odd'),
 ('/odd', 'object', 't', '1.0', NULL, NULL, '1', NULL, '{"obj": {"k": [1, "x"]}}', :received, 'odd'),
 ('/odd', 'null-data', 't', '1.0', NULL, NULL, 'null', NULL, '{}', :received, 'odd'),
 ('/odd', 'null-ext', 't', '1.0', NULL, 's', '[]', NULL, '{"none": null, "t": true}', :received, 'odd'),
 ('/odd', 'quoted-key', 't', '1.0', '0999-03-04 05:06:07.000001+00', NULL, '"x"', NULL,
  '{"we\\"ird\\\\key": "v", "ewreceivedat": "x", "ewseq": 1}', :received, 'odd'),
 ('/odd', 'exponent', 't', '1.0', '2026-01-01 00:00:00+00', NULL, '{"e": 1e-7}', NULL,
  '{"e": 1e-7, "neg0": -0, "int_dec": 2.00}', :received, 'odd'),
 ('/odd', 'both-data', 't', '1.0', NULL, NULL, '{"d": 1}', 'aGk=', NULL, :received, 'odd')
"""


async def seed(db: Database) -> None:
    """400 varied events through the ingest path, plus the odd rows."""
    rows = [event_row(CloudEvent.model_validate(varied(n)), RECEIVED, "seed") for n in range(400)]
    for start in range(0, len(rows), 100):
        async with db.transaction() as session:
            await statements.insert_events(session, rows[start : start + 100])
    async with db.transaction() as session:
        await session.execute(text(ODD_ROWS), {"received": RECEIVED + timedelta(seconds=1)})


async def both_ways(
    db: Database, directory: Path, query: ExportFilter, *, chunk_size: int = 64, name: str = "out.ndjson"
) -> tuple[bytes, bytes, ExportSummary, ExportSummary]:
    """The COPY path's and the generic path's files for ``query`` (decompressed), and their summaries."""
    paths = directory / f"copy-{name}", directory / f"rows-{name}"
    compress = name.endswith(".gz")
    copied = await export_to_file(db, paths[0], query, chunk_size=chunk_size, compress=compress)
    generic = await export_to_file(
        db, paths[1], query, chunk_size=chunk_size, compress=compress, use_copy=False
    )
    files = []
    for path in paths:
        data = path.read_bytes()
        assert (data[:2] == b"\x1f\x8b") is compress
        files.append(gzip.decompress(data) if compress else data)
    return files[0], files[1], copied, generic


def first_difference(copied: bytes, generic: bytes) -> str:
    """The first line that differs, both ways, for a readable failure."""
    for number, (a, b) in enumerate(zip(copied.split(b"\n"), generic.split(b"\n"), strict=False)):
        if a != b:
            return f"line {number}:\n copy:    {a!r}\n generic: {b!r}"
    counts = copied.count(b"\n"), generic.count(b"\n")
    return f"line counts differ: {counts[0]} vs {counts[1]}"


@pytest.fixture
def generic_calls(monkeypatch: pytest.MonkeyPatch) -> list[ExportFilter]:
    """The filters the generic path streamed rows for (the COPY path must not)."""
    calls: list[ExportFilter] = []
    stream = history.stream_events

    def spy(engine: Any, query: ExportFilter, *args: Any, **kwargs: Any) -> AsyncGenerator[Sequence[Any]]:
        calls.append(query)
        return stream(engine, query, *args, **kwargs)

    monkeypatch.setattr(history, "stream_events", spy)
    return calls


async def test_copy_path_writes_the_generic_paths_bytes(pg_db, tmp_path, generic_calls):
    """The whole varied table: the file from COPY is byte for byte the file the rows make."""
    await seed(pg_db)
    copied, generic, copy_summary, generic_summary = await both_ways(pg_db, tmp_path, ExportFilter())
    assert generic_calls == [ExportFilter()], "only the use_copy=False export streamed rows"
    assert copied == generic, first_difference(copied, generic)
    assert copy_summary.rows == generic_summary.rows == 407
    assert copy_summary.last_seq == generic_summary.last_seq is not None
    assert copy_summary.bytes == generic_summary.bytes == len(copied)
    lines = [orjson.loads(line) for line in copied.splitlines()]
    assert sum("ratio" in line for line in lines) == 24, "rows the server sent as arrays are there"
    odd = next(line for line in lines if line["id"] == "quoted-key")
    assert (odd["ewseq"], odd["ewreceivedat"]) == (copy_summary.last_seq - 2, "2026-02-01T12:00:01.250000Z")


async def test_server_renders_the_rows_it_can_and_sends_the_others_as_arrays(pg_db):
    """Rows with extension numbers orjson would write otherwise (or objects) come as JSON arrays."""
    await seed(pg_db)
    received: list[bytes] = []

    async def output(data: bytes) -> None:
        received.append(data)

    await export_copy.copy_ndjson(pg_db.engine, ExportFilter(), output)
    lines = b"".join(received).splitlines()
    arrays = [orjson.loads(line) for line in lines if line.startswith(b"[")]
    assert len(lines) == 407
    assert sorted(row[1] for row in arrays if row[2] == "/odd") == ["decimal", "exponent", "object"]
    assert len(arrays) == 3 + 24, "the events with decimals among their extensions (n % 17 == 0)"
    assert all(line.startswith(b"{") for line in lines if not line.startswith(b"["))


FILTERS = [
    ExportFilter(since=START + timedelta(minutes=100)),
    ExportFilter(until=START + timedelta(minutes=100, microseconds=1)),
    ExportFilter(since=START + timedelta(minutes=50), until=START + timedelta(minutes=300)),
    ExportFilter(since=RECEIVED - timedelta(hours=1)),
    ExportFilter(type="mail.sent\u2028"),
    ExportFilter(source='/quote"back\\slash'),
    ExportFilter(source="/naïve/日本", subject=f"sub{TRICKY}"),
    ExportFilter(received_before=RECEIVED + timedelta(microseconds=1)),
    ExportFilter(type="refund", source="/shop", since=START, until=START + timedelta(hours=5)),
    ExportFilter(type="no.such.type"),
]


@pytest.mark.parametrize("query", FILTERS, ids=[f"filter{n}" for n in range(len(FILTERS))])
async def test_filters_select_the_same_rows_both_ways(pg_db, tmp_path, query):
    """Every filter exports the same bytes, the same row count and the same last seq both ways."""
    await seed(pg_db)
    copied, generic, copy_summary, generic_summary = await both_ways(pg_db, tmp_path, query, chunk_size=7)
    assert copied == generic, first_difference(copied, generic)
    assert (copy_summary.rows, copy_summary.last_seq) == (generic_summary.rows, generic_summary.last_seq)
    if query.type != "no.such.type":
        assert 0 < copy_summary.rows < 407, "the filter is not trivial"


async def test_gzipped_copy_export_holds_the_same_lines(pg_db, tmp_path):
    """A gzipped export from COPY decompresses to the generic path's bytes."""
    await seed(pg_db)
    copied, generic, copy_summary, _ = await both_ways(pg_db, tmp_path, ExportFilter(), name="out.ndjson.gz")
    assert copied == generic, first_difference(copied, generic)
    assert copy_summary.bytes == (tmp_path / "copy-out.ndjson.gz").stat().st_size < len(copied)


async def test_copy_export_reports_progress_every_chunk(pg_db, tmp_path):
    """Progress comes every chunk_size rows and at the end, as on the generic path."""
    await seed(pg_db)
    reports: dict[bool, list[int]] = {}
    for use_copy in (True, False):
        seen: list[int] = []
        await export_to_file(
            pg_db,
            tmp_path / "out.ndjson",
            ExportFilter(),
            chunk_size=50,
            progress=lambda p, seen=seen: seen.append(p.rows),
            use_copy=use_copy,
        )
        reports[use_copy] = seen
    assert reports[True] == reports[False] == [*range(50, 407, 50), 407]


async def test_csv_stays_on_the_generic_path(pg_db, tmp_path, generic_calls):
    """CSV is written from rows (CRLF row ends and Python's quoting), also on asyncpg."""
    await seed(pg_db)
    summary = await export_to_file(
        pg_db, tmp_path / "out.csv", ExportFilter(), ExportFormat.CSV, chunk_size=100
    )
    assert summary.rows == 407
    assert len(generic_calls) == 1
    assert (tmp_path / "out.csv").read_bytes().count(b"\r\n") >= 408


@pytest.mark.parametrize("backend", ["psycopg"])
async def test_other_postgresql_drivers_take_the_generic_path(db, tmp_path, generic_calls):
    """Only asyncpg streams COPY output to a callback here; psycopg exports the rows."""
    await seed(db)
    assert not export_copy.available(db.engine)
    summary = await export_to_file(db, tmp_path / "out.ndjson", ExportFilter(), chunk_size=100)
    assert (summary.rows, len(generic_calls)) == (407, 1)
