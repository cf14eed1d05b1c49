"""The ingest job's fast path: rows straight from the job's JSON, with no pydantic model per event.

The worker's deserializer hands an ingest job its events undecoded, as :class:`RawJson`
(:func:`worker.protocol.serialization.job_deserializer`). msgspec splits the list and reads each event's
attributes in C, with the types and lengths :class:`~worker.protocol.events.CloudEvent` allows; its times
are parsed by pydantic in one call for the batch, its ``data`` decoded by orjson on its own.

What keeps this exact: an event takes this path only when every check CloudEvent's validators
make is proven here. Anything else is "not sure", never "invalid": that event is decoded as the
decoding path decodes it and goes to :func:`worker.protocol.events.validate_one`, so every row and every
rejection is the same either way (``tests/unit/test_batch_validation.py`` checks it on generated inputs).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any, Final, Literal

import msgspec
import orjson
from msgspec import Meta, Raw
from pydantic_core import SchemaValidator
from pydantic_core import core_schema as cs

from worker.constants import MAX_ID_LENGTH, MAX_SOURCE_LENGTH, MAX_SUBJECT_LENGTH, MAX_TYPE_LENGTH
from worker.domain.rows import EventRow, event_row
from worker.protocol.events import (
    ATTRIBUTES,
    EXTENSION_NAME,
    FirstOfEach,
    Rejection,
    fast_time,
    validate_batch,
    validate_one,
)
from worker.protocol.serialization import JsonList, RawJson, deserialize, may_hold_a_long_integer


class _Attributes(msgspec.Struct):
    """An event's attributes as CloudEvent constrains their types and lengths; ``data`` as JSON text.

    Unknown keys (extension attributes) are skipped: :data:`_CLOSED` refuses them, so an event
    that has any is read again with :func:`_extensions`.
    """

    specversion: Literal["1.0"]
    id: Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]
    source: Annotated[str, Meta(min_length=1, max_length=MAX_SOURCE_LENGTH)]
    type: Annotated[str, Meta(min_length=1, max_length=MAX_TYPE_LENGTH)]
    time: str | None = None
    subject: Annotated[str, Meta(max_length=MAX_SUBJECT_LENGTH)] | None = None
    datacontenttype: str | None = None
    dataschema: str | None = None
    data: Raw = Raw()  # empty: no data key
    data_base64: str | None = None


class _ClosedAttributes(_Attributes, forbid_unknown_fields=True):
    """An event with no extension attributes (most are)."""


assert set(_Attributes.__struct_fields__) == ATTRIBUTES, "the wire form must declare CloudEvent's attributes"

_EVENTS = msgspec.json.Decoder(list[Raw])
_CLOSED = msgspec.json.Decoder(_ClosedAttributes)
_OPEN = msgspec.json.Decoder(_Attributes)
_KEYS = msgspec.json.Decoder(dict[str, Raw])
_EXTENSION_VALUE = msgspec.json.Decoder(str | int | float | bool)
_NUL = b"\\u0000"
#: A number's text grows at most this much when decoded and encoded again (``1e15`` ->
#: ``1000000000000000.0``); strings and integers never grow. So an event no larger than
#: ``max_event_bytes`` / this is within the limit whatever the decoded path's encoding.
_MOST_GROWTH: Final = 5
#: Times as CloudEvent reads them; a time it refuses comes back as the string, for validate_one.
_TIMES = SchemaValidator(
    cs.list_schema(
        cs.union_schema(
            [cs.datetime_schema(tz_constraint="aware", microseconds_precision="truncate"), cs.any_schema()],
            mode="left_to_right",
        )
    )
)


@dataclass(slots=True)
class Rows(FirstOfEach):
    """A batch made into ``events`` rows (first of each identity), rejections and in-batch duplicates."""

    rows: list[EventRow] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def batch_rows(payload: Any, max_event_bytes: int, received_at: datetime, job_id: str | None) -> Rows:
    """The rows, rejections and duplicates of an ingest job's argument, whichever form it came in.

    :class:`RawJson` (what the worker's deserializer hands over) takes the fast path; a decoded
    value (a direct call, a test) goes through :func:`worker.protocol.events.validate_batch`.
    """
    if isinstance(payload, RawJson):
        made = _raw_rows(payload, max_event_bytes, received_at, job_id)
        if made is not None:
            return made
        payload = JsonList(value) if type(value := deserialize(payload)) is list else value
    batch = validate_batch(payload, max_event_bytes)
    rows = [event_row(event, received_at, job_id) for event in batch.events]
    return Rows(rows=rows, rejected=batch.rejected, duplicates=batch.duplicates)


@dataclass(slots=True)
class _Fast:
    """An event proven valid here but for its time, which is read with the whole batch's."""

    text: bytes
    attributes: _Attributes
    data: Any
    extensions: dict[str, Any] | None


def _raw_rows(raw: RawJson, max_event_bytes: int, received_at: datetime, job_id: str | None) -> Rows | None:
    """Rows from the job's text; None if it is not a list msgspec can split (the caller decodes it)."""
    try:
        texts = _EVENTS.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError, RecursionError):
        return None
    may_hold_nul = raw.find(_NUL) >= 0
    exact = not may_hold_a_long_integer(raw)
    limit = max_event_bytes // _MOST_GROWTH
    outcomes: list[_Fast | bytes] = []
    for text in texts:
        event = bytes(text)
        try:
            fast = (
                None
                if len(event) > limit or (may_hold_nul and event.find(_NUL) >= 0)
                else _fast(event, exact)
            )
        except RecursionError:  # msgspec's depth limit counts the caller's frames too
            fast = None
        outcomes.append(event if fast is None else fast)
    times = iter(_TIMES.validate_python([o.attributes.time for o in outcomes if type(o) is _Fast]))
    result = Rows()
    rows = result.rows
    for position, outcome in enumerate(outcomes):
        if type(outcome) is _Fast:
            when = next(times)
            if when is None or type(when) is datetime:
                a = outcome.attributes
                if not result.first(a.source, a.id):
                    continue
                # An EventRow, which mypy holds to its one definition (worker.domain.rows); written
                # out here rather than made by a call, this being the ingest job's hottest loop.
                rows.append(
                    {
                        "source": a.source,
                        "event_id": a.id,
                        "type": a.type,
                        "specversion": a.specversion,
                        "time": when,
                        "subject": a.subject,
                        "datacontenttype": a.datacontenttype,
                        "dataschema": a.dataschema,
                        "data": outcome.data,
                        "data_base64": a.data_base64,
                        "extensions": outcome.extensions,
                        "received_at": received_at,
                        "job_id": job_id,
                    }
                )
                continue
        unsure = outcome.text if isinstance(outcome, _Fast) else outcome
        checked = validate_one(deserialize(unsure), max_event_bytes, position)
        if isinstance(checked, Rejection):
            result.rejected.append(checked)
        elif result.first(checked.source, checked.id):
            rows.append(event_row(checked, received_at, job_id))
    return result


def _fast(text: bytes, exact: bool) -> _Fast | None:
    """The event in ``text`` if every check of CloudEvent but its time's parse passes; None if not sure.

    ``text`` is one element of a list msgspec read, so it is JSON, and its strings hold no lone
    surrogates (msgspec refuses those) and no NUL (the caller looked for ``\\u0000``).
    """
    try:
        attributes: _Attributes = _CLOSED.decode(text)
        extensions = None
    except msgspec.ValidationError:
        try:
            attributes = _OPEN.decode(text)
        except msgspec.ValidationError:
            return None
        extensions = _extensions(text)
        if not extensions:
            return None
    when = attributes.time
    if when is not None and not fast_time(when):
        return None
    data = _data(attributes.data, exact)
    if data is _UNSURE or (data is not None and attributes.data_base64 is not None):
        return None
    return _Fast(text, attributes, data, extensions)


def _extensions(text: bytes) -> dict[str, Any] | None:
    """The extension attributes of an event, if each is a storable one; None if any may not be."""
    extensions = {}
    for name, value in _KEYS.decode(text).items():
        if name in ATTRIBUTES:
            continue
        if not EXTENSION_NAME.fullmatch(name):
            return None
        try:
            extensions[name] = _EXTENSION_VALUE.decode(value)
        except msgspec.ValidationError:  # null, an object, a list, a number no double holds
            return None
    return extensions


#: What :func:`_data` returns for ``data`` this path cannot vouch for.
_UNSURE: Final = object()


def _data(text: Raw, exact: bool) -> Any:
    """``data`` decoded as the decoding path decodes it (None if absent); :data:`_UNSURE` if it may differ.

    orjson reads integers past 64 bits wrongly and refuses numbers no double holds: ``exact`` says
    the job's text holds no run of digits long enough for the first, and orjson raises on the second.
    """
    data = bytes(text)
    if not data:
        return None
    if not exact and may_hold_a_long_integer(data):
        return _UNSURE
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return _UNSURE
