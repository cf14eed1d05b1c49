"""Event exports, the pure parts: which events, in what format, and a file that appears only when whole.

No database and no event loop here. ``worker.db.sql.history`` turns an :class:`ExportFilter`
into SQL and streams rows in :data:`EXPORT_COLUMNS` order; ``jobs.export`` feeds those
rows through :func:`encode_chunk` into an :class:`AtomicWriter`. On PostgreSQL through
asyncpg, ``worker.db.sql.export_copy`` has the server write the NDJSON lines instead, and
:class:`CopyLines` passes them on (counting them, rendering the few the server could not).

Formats:

- **NDJSON**: one event per line in CloudEvents JSON form (a valid CloudEvent that
  ``eventworker enqueue`` accepts again), with two extension attributes added:
  ``ewseq`` (the event's ``seq``, its place in the table) and ``ewreceivedat`` (when it
  was stored). Both are prefixed so they cannot clobber an extension of the producer's
  own, like the common ``seq``; a stored extension with one of these two names is
  replaced by eventworker's value. ``time`` is RFC 3339 in UTC with ``Z``; ``data`` is the
  stored JSON as is; a JSON ``null`` (or no data) leaves ``data`` out, as on ingest.
- **CSV** (RFC 4180, CRLF line ends, a header row): one column per attribute,
  ``data`` and ``extensions`` as JSON text, absent values as empty cells.
"""

from __future__ import annotations

import csv
import gzip
import io
import os
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path, PurePath
from types import TracebackType
from typing import Any

import orjson

from worker.domain.rows import EVENT_COLUMNS
from worker.protocol.serialization import OutOfRangeNumber

#: The columns an export reads, in the order ``worker.db.sql.history`` selects them: ``seq``, then the
#: stored row's (:data:`~worker.domain.rows.EVENT_COLUMNS`) with the event's id under its CloudEvents
#: name and without the ingest job's id. ``data`` is the stored JSON as text, so that it is copied out
#: without being parsed.
EXPORT_COLUMNS = ("seq", "id", *(name for name in EVENT_COLUMNS if name not in {"event_id", "job_id"}))
#: The CSV header: one column per exported column, under the same names.
CSV_HEADER = EXPORT_COLUMNS
#: Extension attributes an NDJSON export adds to each event (lower-case alphanumerics, as CloudEvents asks).
SEQ_ATTRIBUTE = "ewseq"
RECEIVED_ATTRIBUTE = "ewreceivedat"
#: gzip level 6, as the gzip tool: Python's default of 9 is several times slower for a few percent.
GZIP_LEVEL = 6

_ORJSON_OPTIONS = orjson.OPT_UTC_Z | orjson.OPT_APPEND_NEWLINE
_OPTIONAL = ("subject", "datacontenttype", "dataschema")


class ExportFormat(StrEnum):
    """What an export file holds."""

    NDJSON = "ndjson"
    CSV = "csv"


@dataclass(frozen=True, slots=True)
class ExportFilter:
    """Which events to export; every given condition must hold.

    ``since`` (inclusive) and ``until`` (exclusive) bound the event's own ``time``, or
    ``received_at`` for events sent without a time, so a range selects by when things
    happened wherever the producer said so. ``type``, ``source`` and ``subject`` match
    exactly. ``received_before`` bounds ``received_at`` alone (what retention deletes by).
    """

    since: datetime | None = None
    until: datetime | None = None
    type: str | None = None
    source: str | None = None
    subject: str | None = None
    received_before: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until", "received_before"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValueError(f"{name}: a time zone is required (e.g. 2026-01-02T00:00:00Z)")
        if self.since is not None and self.until is not None and self.since >= self.until:
            raise ValueError("since must be before until")


@dataclass(frozen=True, slots=True)
class ExportProgress:
    """How far an export has come."""

    rows: int
    seconds: float

    @property
    def rows_per_s(self) -> float:
        """Average rate so far."""
        return self.rows / self.seconds if self.seconds > 0 else 0.0


def parse_time(text: str) -> datetime:
    """An RFC 3339 time with a time zone (``Z`` or an offset), as an aware UTC datetime."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time (e.g. 2026-01-02T03:04:05Z)") from None
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone; add Z or an offset such as +02:00")
    return value.astimezone(UTC)


def rfc3339(value: datetime) -> str:
    """``value`` in UTC as RFC 3339 with ``Z`` (microseconds only when there are some)."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _has_data(data: str | None) -> bool:
    return data is not None and data != "null"


def cloudevent(row: Sequence[Any]) -> dict[str, Any]:
    """The event in CloudEvents JSON form from a row in :data:`EXPORT_COLUMNS` order.

    ``time`` and ``ewreceivedat`` stay datetimes and ``data`` an :class:`orjson.Fragment`
    (the stored JSON text, embedded without a parse): :func:`ndjson_lines` renders them.
    """
    seq, event_id, source, type_, version, time, subject, ctype, schema, data, b64, ext, received = row
    event: dict[str, Any] = {"specversion": version, "id": event_id, "source": source, "type": type_}
    if time is not None:
        event["time"] = time
    for name, value in zip(_OPTIONAL, (subject, ctype, schema), strict=True):
        if value is not None:
            event[name] = value
    if ext:
        event.update(ext)
    event[SEQ_ATTRIBUTE] = seq
    event[RECEIVED_ATTRIBUTE] = received
    if _has_data(data):
        event["data"] = orjson.Fragment(data)
    elif b64 is not None:
        event["data_base64"] = b64
    return event


def _as_json_text(value: Any) -> Any:
    """``value`` as its JSON text if orjson refuses it: an integer beyond 64 bits, or a number
    no float holds (both valid JSON, decoded exactly by :func:`worker.protocol.serialization.deserialize`)."""
    if type(value) is int:
        return orjson.Fragment(str(value))
    if isinstance(value, OutOfRangeNumber):
        return orjson.Fragment(value.text)
    return value


def _dumps(value: dict[str, Any], option: int | None = None) -> bytes:
    """orjson's bytes for a flat object whose values may include numbers orjson refuses."""
    try:
        return orjson.dumps(value, option=option)
    except TypeError:  # orjson.JSONEncodeError; rare, so the values are looked at only then
        return orjson.dumps({name: _as_json_text(item) for name, item in value.items()}, option=option)


def ndjson_lines(rows: Iterable[Sequence[Any]]) -> bytes:
    """One JSON line per row, each ending in a newline."""
    return b"".join(_dumps(cloudevent(row), _ORJSON_OPTIONS) for row in rows)


def row_from_array(line: bytes, loads: Callable[[str], Any]) -> tuple[Any, ...]:
    """A row in :data:`EXPORT_COLUMNS` order from its JSON array (``worker.db.sql.export_copy.ROW_ARRAY``).

    Times come as RFC 3339 text; ``extensions`` as JSON text, read with ``loads``, which is
    to be how the database layer reads the column; ``data`` stays JSON text.
    """
    values = orjson.loads(line)
    for index in _TIME_INDEXES:
        if values[index] is not None:
            values[index] = datetime.fromisoformat(values[index])
    if values[_EXTENSIONS_INDEX] is not None:
        values[_EXTENSIONS_INDEX] = loads(values[_EXTENSIONS_INDEX])
    return tuple(values)


_TIME_INDEXES = (EXPORT_COLUMNS.index("time"), EXPORT_COLUMNS.index("received_at"))
_EXTENSIONS_INDEX = EXPORT_COLUMNS.index("extensions")


class CopyLines:
    """The NDJSON file's bytes from the output of ``worker.db.sql.export_copy.copy_ndjson``.

    :meth:`feed` takes the bytes as they arrive, cut anywhere, and returns the complete
    lines among them (an incomplete last line waits for the next call), counted in
    :attr:`rows`. A line that is a JSON array rather than an object is a row the server
    could not render exactly (see ``worker.db.sql.export_copy``): it is rendered here with
    :func:`ndjson_lines`, its extensions read with ``loads`` (the database layer's JSON
    decoder). The search for one is a single scan per call, so the bytes of ordinary rows
    pass through untouched.
    """

    def __init__(self, loads: Callable[[str], Any]) -> None:
        self._loads = loads
        self.rows = 0
        self._partial = b""
        self._last_line = b""

    def feed(self, data: bytes) -> bytes:
        """The complete lines in ``self``'s leftover and ``data``, each ending in a newline."""
        end = data.rfind(b"\n") + 1
        if end == 0:
            self._partial += data
            return b""
        lines = self._partial + data[:end] if self._partial else data[:end]
        self._partial = data[end:]
        self.rows += lines.count(b"\n")
        if lines.startswith(b"[") or b"\n[" in lines:
            lines = b"".join(
                ndjson_lines([row_from_array(line, self._loads)]) if line.startswith(b"[") else line + b"\n"
                for line in lines[:-1].split(b"\n")
            )
        self._last_line = lines[lines.rfind(b"\n", 0, -1) + 1 :]
        return lines

    def finish(self) -> None:
        """Check that the output ended with a whole line."""
        if self._partial:
            raise ValueError(
                f"COPY output ended inside a line ({len(self._partial)} bytes after the last newline)"
            )

    @property
    def last_seq(self) -> int | None:
        """The ``ewseq`` of the last line so far (the highest ``seq``: lines come in ``seq`` order)."""
        return int(orjson.loads(self._last_line)[SEQ_ATTRIBUTE]) if self._last_line else None


def _csv_cell(name: str, value: Any) -> Any:
    if value is None:
        return ""
    if name in {"time", "received_at"}:
        return rfc3339(value)
    if name == "data":
        return value if _has_data(value) else ""
    if name == "extensions":
        return _dumps(value).decode() if value else ""
    return value


def csv_header() -> bytes:
    """The CSV header line."""
    return _csv_encode([CSV_HEADER])


def csv_rows(rows: Iterable[Sequence[Any]]) -> bytes:
    """CSV lines for rows in :data:`EXPORT_COLUMNS` order."""
    return _csv_encode(
        [_csv_cell(name, value) for name, value in zip(EXPORT_COLUMNS, row, strict=True)] for row in rows
    )


def _csv_encode(rows: Iterable[Sequence[Any]]) -> bytes:
    buffer = io.StringIO()
    csv.writer(buffer).writerows(rows)
    return buffer.getvalue().encode()


def encode_chunk(rows: Sequence[Sequence[Any]], fmt: ExportFormat) -> bytes:
    """A chunk of rows in ``fmt``."""
    return ndjson_lines(rows) if fmt is ExportFormat.NDJSON else csv_rows(rows)


def wants_gzip(path: str | PurePath, compress: bool) -> bool:
    """Compress when asked to, or when the file name ends in ``.gz``."""
    return compress or PurePath(path).suffix == ".gz"


def resolve_under(base: str | Path, name: str) -> Path:
    """``name`` inside ``base``; a path that is absolute or climbs out of ``base`` is refused.

    For jobs: whoever can enqueue a job must not be able to pick any file the worker may write.
    """
    relative = PurePath(name)
    if not name or relative.is_absolute() or ".." in relative.parts:
        raise ValueError(f"{name!r}: give a file name relative to the export directory, without '..'")
    return Path(base) / relative


class AtomicWriter:
    """A file that appears at ``target`` only once it is complete.

    Bytes go to a temporary file beside the target (same directory, so the final rename
    is atomic), gzip-compressed when ``compress``. :meth:`commit` flushes, fsyncs and
    renames it into place, replacing any older file; :meth:`abort`, or any exception
    inside ``with`` (cancellation included), removes it. The file is readable by its
    owner only (``mkstemp``): exports hold event payloads.
    """

    def __init__(self, target: str | Path, *, compress: bool = False) -> None:
        self.target = Path(target)
        fd, temp = tempfile.mkstemp(dir=self.target.parent, prefix=f".{self.target.name}.", suffix=".tmp")
        self.temp_path = Path(temp)
        self._file = os.fdopen(fd, "wb")
        self._gzip = (
            gzip.GzipFile(filename=self.target.name, mode="wb", fileobj=self._file, compresslevel=GZIP_LEVEL)
            if compress
            else None
        )
        self._closed = False

    def write(self, data: bytes) -> None:
        """Append ``data`` (compressed if the file is)."""
        (self._gzip or self._file).write(data)

    def commit(self) -> int:
        """Make the file durable and put it in place; return its size in bytes."""
        if self._gzip is not None:
            self._gzip.close()  # writes the gzip trailer; leaves the underlying file open
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._closed = True
        os.replace(self.temp_path, self.target)
        _fsync_directory(self.target.parent)
        return self.target.stat().st_size

    def abort(self) -> None:
        """Drop the temporary file; the target (if one existed before) is left as it was."""
        if not self._closed:
            self._closed = True
            self._file.close()  # the gzip layer is dropped unflushed: its bytes are being thrown away
        self.temp_path.unlink(missing_ok=True)

    def __enter__(self) -> AtomicWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
            return
        try:
            self.commit()
        except BaseException:
            self.abort()
            raise


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable (POSIX); a platform that cannot is left to its own cache."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
