"""NDJSON exports written by PostgreSQL itself: ``COPY (SELECT <one line per event>) TO STDOUT``.

On asyncpg the server renders each event's NDJSON line (:data:`NDJSON_LINE`) and streams
the lines through ``COPY``; the worker only writes bytes, with no per-row Python work. The
lines are byte for byte those of :func:`worker.domain.export.ndjson_lines` on the same rows
(``tests/integration/test_export_copy.py`` compares the two paths' files), because:

- strings go through ``to_json(text)``, whose escaping is orjson's (``"``, ``\\``, the
  short escapes, ``\\u00XX`` in lower case for the other control characters, everything
  else as UTF-8; text cannot hold NUL);
- times are ``to_char`` in UTC with microseconds only when there are some, as orjson's
  ``OPT_UTC_Z`` writes them;
- ``data`` is the stored ``jsonb`` text, which the generic path embeds as is too;
- extension values are their ``jsonb`` text, which is what orjson writes back for strings,
  booleans, null and integers in orjson's 64-bit range, in ``jsonb``'s key order (the
  order the generic path reads them in); ``ewseq``/``ewreceivedat`` among them take
  eventworker's values in place, as a dict update does.

An event with any other extension value (a decimal such as ``1.10`` or ``1e-7``, an
integer beyond 64 bits, which JSON decoders read differently, an object) could come out
differently, so its line is
instead a JSON array of the row in :data:`~worker.domain.export.EXPORT_COLUMNS` order
(:data:`ROW_ARRAY`), which :class:`worker.domain.export.CopyLines` renders in Python, reading the
extensions with the engine's own JSON decoder (:func:`json_loads`), as the generic path does.

``COPY`` runs in ``FORMAT csv`` with delimiter ``\\x01`` and quote ``\\x02``: a line never
holds either, nor a CR or LF (JSON escapes every control character), so no value is
quoted or escaped and each row is the line and ``\\n``. (The text format would double
every backslash.) CSV exports are not made this way: Python's ``csv`` ends rows with
CRLF, and COPY ends rows with LF and quotes any value holding a CR.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import ColumnElement, Select, func, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine

from worker.db.sql import history
from worker.domain.export import EXPORT_COLUMNS, RECEIVED_ATTRIBUTE, SEQ_ATTRIBUTE, ExportFilter
from worker.tracing import hooks

#: Drivers whose connection can stream ``COPY ... TO STDOUT`` to a callback.
_COPY_DRIVERS = frozenset({"asyncpg"})
#: ``COPY`` options under which a line is sent as is (see the module docstring).
COPY_OPTIONS: dict[str, str] = {"format": "csv", "delimiter": "\x01", "quote": "\x02"}
#: The integers orjson reads as integers and writes back digit for digit (i64 and u64).
_INT_RANGE = ("-9223372036854775808", "18446744073709551615")


def _utc(column: str) -> str:
    """``column`` (timestamptz) as orjson writes a UTC datetime, without the quotes."""
    return (
        f"to_char({column} AT TIME ZONE 'UTC', CASE WHEN date_part('microseconds', {column})::int"
        """ % 1000000 = 0 THEN 'YYYY-MM-DD"T"HH24:MI:SS"Z"' ELSE 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"' END)"""
    )


def _json(column: str) -> str:
    return f"to_json({column})::text"


def _optional(name: str, value: str, column: str) -> str:
    return f"CASE WHEN {column} IS NULL THEN '' ELSE ',\"{name}\":' || {value} END"


#: An extension value whose ``jsonb`` text is what orjson writes for it after reading it.
_EXACT_VALUE = (
    "jsonb_typeof(x.value) IN ('string', 'boolean', 'null') OR (jsonb_typeof(x.value) = 'number'"
    " AND x.value::text ~ '^-?[0-9]+$'"
    f" AND x.value::text::numeric BETWEEN {_INT_RANGE[0]} AND {_INT_RANGE[1]})"
)
#: The extension members, each as ``,"name":value``, or NULL when one value is not exact.
_EXTENSIONS = (
    f"(SELECT CASE WHEN coalesce(bool_and({_EXACT_VALUE}), true)"  # noqa: S608 (constants only, no input)
    " THEN coalesce(string_agg(',' || to_json(x.key)::text || ':' ||"
    f" CASE x.key WHEN '{SEQ_ATTRIBUTE}' THEN events.seq::text"
    f" WHEN '{RECEIVED_ATTRIBUTE}' THEN '\"' || {_utc('events.received_at')} || '\"'"
    " ELSE x.value::text END, '' ORDER BY x.n), '') END"
    " FROM jsonb_each(events.extensions) WITH ORDINALITY AS x(key, value, n))"
)

#: The event's NDJSON line without its newline, as :func:`worker.domain.export.cloudevent` orders it;
#: NULL for an event :data:`ROW_ARRAY` stands in for.
NDJSON_LINE = " || ".join(
    [
        "'{\"specversion\":' || " + _json("events.specversion"),
        "',\"id\":' || " + _json("events.event_id"),
        "',\"source\":' || " + _json("events.source"),
        "',\"type\":' || " + _json("events.type"),
        _optional("time", f"'\"' || {_utc('events.time')} || '\"'", "events.time"),
        _optional("subject", _json("events.subject"), "events.subject"),
        _optional("datacontenttype", _json("events.datacontenttype"), "events.datacontenttype"),
        _optional("dataschema", _json("events.dataschema"), "events.dataschema"),
        f"CASE WHEN events.extensions IS NULL THEN '' ELSE {_EXTENSIONS} END",
        f"CASE WHEN events.extensions ? '{SEQ_ATTRIBUTE}' THEN ''"
        f" ELSE ',\"{SEQ_ATTRIBUTE}\":' || events.seq::text END",
        f"CASE WHEN events.extensions ? '{RECEIVED_ATTRIBUTE}' THEN ''"
        f" ELSE ',\"{RECEIVED_ATTRIBUTE}\":\"' || {_utc('events.received_at')} || '\"' END",
        "CASE WHEN events.data IS NOT NULL AND events.data <> 'null'::jsonb"
        " THEN ',\"data\":' || events.data::text"
        " WHEN events.data_base64 IS NOT NULL THEN ',\"data_base64\":' || to_json(events.data_base64)::text"
        " ELSE '' END",
        "'}'",
    ]
)

_ROW_VALUES = {
    "seq": "events.seq",
    "id": "events.event_id",
    "source": "events.source",
    "type": "events.type",
    "specversion": "events.specversion",
    "time": _utc("events.time"),
    "subject": "events.subject",
    "datacontenttype": "events.datacontenttype",
    "dataschema": "events.dataschema",
    "data": "events.data::text",
    "data_base64": "events.data_base64",
    "extensions": "events.extensions::text",
    "received_at": _utc("events.received_at"),
}
#: The row as a JSON array in EXPORT_COLUMNS order: times as RFC 3339 text, ``data`` and
#: ``extensions`` as their JSON text (decoded by :func:`worker.domain.export.row_from_array`).
ROW_ARRAY = f"json_build_array({', '.join(_ROW_VALUES[name] for name in EXPORT_COLUMNS)})::text"


def json_loads(engine: AsyncEngine) -> Callable[[str], Any]:
    """The function ``engine`` decodes JSON columns with (SQLAlchemy's own default when none is set)."""
    loads: Callable[[str], Any] | None = getattr(engine.dialect, "_json_deserializer", None)
    return loads or json.loads


def available(engine: AsyncEngine) -> bool:
    """Whether ``engine``'s connections can run :func:`copy_ndjson`."""
    return engine.dialect.name == "postgresql" and engine.dialect.driver in _COPY_DRIVERS


def select_lines(query: ExportFilter) -> Select[Any]:
    """One text column: each matching event's NDJSON line (or its :data:`ROW_ARRAY`), by ``seq``."""
    line: ColumnElement[str] = literal_column(f"coalesce({NDJSON_LINE}, {ROW_ARRAY})")
    return (
        select(line)
        .select_from(history.EVENTS)
        .where(*history.export_conditions(query))
        .order_by(history.EVENTS.c.seq)
    )


async def copy_ndjson(
    engine: AsyncEngine,
    query: ExportFilter,
    output: Callable[[bytes], Awaitable[None]],
    *,
    application_name: str | None = None,
) -> None:
    """Stream the matching events' lines, each ending in ``\\n``, to ``output``, in ``seq`` order.

    One snapshot (:func:`worker.db.sql.history.snapshot`); ``output`` gets the bytes as they
    arrive, cut anywhere, and the server waits while it runs (asyncpg reads no further),
    so memory stays flat. An exception from ``output``, or a cancellation, ends the ``COPY``
    and discards the connection.
    """
    async with history.snapshot(engine, application_name=application_name) as connection:
        compiled = select_lines(query).compile(dialect=engine.dialect)
        params = compiled.construct_params()
        args = []
        for name in compiled.positiontup or ():
            process = compiled.binds[name].type.dialect_impl(engine.dialect).bind_processor(engine.dialect)
            args.append(process(params[name]) if process is not None else params[name])
        # The planner prices the per-row subquery high enough to JIT-compile the line expression,
        # which takes longer (about a second) than it saves on a table of millions of rows.
        await connection.execute(select(func.set_config("jit", "off", True)))
        raw = await connection.get_raw_connection()
        driver: Any = raw.driver_connection
        try:
            if hooks.ACTIVE is None:
                await driver.copy_from_query(str(compiled), *args, output=output, **COPY_OPTIONS)
            else:  # straight to asyncpg, past the SQL instrumentation: spanned here
                statement = f"COPY ({compiled}) TO STDOUT"
                with hooks.ACTIVE.database_call("postgresql", "COPY", "events", statement):
                    await driver.copy_from_query(str(compiled), *args, output=output, **COPY_OPTIONS)
        except BaseException:
            # A COPY cut short (an error in ``output``, a cancellation) leaves asyncpg waiting for
            # the server to end it, and the rollback would fail on the busy connection: the
            # connection is closed instead of going back to the pool, which ends the COPY too.
            await connection.invalidate()
            raise
