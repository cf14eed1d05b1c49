"""Export formatting and the atomic writer: pure functions and a local file, tested as tables."""

from __future__ import annotations

import csv
import gzip
import io
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from worker.domain.export import (
    CSV_HEADER,
    EXPORT_COLUMNS,
    AtomicWriter,
    CopyLines,
    ExportFilter,
    ExportFormat,
    ExportProgress,
    cloudevent,
    csv_header,
    csv_rows,
    encode_chunk,
    ndjson_lines,
    parse_time,
    resolve_under,
    rfc3339,
    row_from_array,
    wants_gzip,
)

RECEIVED = datetime(2026, 3, 4, 5, 6, 7, 890000, tzinfo=UTC)
TIME = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def row(**values: Any) -> tuple[Any, ...]:
    """A row in EXPORT_COLUMNS order, as the database layer yields it (``data`` as JSON text)."""
    defaults: dict[str, Any] = {
        "seq": 7,
        "id": "evt-1",
        "source": "/shop",
        "type": "com.example.order",
        "specversion": "1.0",
        "time": TIME,
        "subject": None,
        "datacontenttype": None,
        "dataschema": None,
        "data": '{"n": 1}',
        "data_base64": None,
        "extensions": None,
        "received_at": RECEIVED,
    }
    unknown = set(values) - set(defaults)
    assert not unknown, unknown
    return tuple({**defaults, **values}[name] for name in EXPORT_COLUMNS)


def _values(cells: tuple[Any, ...]) -> dict[str, Any]:
    """The keyword arguments :func:`row` takes to make ``cells`` again."""
    return dict(zip(EXPORT_COLUMNS, cells, strict=True))


BASE = {"specversion": "1.0", "id": "evt-1", "source": "/shop", "type": "com.example.order"}
ADDED = {"ewseq": 7, "ewreceivedat": "2026-03-04T05:06:07.890000Z"}


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(
            {}, {**BASE, "time": "2026-01-02T03:04:05.123456Z", **ADDED, "data": {"n": 1}}, id="plain"
        ),
        pytest.param({"time": None}, {**BASE, **ADDED, "data": {"n": 1}}, id="no time"),
        pytest.param(
            {"time": TIME.replace(microsecond=0)},
            {**BASE, "time": "2026-01-02T03:04:05Z", **ADDED, "data": {"n": 1}},
            id="whole seconds",
        ),
        pytest.param(
            {"subject": "order/1", "datacontenttype": "application/json", "dataschema": "https://s"},
            {
                **BASE,
                "time": "2026-01-02T03:04:05.123456Z",
                "subject": "order/1",
                "datacontenttype": "application/json",
                "dataschema": "https://s",
                **ADDED,
                "data": {"n": 1},
            },
            id="optional attributes",
        ),
        pytest.param(
            {"extensions": {"traceparent": "00-ab", "priority": 3, "flag": True}, "time": None},
            {**BASE, "traceparent": "00-ab", "priority": 3, "flag": True, **ADDED, "data": {"n": 1}},
            id="extensions flattened",
        ),
        pytest.param(
            {"extensions": {"seq": 99, "ewseq": 1}, "time": None},
            {**BASE, "seq": 99, **ADDED, "data": {"n": 1}},
            id="a producer's seq is kept; ewseq is ours",
        ),
        pytest.param({"data": None, "time": None}, {**BASE, **ADDED}, id="no data"),
        pytest.param({"data": "null", "time": None}, {**BASE, **ADDED}, id="JSON null data left out"),
        pytest.param({"data": '"text"', "time": None}, {**BASE, **ADDED, "data": "text"}, id="string data"),
        pytest.param(
            {"data": "[1, 2.5, null]", "time": None}, {**BASE, **ADDED, "data": [1, 2.5, None]}, id="array"
        ),
        pytest.param(
            {"data": None, "data_base64": "aGVsbG8=", "time": None},
            {**BASE, **ADDED, "data_base64": "aGVsbG8="},
            id="binary data",
        ),
        pytest.param(
            {"data": '{"s": "é ✓ \\n"}', "time": None},
            {**BASE, **ADDED, "data": {"s": "é ✓ \n"}},
            id="unicode and escapes",
        ),
    ],
)
def test_ndjson_line_is_the_cloudevent_with_seq_and_receivedat(values, expected):
    """A line is the stored event in CloudEvents JSON form plus ewseq and ewreceivedat."""
    line = ndjson_lines([row(**values)])
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1
    assert orjson.loads(line) == expected
    assert list(orjson.loads(line)) == list(expected), "attribute order: context, extensions, ours, data"


def test_ndjson_embeds_stored_json_text_as_is():
    """Stored data is copied out without being parsed and re-serialized."""
    line = ndjson_lines([row(data='{"b": 1,  "a": [1,2]}')])
    assert line.endswith(b',"data":{"b": 1,  "a": [1,2]}}\n')


def test_cloudevent_time_stays_a_datetime_until_rendered():
    """cloudevent() leaves times to orjson, which renders them as RFC 3339 with Z."""
    event = cloudevent(row())
    assert event["time"] == TIME
    assert event["ewreceivedat"] == RECEIVED


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-01-02T03:04:05Z", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02T03:04:05.5Z", datetime(2026, 1, 2, 3, 4, 5, 500000, tzinfo=UTC)),
        ("2026-01-02T05:04:05+02:00", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        ("2026-01-02 03:04:05-01:30", datetime(2026, 1, 2, 4, 34, 5, tzinfo=UTC)),
        (" 2026-01-02T03:04:05Z ", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
    ],
)
def test_parse_time_accepts_rfc3339_with_a_zone(text, expected):
    """RFC 3339 times with Z or an offset become aware UTC datetimes."""
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed.tzinfo is UTC


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("2026-01-02T03:04:05", "no time zone"),
        ("2026-01-02", "no time zone"),
        ("yesterday", "not an RFC 3339 time"),
        ("", "not an RFC 3339 time"),
        ("2026-13-02T03:04:05Z", "not an RFC 3339 time"),
    ],
)
def test_parse_time_refuses_what_is_not_an_aware_time(text, message):
    """A time without a zone, or not a time at all, is refused with the reason."""
    with pytest.raises(ValueError, match=message):
        parse_time(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (TIME, "2026-01-02T03:04:05.123456Z"),
        (TIME.replace(microsecond=0), "2026-01-02T03:04:05Z"),
        (datetime(2026, 1, 2, 5, 4, 5, tzinfo=timezone(timedelta(hours=2))), "2026-01-02T03:04:05Z"),
    ],
)
def test_rfc3339_is_utc_with_z(value, expected):
    """Times are written in UTC with Z, the same way in CSV as orjson writes them in NDJSON."""
    assert rfc3339(value) == expected
    assert orjson.dumps(value.astimezone(UTC), option=orjson.OPT_UTC_Z) == f'"{expected}"'.encode()


def _read_csv(data: bytes) -> list[list[str]]:
    return list(csv.reader(io.StringIO(data.decode(), newline="")))


def test_csv_header_names_every_column():
    """The header lists the exported columns, CRLF-terminated as RFC 4180 says."""
    assert csv_header() == (",".join(CSV_HEADER) + "\r\n").encode()
    assert _read_csv(csv_header()) == [list(EXPORT_COLUMNS)]


def test_export_columns_keep_their_order():
    """The exported columns, derived from the stored row's, are the export format's: pinned here."""
    assert EXPORT_COLUMNS == (
        "seq",
        "id",
        "source",
        "type",
        "specversion",
        "time",
        "subject",
        "datacontenttype",
        "dataschema",
        "data",
        "data_base64",
        "extensions",
        "received_at",
    )


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        pytest.param(
            {},
            {
                "seq": "7",
                "time": "2026-01-02T03:04:05.123456Z",
                "data": '{"n": 1}',
                "subject": "",
                "extensions": "",
            },
            id="plain",
        ),
        pytest.param({"time": None, "data": "null"}, {"time": "", "data": ""}, id="absent values are empty"),
        pytest.param(
            {"extensions": {"traceparent": "00-ab", "priority": 3}},
            {"extensions": '{"traceparent":"00-ab","priority":3}'},
            id="extensions as JSON",
        ),
        pytest.param(
            {"subject": 'with "quotes", commas\nand lines', "data": '{"a": "x,y"}'},
            {"subject": 'with "quotes", commas\nand lines', "data": '{"a": "x,y"}'},
            id="quoting",
        ),
        pytest.param(
            {"data": None, "data_base64": "aGVsbG8="},
            {"data": "", "data_base64": "aGVsbG8="},
            id="binary data",
        ),
    ],
)
def test_csv_row_cells(values, expected):
    """Each attribute in its own cell; data and extensions as JSON text; absent values empty."""
    [cells] = _read_csv(csv_rows([row(**values)]))
    by_name = dict(zip(EXPORT_COLUMNS, cells, strict=True))
    assert by_name["received_at"] == "2026-03-04T05:06:07.890000Z"
    for name, cell in expected.items():
        assert by_name[name] == cell, name


@pytest.mark.parametrize("fmt", list(ExportFormat))
def test_encode_chunk_writes_one_record_per_row(fmt):
    """A chunk encodes to one line (NDJSON) or record (CSV) per row, in order."""
    rows = [row(seq=n, id=f"evt-{n}") for n in range(1, 4)]
    encoded = encode_chunk(rows, fmt)
    if fmt is ExportFormat.NDJSON:
        assert [orjson.loads(line)["ewseq"] for line in encoded.splitlines()] == [1, 2, 3]
    else:
        assert [record[0] for record in _read_csv(encoded)] == ["1", "2", "3"]
    assert encode_chunk([], fmt) == b""


@pytest.mark.parametrize(
    ("path", "compress", "expected"),
    [
        ("out.ndjson", False, False),
        ("out.ndjson", True, True),
        ("out.ndjson.gz", False, True),
        ("dir.gz/out.csv", False, False),
        ("out.gzip", False, False),
    ],
)
def test_wants_gzip(path, compress, expected):
    """Compressed when asked, or when the file name ends in .gz."""
    assert wants_gzip(path, compress) is expected


@pytest.mark.parametrize("name", ["out.ndjson", "daily/2026-01-02.csv.gz", "./out.ndjson"])
def test_resolve_under_keeps_relative_names_inside(tmp_path, name):
    """A relative name lands inside the export directory."""
    resolved = resolve_under(tmp_path, name)
    assert resolved.resolve().is_relative_to(tmp_path.resolve())


@pytest.mark.parametrize("name", ["/etc/passwd", "../out.ndjson", "daily/../../out.ndjson", ""])
def test_resolve_under_refuses_names_that_leave_the_directory(tmp_path, name):
    """An absolute name or one climbing out with '..' is refused: a job cannot pick any file."""
    with pytest.raises(ValueError, match="relative to the export directory"):
        resolve_under(tmp_path, name)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"since": datetime(2026, 1, 2)}, "since: a time zone is required"),
        ({"until": datetime(2026, 1, 2)}, "until: a time zone is required"),
        ({"received_before": datetime(2026, 1, 2)}, "received_before: a time zone is required"),
        ({"since": TIME, "until": TIME}, "since must be before until"),
        ({"since": TIME, "until": TIME - timedelta(seconds=1)}, "since must be before until"),
    ],
)
def test_export_filter_refuses_naive_or_empty_ranges(values, message):
    """Naive datetimes and empty time ranges are refused when the filter is built."""
    with pytest.raises(ValueError, match=message):
        ExportFilter(**values)


@pytest.mark.parametrize(("rows", "seconds", "rate"), [(1000, 2.0, 500.0), (10, 0.0, 0.0), (0, 1.0, 0.0)])
def test_progress_rate(rows, seconds, rate):
    """rows/s is the average so far, 0 before any time has passed."""
    assert ExportProgress(rows, seconds).rows_per_s == rate


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def _write_then_fail(target: Path, error: BaseException, *, compress: bool = False) -> None:
    with AtomicWriter(target, compress=compress) as writer:
        writer.write(b"partial\n")
        raise error


@pytest.mark.parametrize("compress", [False, True])
def test_atomic_writer_puts_the_whole_file_in_place(tmp_path, compress):
    """On success the file appears whole under its name, and no temporary file is left."""
    target = tmp_path / "out.ndjson"
    with AtomicWriter(target, compress=compress) as writer:
        writer.write(b"one\n")
        assert not target.exists(), "nothing under the final name before commit"
        assert writer.temp_path.parent == tmp_path
        writer.write(b"two\n")
    data = target.read_bytes()
    assert (gzip.decompress(data) if compress else data) == b"one\ntwo\n"
    assert _leftovers(tmp_path) == ["out.ndjson"]
    assert target.stat().st_mode & 0o777 == 0o600


def test_atomic_writer_gzip_names_the_uncompressed_file(tmp_path):
    """The gzip header carries the final name (without .gz) for gunzip -N, not the temporary one."""
    with AtomicWriter(tmp_path / "events.ndjson.gz", compress=True) as writer:
        writer.write(b"{}\n")
    header = (tmp_path / "events.ndjson.gz").read_bytes()
    assert header[3] & 0x08, "FNAME flag set"
    assert header[10 : header.index(b"\0", 10)] == b"events.ndjson"


def test_atomic_writer_commit_returns_the_size(tmp_path):
    """commit() returns the size of the file put in place (compressed size when gzipped)."""
    writer = AtomicWriter(tmp_path / "out.gz", compress=True)
    writer.write(b"x" * 100_000)
    size = writer.commit()
    assert size == (tmp_path / "out.gz").stat().st_size
    assert size < 1000


@pytest.mark.parametrize("error", [RuntimeError("disk on fire"), KeyboardInterrupt(), GeneratorExit()])
@pytest.mark.parametrize("compress", [False, True])
def test_atomic_writer_leaves_nothing_on_any_exception(tmp_path, error, compress):
    """Any exception inside ``with``, cancellation-like ones included, removes the temporary file."""
    with pytest.raises(type(error)):
        _write_then_fail(tmp_path / "out.ndjson", error, compress=compress)
    assert _leftovers(tmp_path) == []


def test_atomic_writer_abort_keeps_the_previous_file(tmp_path):
    """A failed export does not touch the complete file an earlier export left at the same path."""
    target = tmp_path / "out.ndjson"
    target.write_bytes(b"earlier\n")
    with pytest.raises(RuntimeError):
        _write_then_fail(target, RuntimeError("stop"))
    assert target.read_bytes() == b"earlier\n"
    assert _leftovers(tmp_path) == ["out.ndjson"]


def test_atomic_writer_replaces_the_previous_file_on_success(tmp_path):
    """A complete export replaces an older file at the same path."""
    target = tmp_path / "out.ndjson"
    target.write_bytes(b"earlier\n")
    with AtomicWriter(target) as writer:
        writer.write(b"newer\n")
    assert target.read_bytes() == b"newer\n"
    assert _leftovers(tmp_path) == ["out.ndjson"]


def test_atomic_writer_abort_is_idempotent(tmp_path):
    """abort() after abort() (or after a failed commit) is harmless."""
    writer = AtomicWriter(tmp_path / "out.ndjson")
    writer.abort()
    writer.abort()
    assert _leftovers(tmp_path) == []


def test_atomic_writer_needs_an_existing_directory(tmp_path):
    """A missing directory fails at once, before anything is written."""
    with pytest.raises(FileNotFoundError):
        AtomicWriter(tmp_path / "missing" / "out.ndjson")


def test_integers_beyond_64_bits_are_written_digit_for_digit():
    """An extension integer orjson refuses (kept exact by the database layer's decoder) still exports."""
    line = ndjson_lines([row(extensions={"big": 2**70, "small": -(2**64), "n": 1, "s": "x"})])
    assert line.startswith(b'{"specversion":"1.0"')
    assert b',"big":1180591620717411303424,"small":-18446744073709551616,"n":1,"s":"x",' in line
    assert csv_rows([row(extensions={"big": 2**70})]).count(b'"{""big"":1180591620717411303424}"') == 1


def _array(**values: Any) -> bytes:
    """A row as the COPY path's JSON array: times as text, extensions as JSON text."""
    cells = list(row(**values))
    for index in (EXPORT_COLUMNS.index("time"), EXPORT_COLUMNS.index("received_at")):
        cells[index] = rfc3339(cells[index]) if cells[index] is not None else None
    extensions = EXPORT_COLUMNS.index("extensions")
    cells[extensions] = json.dumps(cells[extensions]) if cells[extensions] is not None else None
    return orjson.dumps(cells)


ROWS = [
    row(),
    row(seq=8, extensions={"price": 1.1}, time=None),
    row(seq=9, data=None, data_base64="aGk="),
    row(seq=10, extensions={"ewseq": "x", "huge": 2**70}, subject="s"),
]
#: COPY output for ROWS: the server's lines for rows 1 and 3, arrays for rows 2 and 4.
COPIED = ndjson_lines(ROWS[:1]) + _array(**_values(ROWS[1])) + b"\n" + ndjson_lines(ROWS[2:3])
COPIED += _array(**_values(ROWS[3])) + b"\n"


@pytest.mark.parametrize("cut", [1, 2, 7, 50, 10_000])
def test_copy_lines_pass_lines_on_and_render_arrays_wherever_the_bytes_are_cut(cut):
    """COPY output cut anywhere gives the generic path's bytes, the row count and the last seq."""
    lines = CopyLines(json.loads)
    out = [lines.feed(COPIED[start : start + cut]) for start in range(0, len(COPIED), cut)]
    lines.finish()
    assert b"".join(out) == ndjson_lines(ROWS)
    assert all(part.endswith(b"\n") for part in out if part), "only whole lines come out"
    assert (lines.rows, lines.last_seq) == (4, 10)


def test_copy_lines_count_only_whole_lines_and_refuse_a_cut_last_line():
    """Bytes after the last newline wait; output ending inside a line is an error."""
    lines = CopyLines(json.loads)
    assert (lines.feed(b""), lines.rows, lines.last_seq) == (b"", 0, None)
    assert lines.feed(COPIED[:10]) == b""
    with pytest.raises(ValueError, match="ended inside a line"):
        lines.finish()


def test_row_from_array_reads_extensions_with_the_given_decoder():
    """The array's extensions are decoded by the function given (the engine's JSON decoder)."""
    array = _array(**_values(ROWS[3]))
    assert row_from_array(array, json.loads) == ROWS[3]
    assert row_from_array(array, lambda text: {"decoded": text})[EXPORT_COLUMNS.index("extensions")] == {
        "decoded": '{"ewseq": "x", "huge": 1180591620717411303424}'
    }
